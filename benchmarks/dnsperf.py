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
from collections.abc import Sequence
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
    sources: Sequence[str] = (),
) -> dict[str, float]:
    """One dnsperf run against 127.0.0.1:port; with verbose_to, also latency percentiles.

    ``source`` sends from that local address (127.0.0.x), so two runs are two clients.
    ``sources``: one dnsperf process per address, at once, ``opts.clients`` and
    ``max_qps`` shared out; the counts are summed and the latencies pooled. dnsgate
    with ``workers: N`` serves each client address from one worker, so loading
    every worker takes clients whose addresses it steers to different workers.
    """
    groups: list[str | None] = list(sources) or [source]
    n = len(groups)
    started = time.monotonic()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    running = []
    for i, src in enumerate(groups):
        clients = max(1, opts.clients // n + (1 if i < opts.clients % n else 0))
        argv = [
            which("dnsperf") or "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(query_file),
            "-T", str(opts.threads), "-c", str(clients), "-q", str(opts.outstanding), "-t", str(opts.timeout),
        ]
        argv += ["-n", "1"] if once else ["-l", f"{duration:g}"]
        if src is not None:
            argv += ["-a", src]  # a loopback source address of its own: dnsgate sees another client
        if max_qps:
            argv += ["-Q", str(max(1, int(max_qps) // n))]
        out_path = None
        if verbose_to is not None:
            argv.append("-v")
            out_path = verbose_to if n == 1 else verbose_to.with_name(f"{verbose_to.name}.{i}")
        fh = open(out_path, "w") if out_path is not None else None  # noqa: SIM115 (closed below)
        proc = subprocess.Popen(argv, stdout=fh if fh is not None else subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        running.append((proc, out_path, fh))
    texts = []
    for proc, out_path, fh in running:
        out, err = proc.communicate()
        if fh is not None:
            fh.close()
        if proc.returncode != 0:
            raise RuntimeError(f"dnsperf failed ({proc.returncode}): {err[-500:]}")
        texts.append(out_path.read_text(errors="replace") if out_path is not None else out)
    result = _pooled([parse_summary(text) for text in texts])
    result["wall_s"] = time.monotonic() - started
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    result["dnsperf_cpu_s"] = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    if n > 1:
        result["dnsperf_processes"] = float(n)
    if max_qps:
        result["offered_qps"] = float(max_qps)
    if verbose_to is not None:
        lat = []
        for text in texts:
            for line in text.splitlines():
                if line.startswith("> "):
                    try:
                        lat.append(float(line.rsplit(" ", 1)[1]))
                    except ValueError:
                        continue
        result.update(percentiles(lat))
        result["latency_samples"] = float(len(lat))
        for _, out_path, _ in running:
            if out_path is not None:
                out_path.unlink(missing_ok=True)
    if "mean_latency_s" in result:
        result["mean_ms"] = result["mean_latency_s"] * 1000
    return result


def _pooled(parts: list[dict[str, float]]) -> dict[str, float]:
    """Several dnsperf summaries as one: counts and rates add up, the mean latency is weighted."""
    if len(parts) == 1:
        return parts[0]
    out: dict[str, float] = {}
    for key in {k for part in parts for k in part}:
        values = [part.get(key, 0.0) for part in parts]
        if key in ("run_time_s", "max_latency_s", "stddev_latency_s"):
            out[key] = max(values)
        elif key == "mean_latency_s":
            done = [part.get("completed", 0.0) for part in parts]
            out[key] = sum(v * d for v, d in zip(values, done, strict=True)) / (sum(done) or 1.0)
        elif key != "lost_pct":
            out[key] = sum(values)
    if out.get("sent"):
        out["lost_pct"] = 100.0 * out.get("lost", 0.0) / out["sent"]
    return out
