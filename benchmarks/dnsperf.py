"""Query files and dnsperf runs, parsed into plain dicts.

Latency percentiles: dnsperf 2.10 has no histogram option, so p50/p99 come
from a run with ``-v``, which prints one ``> RCODE name type latency`` line per
answered query; the harness writes that to a file and sorts the latencies.
``-v`` costs dnsperf about 10% of its sending rate, so peak QPS is always
taken from a run *without* ``-v`` and the percentiles from a separate ``-v`` run.
"""

from __future__ import annotations

import random
import re
import resource
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.harness import which


def write_query_file(path: Path, allowed: list[str], denied: list[str], lines: int = 100_000, denied_share: float = 0.10, seed: int = 1) -> dict[str, int]:
    """90% A queries for allowed names, 10% for denied ones, shuffled; the same file for every server."""
    rng = random.Random(seed)
    n_denied = round(lines * denied_share)
    rows = [f"{rng.choice(allowed)} A" for _ in range(lines - n_denied)]
    rows += [f"{denied[i % len(denied)]} A" for i in range(n_denied)]
    rng.shuffle(rows)
    path.write_text("\n".join(rows) + "\n")
    return {"lines": lines, "allowed": lines - n_denied, "denied": n_denied, "distinct_denied": min(n_denied, len(denied))}


@dataclass
class PerfOptions:
    clients: int = 4
    outstanding: int = 100
    threads: int = 1
    timeout: float = 2.0


_FIELDS = {
    "sent": re.compile(r"Queries sent:\s+(\d+)"),
    "completed": re.compile(r"Queries completed:\s+(\d+)"),
    "lost": re.compile(r"Queries lost:\s+(\d+)"),
    "run_time_s": re.compile(r"Run time \(s\):\s+([\d.]+)"),
    "qps": re.compile(r"Queries per second:\s+([\d.]+)"),
    "mean_latency_s": re.compile(r"Average Latency \(s\):\s+([\d.]+)"),
    "max_latency_s": re.compile(r"Average Latency \(s\):.*max ([\d.]+)\)"),
    "stddev_latency_s": re.compile(r"Latency StdDev \(s\):\s+([\d.]+)"),
}


def parse_summary(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, rx in _FIELDS.items():
        m = rx.search(text)
        if m:
            out[key] = float(m.group(1))
    codes = re.search(r"Response codes:\s+(.*)", text)
    if codes:
        for name, count in re.findall(r"([A-Z]+) (\d+) \(", codes.group(1)):
            out[f"rcode_{name}"] = float(count)
    if out.get("sent"):
        out["lost_pct"] = 100.0 * out.get("lost", 0.0) / out["sent"]
    return out


def percentiles(latencies: list[float], points: tuple[float, ...] = (50, 90, 99, 99.9)) -> dict[str, float]:
    if not latencies:
        return {}
    latencies.sort()
    n = len(latencies)
    out = {}
    for p in points:
        idx = min(n - 1, max(0, round(p / 100 * n + 0.5) - 1))
        out[f"p{p:g}_ms"] = latencies[idx] * 1000
    return out


def run(
    port: int,
    query_file: Path,
    duration: float,
    opts: PerfOptions,
    *,
    max_qps: int | None = None,
    verbose_to: Path | None = None,
    once: bool = False,
    source: str | None = None,
) -> dict[str, float]:
    """One dnsperf run against 127.0.0.1:port; with verbose_to, also latency percentiles.

    ``source`` sends from that local address (127.0.0.x), so two runs are two clients.
    """
    argv = [
        which("dnsperf") or "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(query_file),
        "-T", str(opts.threads), "-c", str(opts.clients), "-q", str(opts.outstanding), "-t", str(opts.timeout),
    ]
    argv += ["-n", "1"] if once else ["-l", f"{duration:g}"]
    if source is not None:
        argv += ["-a", source]  # a loopback source address of its own: dnsgate sees another client
    if max_qps:
        argv += ["-Q", str(int(max_qps))]
    if verbose_to is not None:
        argv.append("-v")
    started = time.monotonic()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if verbose_to is not None:
        with open(verbose_to, "w") as fh:
            proc = subprocess.run(argv, stdout=fh, stderr=subprocess.PIPE, text=True)
        text = verbose_to.read_text(errors="replace")
    else:
        proc = subprocess.run(argv, capture_output=True, text=True)
        text = proc.stdout
    if proc.returncode != 0:
        raise RuntimeError(f"dnsperf failed ({proc.returncode}): {proc.stderr[-500:]}")
    result: dict[str, float] = parse_summary(text)
    result["wall_s"] = time.monotonic() - started
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    result["dnsperf_cpu_s"] = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    if max_qps:
        result["offered_qps"] = float(max_qps)
    if verbose_to is not None:
        lat = []
        for line in text.splitlines():
            if line.startswith("> "):
                try:
                    lat.append(float(line.rsplit(" ", 1)[1]))
                except ValueError:
                    continue
        result.update(percentiles(lat))
        result["latency_samples"] = float(len(lat))
        verbose_to.unlink(missing_ok=True)
    if "mean_latency_s" in result:
        result["mean_ms"] = result["mean_latency_s"] * 1000
    return result
