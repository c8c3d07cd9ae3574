"""Memory under a random-subdomain flood (water torture / tunnel pattern).

Two measurements, each on a fresh dnsgate (namespace mode ``learn`` so every
name is recorded, detection ``observe``), forwarding to the bench NSD:

* flood: N unique random subdomains of one domain (default 1,000,000, under
  ``flood.bench.example``, NXDOMAIN from NSD), sent with dnsperf in four
  equal chunks; VmRSS of the dnsgate process tree is sampled every 0.25 s and
  read after each chunk (25/50/75/100%). Caps are set small
  (``--cap``, default 20,000) for cache.max_entries, learn_max_records and
  decision_memo_size so the plateau shows well before the end. The detector
  state caps (heuristics.state.MemoryState max_keys/max_names) have no config
  key yet and run at their defaults.
* domains: 100,000 distinct registrable domains (``www.dNNNNNN.com``) with
  the default caps, RSS before and after.

Run alone: ``.venv/bin/python -m benchmarks.flood [--names 1000000]``.
"""

from __future__ import annotations

import argparse
import json
import random
import string
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks import dnsperf
from benchmarks.servers import ZONE, Dnsgate, DnsgateSpec, Nsd, allowed_names, rss_kib
from tests.support.harness import ensure_packages

FLOOD_DOMAIN = f"flood.{ZONE}"


class RssSampler(threading.Thread):
    def __init__(self, pids: list[int], interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._halt = threading.Event()
        self.t0 = time.monotonic()

    def now_kib(self) -> int:
        return sum(rss_kib(p) for p in self.pids)

    def run(self) -> None:
        while not self._halt.is_set():
            self.samples.append((time.monotonic() - self.t0, self.now_kib()))
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(2)

    @property
    def peak_kib(self) -> int:
        return max((kib for _, kib in self.samples), default=0)


def _flood_names(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    alphabet = string.ascii_lowercase + string.digits
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        label = "".join(rng.choices(alphabet, k=rng.randint(12, 24)))
        if label not in seen:
            seen.add(label)
            out.append(f"{label}.{FLOOD_DOMAIN}")
    return out


def _write_chunks(workdir: Path, names: list[str], chunks: int, qtype: str = "A") -> list[Path]:
    size = (len(names) + chunks - 1) // chunks
    paths = []
    for i in range(chunks):
        path = workdir / f"flood-{i}.txt"
        path.write_text("".join(f"{n} {qtype}\n" for n in names[i * size:(i + 1) * size]))
        paths.append(path)
    return paths


def _send(port: int, files: list[Path], sampler: RssSampler, opts: dnsperf.PerfOptions, max_qps: int | None) -> list[dict[str, float]]:
    points = []
    for i, f in enumerate(files):
        res = dnsperf.run(port, f, 0, opts, max_qps=max_qps, once=True)
        time.sleep(0.5)  # let in-flight upstream queries settle before reading RSS
        points.append({
            "share_pct": 100.0 * (i + 1) / len(files),
            "rss_mib": sampler.now_kib() / 1024,
            "sent": res.get("sent", 0.0),
            "lost_pct": res.get("lost_pct", 0.0),
            "qps": res.get("qps", 0.0),
        })
        print(f"  flood {points[-1]['share_pct']:.0f}%: RSS {points[-1]['rss_mib']:.1f} MiB, {res.get('qps', 0):.0f} q/s, lost {res.get('lost_pct', 0):.2f}%", file=sys.stderr, flush=True)
    return points


def run_flood(workdir: Path, nsd_port: int, names: list[str], n: int = 1_000_000, cap: int = 20_000, max_qps: int | None = None, source: Path | None = None) -> dict[str, object]:
    spec = DnsgateSpec(
        "flood", mode="learn", detection="observe",
        extra={"cache": {"max_entries": cap}, "learn_max_records": cap, "decision_memo_size": cap},
    )
    gate = Dnsgate(workdir / "dnsgate-flood", names, nsd_port, spec, source=source)
    gate.start()
    try:
        pids = gate.process_tree()
        sampler = RssSampler(pids)
        sampler.start()
        baseline = sampler.now_kib() / 1024
        print(f"  flood: generating {n} names", file=sys.stderr, flush=True)
        files = _write_chunks(workdir, _flood_names(n, seed=11), 4)
        opts = dnsperf.PerfOptions(clients=4, outstanding=200, timeout=2.0)
        t0 = time.monotonic()
        points = _send(gate.port, files, sampler, opts, max_qps)
        elapsed = time.monotonic() - t0
        sampler.stop()
        alive = gate.proc is not None and gate.proc.poll() is None
    finally:
        gate.stop()
    rss = [p["rss_mib"] for p in points]
    growth_2nd_half = (rss[-1] - rss[1]) / rss[1] * 100 if len(rss) >= 2 and rss[1] else 0.0
    growth_last_quarter = (rss[-1] - rss[-2]) / rss[-2] * 100 if len(rss) >= 2 and rss[-2] else 0.0
    return {
        "names": n,
        "domain": FLOOD_DOMAIN,
        "caps": {"cache.max_entries": cap, "learn_max_records": cap, "decision_memo_size": cap,
                 "detector_state": "defaults (no config key): max_keys=100000, max_names=500000"},
        "baseline_rss_mib": baseline,
        "peak_rss_mib": sampler.peak_kib / 1024,
        "points": points,
        "growth_50_to_100_pct": growth_2nd_half,
        "growth_75_to_100_pct": growth_last_quarter,
        "flat": abs(growth_last_quarter) < 5.0,  # plateau: the last 250k names added < 5% RSS
        "elapsed_s": elapsed,
        "server_alive_after": alive,
        "rss_timeline_mib": [(round(t, 2), round(k / 1024, 1)) for t, k in sampler.samples[:: max(1, len(sampler.samples) // 200)]],
    }


def run_domains(workdir: Path, nsd_port: int, names: list[str], n: int = 100_000, source: Path | None = None) -> dict[str, object]:
    """RSS with n distinct registrable domains tracked, default caps."""
    spec = DnsgateSpec("domains", mode="learn", detection="observe")
    gate = Dnsgate(workdir / "dnsgate-domains", names, nsd_port, spec, source=source)
    gate.start()
    try:
        pids = gate.process_tree()
        sampler = RssSampler(pids)
        sampler.start()
        baseline = sampler.now_kib() / 1024
        path = workdir / "domains.txt"
        path.write_text("".join(f"www.d{i:06d}.com A\n" for i in range(n)))
        res = dnsperf.run(gate.port, path, 0, dnsperf.PerfOptions(clients=4, outstanding=200), once=True)
        time.sleep(0.5)
        after = sampler.now_kib() / 1024
        sampler.stop()
    finally:
        gate.stop()
    return {
        "domains": n,
        "baseline_rss_mib": baseline,
        "rss_mib": after,
        "peak_rss_mib": sampler.peak_kib / 1024,
        "lost_pct": res.get("lost_pct", 0.0),
        "qps": res.get("qps", 0.0),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--names", type=int, default=1_000_000, help="unique flood names (default 1,000,000)")
    ap.add_argument("--domains", type=int, default=100_000, help="distinct domains for the tracked-domains RSS")
    ap.add_argument("--cap", type=int, default=20_000, help="cache/learn/memo caps for the flood run")
    ap.add_argument("--max-qps", type=int, default=None, help="limit the flood rate (dnsperf -Q)")
    ap.add_argument("--ref", help="run dnsgate from this git ref (git archive) instead of the working tree")
    ap.add_argument("--json", type=Path, help="write the result here")
    args = ap.parse_args(argv)
    ensure_packages("nsd", "dnsperf")
    from benchmarks.servers import export_source

    with tempfile.TemporaryDirectory(prefix="dnsgate-flood-") as tmp:
        work = Path(tmp)
        source = export_source(args.ref, work / "src") if args.ref else None
        names = allowed_names()
        nsd = Nsd(work / "nsd", names)
        nsd.start()
        try:
            result = {
                "flood": run_flood(work, nsd.port, names, args.names, args.cap, args.max_qps, source),
                "domains": run_domains(work, nsd.port, names, args.domains, source),
            }
        finally:
            nsd.stop()
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
