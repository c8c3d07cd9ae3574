"""dnsgate vs Unbound on the same allowlist, side by side on loopback (issue 6).

    .venv/bin/python -m benchmarks.run            # full run (~8-10 min)
    .venv/bin/python -m benchmarks.run --quick    # smoke run (~1-2 min)

Starts NSD (1,000-name zone), Unbound (1 thread, RPZ allowlist, forwarding to
NSD), redis-server, and dnsgate (memory backend, Redis backend, workers: 2),
drives each with one dnsperf query file (90% allowed, 10% denied), rounds
interleaved, then a fixed-load pass at half of dnsgate's peak, a perf (or py-spy)
profile of dnsgate under load, and the memory flood (benchmarks/flood.py).
Prints a table and writes benchmarks/results/<timestamp>.json and latest.json.
See docs/benchmarks.md for what every figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import adversary, dnsperf, flood, profile
from benchmarks.servers import (
    ROOT,
    Dnsgate,
    DnsgateSpec,
    Nsd,
    Redis,
    Unbound,
    allowed_names,
    ask,
    cpu_seconds,
    denied_names,
    export_source,
    machine_busy_seconds,
)
from resolver.operations import steering
from tests.support.harness import ensure_packages, which

RESULTS = ROOT / "benchmarks" / "results"

TARGETS = {
    "memory_qps_ratio": 0.5,
    "redis_qps_ratio": 0.4,
    "loss_pct_max": 0.1,
    "p99_ms_at_half_load": 2.0,
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=15.0, help="seconds per measured peak run (default 15)")
    ap.add_argument("--latency-duration", type=float, default=5.0, help="seconds of the -v run that gives p99 at peak (default 5)")
    ap.add_argument("--fixed-duration", type=float, default=15.0, help="seconds of each fixed-load run (default 15)")
    ap.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds per server before measuring (default 3)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds over all servers (default 2)")
    ap.add_argument("--clients", type=int, default=4, help="dnsperf -c (default 4)")
    ap.add_argument("--outstanding", type=int, default=100, help="dnsperf -q (default 100)")
    ap.add_argument("--profile-seconds", type=float, default=10.0, help="profile sampling time, perf or py-spy (default 10; 0 skips)")
    ap.add_argument("--flood-names", type=int, default=1_000_000, help="unique names in the memory flood (0 skips)")
    ap.add_argument("--flood-domains", type=int, default=100_000, help="distinct domains for the tracked-domains RSS")
    ap.add_argument("--flood-cap", type=int, default=20_000, help="cache/learn/memo caps in the flood run")
    ap.add_argument("--workers", type=int, default=2, help="workers for the scaling run (default 2; 1 skips)")
    ap.add_argument("--no-redis", action="store_true", help="skip the Redis-backend dnsgate")
    ap.add_argument("--ref", help="run dnsgate from this git ref (git archive), e.g. HEAD, not the working tree")
    adversary.add_args(ap)
    ap.add_argument("--no-adversary", action="store_true", help="skip the flood/fairness/TCP-hog passes (benchmarks/adversary.py)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 s runs, 1 round, 100k-name flood")
    ap.add_argument("--keep", action="store_true", help="keep the temp work dir (configs, logs, raw profile)")
    ap.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/")
    args = ap.parse_args(argv)
    if args.quick:
        args.duration, args.latency_duration, args.fixed_duration = 3.0, 2.0, 3.0
        args.warmup, args.rounds, args.profile_seconds = 1.0, 1, 3.0
        args.flood_names, args.flood_domains = min(args.flood_names, 100_000), min(args.flood_domains, 20_000)
        args.flood_cap = min(args.flood_cap, 5_000)
        args.flood_seconds, args.fairness_seconds = 3.0, 3.0
        args.adversary_names, args.tcp_queries = min(args.adversary_names, 300_000), min(args.tcp_queries, 100_000)
        args.flood_profile_seconds = min(args.flood_profile_seconds, 3.0)
    return args


def versions() -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            text = (res.stdout + res.stderr).strip().splitlines()
            return next((t for t in text if "ersion" in t), text[0] if text else "")
        except (OSError, subprocess.TimeoutExpired):
            return ""

    return {
        "unbound": first_line(["unbound", "-V"]),
        "nsd": first_line([which("nsd") or "nsd", "-v"]),
        "dnsperf": first_line(["dnsperf", "-h"]),
        "redis": first_line(["redis-server", "--version"]),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpus": str(os.cpu_count()),
    }


def git_info(ref: str | None) -> dict[str, object]:
    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True).stdout.strip()

    dirty = bool(git("status", "--porcelain", "--", "resolver", "heuristics")) if ref is None else False
    return {"ref": ref or "working tree", "commit": git("rev-parse", ref or "HEAD"), "resolver_dirty": dirty}


def verify_policy(port: int, allowed: list[str], denied: list[str], label: str) -> dict[str, object]:
    """Both resolvers must answer the allowed names and NXDOMAIN the denied ones."""
    bad = []
    for name in allowed[:20] + allowed[-5:]:
        r = ask(port, name, timeout=2.0)
        if r is None or r[0] != 0 or r[1] < 1:
            bad.append((name, r))
    for name in [*denied[:20], "sub." + allowed[0], "zz-not-listed." + allowed[0].split(".", 1)[1]]:
        r = ask(port, name, timeout=2.0)
        if r is None or r[0] != 3:
            bad.append((name, r))
    if bad:
        log(f"  {label}: policy check FAILED: {bad[:5]}")
    return {"ok": not bad, "mismatches": [f"{n}: {r}" for n, r in bad[:10]]}


def worker_sources(server: Any) -> list[str]:
    """For dnsgate with ``workers: N``: one loopback address steered to each worker (none otherwise).

    Each client address is served by one worker (resolver/operations/steering.py),
    so a single dnsperf process would load only one of them.
    """
    spec = getattr(server, "spec", None)
    workers = getattr(spec, "workers", 1)
    if workers <= 1:
        return []
    chosen: dict[int, str] = {}
    for last in range(2, 255):
        address = f"127.0.0.{last}"
        chosen.setdefault(steering.worker_of(address, workers), address)
        if len(chosen) == workers:
            break
    return [chosen[i] for i in sorted(chosen)]


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.opts = dnsperf.PerfOptions(clients=args.clients, outstanding=args.outstanding)
        self.names = allowed_names()
        self.denied = denied_names(10_000)
        self.qfile = work / "queries.txt"
        self.qinfo = dnsperf.write_query_file(self.qfile, self.names, self.denied)
        self.procs: list[Any] = []
        self.servers: dict[str, Any] = {}
        self.notes: list[str] = []
        self.source = export_source(args.ref, work / "src") if args.ref else None

    def start(self, proc: Any) -> Any:
        self.procs.append(proc)
        proc.start()
        return proc

    def stop_all(self) -> None:
        self.freeze_others(None, stop=False)
        for proc in reversed(self.procs):
            try:
                proc.stop()
            except Exception as exc:  # noqa: BLE001 - best effort teardown
                log(f"stopping {proc.name}: {exc}")

    def cpu(self) -> dict[str, float]:
        return {p.name: cpu_seconds(p.pids()) for p in self.procs if p.proc is not None}

    def freeze_others(self, label: str | None, stop: bool) -> None:
        """SIGSTOP (or SIGCONT) every server except the one measured, NSD, and its Redis.

        dnsgate with the Redis backend keeps flushing a backlog for a long time
        after its load ends; frozen, it cannot steal CPU from the next run.
        """
        keep = {"nsd"}
        if label is not None:
            keep |= {self.servers[label].name} | ({"redis"} if "redis" in label else set())
        for p in self.procs:
            if p.name in keep or p.proc is None:
                continue
            for pid in p.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP if stop else signal.SIGCONT)

    def settle(self, limit: float = 5.0) -> float:
        """Wait until the running servers are idle (< 4% of a core over 0.5 s), at most `limit` s."""
        t0 = time.monotonic()
        busy: dict[str, float] = {}
        while time.monotonic() - t0 < limit:
            before = self.cpu()
            time.sleep(0.5)
            after = self.cpu()
            busy = {k: after[k] - before.get(k, 0.0) for k in after}
            if sum(busy.values()) < 0.02:
                return time.monotonic() - t0
        waited = time.monotonic() - t0
        still = {k: round(v * 2, 2) for k, v in busy.items() if v > 0.01}
        log(f"  still busy after {waited:.1f}s (cores): {still}")
        self.notes.append(f"not idle after {waited:.0f}s before a run (cores in use): {still}")
        return waited

    def measure(self, label: str, duration: float, **kw: Any) -> dict[str, float]:
        """One dnsperf run with the other servers frozen; records the CPU every server used."""
        server = self.servers[label]
        self.freeze_others(label, stop=True)
        try:
            settle = self.settle()
            before, busy0 = self.cpu(), machine_busy_seconds()
            res = dnsperf.run(server.port, self.qfile, duration, self.opts, sources=worker_sources(server), **kw)
            after, busy1 = self.cpu(), machine_busy_seconds()
        finally:
            self.freeze_others(label, stop=False)
        cpu = {k: round(after[k] - before.get(k, 0.0), 3) for k in after}
        res["settle_s"] = round(settle, 2)
        res["cpu_s"] = cpu  # type: ignore[assignment]
        own = {server.name, "nsd"} | ({"redis"} if "redis" in label else set())
        background = sum(v for k, v in cpu.items() if k not in own)
        res["background_cpu_s"] = round(background, 3)
        # CPU used on the machine by anything that is not ours (other users' tests, builds)
        foreign = (busy1 - busy0) - sum(cpu.values()) - res.get("dnsperf_cpu_s", 0.0)
        res["foreign_cpu_s"] = round(max(0.0, foreign), 3)
        if foreign > 0.1 * res.get("wall_s", duration):
            log(f"  warning: other programs on this machine used {foreign:.1f} CPU-s during the {label} run ({res.get('wall_s', duration):.0f} s): figures understate both servers")
            self.notes.append(f"{label}: foreign CPU {foreign:.1f} s during a {res.get('wall_s', duration):.0f} s run")
        if background > 0.05 * res.get("wall_s", duration):
            log(f"  warning: other servers used {background:.2f} CPU-s during the {label} run: {cpu}")
        return res

    def setup(self) -> dict[str, object]:
        a = self.args
        log("starting nsd")
        self.nsd = self.start(Nsd(self.work / "nsd", self.names))
        log("starting unbound")
        self.servers["unbound"] = self.start(Unbound(self.work / "unbound", self.names, self.nsd.port))
        log("starting dnsgate (memory)")
        self.servers["dnsgate"] = self.start(Dnsgate(self.work / "dnsgate", self.names, self.nsd.port, DnsgateSpec("memory"), source=self.source))
        if not a.no_redis:
            log("starting redis-server and dnsgate (redis)")
            redis = self.start(Redis(self.work / "redis"))
            self.servers["dnsgate-redis"] = self.start(
                Dnsgate(self.work / "dnsgate-redis", self.names, self.nsd.port, DnsgateSpec("redis", backend="redis"), redis.url, source=self.source)
            )
        workers: dict[str, object] = {"requested": a.workers}
        if a.workers > 1:
            log(f"starting dnsgate (workers: {a.workers})")
            gate = self.start(Dnsgate(self.work / "dnsgate-workers", self.names, self.nsd.port, DnsgateSpec(f"workers{a.workers}", workers=a.workers, clients=("127.0.0.0/8",)), source=self.source))
            time.sleep(1.0)  # give a launcher time to fork its workers before counting them
            procs = len(gate.process_tree())
            workers["processes"] = procs
            if procs >= a.workers:
                workers["available"] = True
                self.servers[f"dnsgate-w{a.workers}"] = gate
            else:
                workers["available"] = False
                workers["note"] = f"`dnsgate serve` with workers: {a.workers} runs {procs} process(es): the multi-process launcher is not there yet"
                log(f"  {workers['note']}")
                gate.stop()
        checks = {label: verify_policy(s.port, self.names, self.denied, label) for label, s in self.servers.items()}
        return {"workers": workers, "policy_checks": checks}

    def peak(self) -> dict[str, dict[str, Any]]:
        a = self.args
        runs: dict[str, list[dict[str, float]]] = {label: [] for label in self.servers}
        lat: dict[str, list[dict[str, float]]] = {label: [] for label in self.servers}
        for label in self.servers:
            log(f"warm-up {label} {a.warmup:g}s")
            self.measure(label, a.warmup)
        for rnd in range(a.rounds):
            for label in self.servers:
                res = self.measure(label, a.duration)
                runs[label].append(res)
                log(f"round {rnd + 1} {label:16s} {res.get('qps', 0):9.0f} q/s  lost {res.get('lost_pct', 0):.3f}%  mean {res.get('mean_ms', 0):.3f} ms")
                if a.latency_duration > 0:
                    lres = self.measure(label, a.latency_duration, verbose_to=self.work / f"v-{label}.txt")
                    lat[label].append(lres)
        out: dict[str, dict[str, Any]] = {}
        for label in self.servers:
            rs, ls = runs[label], lat[label]
            sent = sum(r.get("sent", 0) for r in rs)
            out[label] = {
                "qps": sum(r.get("qps", 0) for r in rs) / len(rs),
                "qps_rounds": [round(r.get("qps", 0)) for r in rs],
                "lost_pct": 100.0 * sum(r.get("lost", 0) for r in rs) / sent if sent else 0.0,
                "mean_ms": sum(r.get("mean_ms", 0) for r in rs) / len(rs),
                "p99_ms": max((r.get("p99_ms", 0) for r in ls), default=None),
                "p50_ms": max((r.get("p50_ms", 0) for r in ls), default=None),
                "p99_from": "dnsperf -v run at peak (separate from the QPS run)",
                "server_cpu_s_per_s": round(sum(r["cpu_s"].get(self.servers[label].name, 0) for r in rs) / sum(r.get("wall_s", 1) for r in rs), 3),  # type: ignore[union-attr]
                "background_cpu_s": round(sum(r.get("background_cpu_s", 0) for r in rs + ls), 3),
                "foreign_cpu_s_per_s": round(sum(r.get("foreign_cpu_s", 0) for r in rs) / sum(r.get("wall_s", 1) for r in rs), 3),
                "rcodes": {k[6:]: int(sum(r.get(k, 0) for r in rs)) for k in rs[0] if k.startswith("rcode_")},
                "runs": rs,
                "latency_runs": ls,
            }
        return out

    def fixed_load(self, offered: int) -> dict[str, Any]:
        out: dict[str, Any] = {"offered_qps": offered}
        for label in self.servers:
            res = self.measure(label, self.args.fixed_duration, max_qps=offered, verbose_to=self.work / f"f-{label}.txt")
            out[label] = {
                "qps": res.get("qps", 0), "lost_pct": res.get("lost_pct", 0), "mean_ms": res.get("mean_ms", 0),
                "p50_ms": res.get("p50_ms"), "p99_ms": res.get("p99_ms"), "p99.9_ms": res.get("p99.9_ms"),
                "max_ms": res.get("max_latency_s", 0) * 1000,
                "cpu_s": res.get("cpu_s"), "background_cpu_s": res.get("background_cpu_s"),
            }
            log(f"fixed {offered} q/s {label:16s} p50 {res.get('p50_ms', 0):.3f} ms  p99 {res.get('p99_ms', 0):.3f} ms  lost {res.get('lost_pct', 0):.3f}%")
        return out

    def profile(self, label: str = "dnsgate") -> dict[str, Any]:
        a = self.args
        server = self.servers[label]
        raw = self.work / "profile.raw"
        load = threading.Thread(target=dnsperf.run, args=(server.port, self.qfile, a.profile_seconds + 3, self.opts), daemon=True)
        self.freeze_others(label, stop=True)
        self.settle()
        load.start()
        time.sleep(1.0)
        log(f"{profile.tool()} on {label} (pid {server.pid}) for {a.profile_seconds:g}s under dnsperf load")
        got = profile.record(server.pid, a.profile_seconds, raw)
        load.join()
        self.freeze_others(label, stop=False)
        if got is None:
            return {"available": False}
        summary = profile.summarise(raw)
        text = profile.format_summary(
            summary,
            f"{profile.tool()}, {a.profile_seconds:g}s, dnsgate memory backend under dnsperf peak load "
            f"(90% allowed / 10% denied), {time.strftime('%Y-%m-%d %H:%M:%S')}, {git_info(a.ref)['commit']}",
        )
        if not a.no_save:
            (RESULTS / "profile-top.txt").write_text(text)
        return {"available": True, "samples": summary["samples"], "self": summary["self"][:15], "total": summary["total"][:15], "raw": str(raw)}


def targets(peak: dict[str, Any], fixed: dict[str, Any], memory: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    ub = peak["unbound"]["qps"]
    for label, key in (("dnsgate", "memory_qps_ratio"), ("dnsgate-redis", "redis_qps_ratio")):
        if label in peak:
            ratio = peak[label]["qps"] / ub if ub else 0.0
            out[f"{label} qps >= {TARGETS[key]}x unbound"] = {"value": round(ratio, 3), "met": ratio >= TARGETS[key]}
            loss = peak[label]["lost_pct"]
            out[f"{label} loss < {TARGETS['loss_pct_max']}%"] = {"value": round(loss, 4), "met": loss < TARGETS["loss_pct_max"]}
    for label in ("dnsgate", "dnsgate-redis"):
        if label in fixed and fixed[label].get("p99_ms") is not None:
            p99 = fixed[label]["p99_ms"]
            out[f"{label} p99 <= 2 ms at half peak"] = {"value": round(p99, 3), "met": p99 <= TARGETS["p99_ms_at_half_load"]}
    if memory and "flood" in memory:
        f = memory["flood"]
        out["RSS flat under flood"] = {"value": f"{f['growth_75_to_100_pct']:+.1f}% growth 75->100%, peak {f['peak_rss_mib']:.0f} MiB", "met": f["flat"]}
    return out


def fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(result: dict[str, Any]) -> str:
    peak, fixed = result["peak"], result["fixed_load"]
    ub = peak["unbound"]["qps"]
    lines = [
        f"dnsgate vs unbound, {result['params']['duration']:g}s x {result['params']['rounds']} rounds per server, "
        f"dnsperf -c {result['params']['clients']} -q {result['params']['outstanding']}, {result['versions']['cpus']} CPUs, {result['git']['ref']} {result['git']['commit'][:10]}",
        "",
        f"{'peak (closed loop)':22s} {'QPS':>9s} {'ratio':>6s} {'lost %':>7s} {'mean ms':>8s} {'p50 ms':>7s} {'p99 ms':>7s}",
    ]
    for label, r in peak.items():
        lines.append(
            f"{label:22s} {r['qps']:9.0f} {r['qps'] / ub if ub else 0:6.3f} {r['lost_pct']:7.3f} {r['mean_ms']:8.3f} "
            f"{fmt(r['p50_ms'], '7.3f')} {fmt(r['p99_ms'], '7.3f')}"
        )
    lines += ["", f"{'fixed ' + str(fixed['offered_qps']) + ' q/s (-Q)':22s} {'QPS':>9s} {'':>6s} {'lost %':>7s} {'mean ms':>8s} {'p50 ms':>7s} {'p99 ms':>7s}"]
    for label, r in fixed.items():
        if label == "offered_qps":
            continue
        lines.append(
            f"{label:22s} {r['qps']:9.0f} {'':6s} {r['lost_pct']:7.3f} {r['mean_ms']:8.3f} {fmt(r['p50_ms'], '7.3f')} {fmt(r['p99_ms'], '7.3f')}"
        )
    w = result["setup"]["workers"]
    if not w.get("available", True):
        lines += ["", f"workers: {w.get('note')}"]
    mem = result.get("memory")
    if mem and "flood" in mem:
        f = mem["flood"]
        pts = ", ".join(f"{p['share_pct']:.0f}%: {p['rss_mib']:.1f}" for p in f["points"])
        lines += [
            "",
            f"memory flood: {f['names']} unique names under {f['domain']} (caps {result['params']['flood_cap']}): "
            f"baseline {f['baseline_rss_mib']:.1f} MiB, RSS MiB at {pts}; peak {f['peak_rss_mib']:.1f} MiB; "
            f"{'flat' if f['flat'] else 'NOT flat'} ({f['growth_75_to_100_pct']:+.1f}% from 75% to 100%, {f['growth_50_to_100_pct']:+.1f}% from 50%)",
        ]
        d = mem["domains"]
        lines.append(f"tracked domains: {d['domains']} distinct: RSS {d['baseline_rss_mib']:.1f} -> {d['rss_mib']:.1f} MiB (default caps)")
    if result.get("adversary"):
        lines += ["", *adversary.table(result["adversary"])]
    if result.get("targets"):
        lines += ["", "targets:"]
        for name, t in result["targets"].items():
            lines.append(f"  [{'met' if t['met'] else 'MISSED'}] {name}: {t['value']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_packages("nsd", "unbound", "dnsperf", "redis-server", "dig")
    RESULTS.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dnsgate-bench-"))
    started = time.time()
    bench = Bench(args, work)
    result: dict[str, Any] = {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([".venv/bin/python -m benchmarks.run", *(argv if argv is not None else sys.argv[1:])]),
        "versions": versions(),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "git": git_info(args.ref),
        "params": {k: v for k, v in vars(args).items()},
        "query_file": {**bench.qinfo, "allowed_names": len(bench.names), "qtype": "A"},
    }
    try:
        result["setup"] = bench.setup()
        result["notes"] = bench.notes
        result["peak"] = bench.peak()
        gate_peak = result["peak"]["dnsgate"]["qps"]
        offered = max(100, int(gate_peak / 2))
        log(f"fixed-load pass at {offered} q/s (half of dnsgate's peak)")
        result["fixed_load"] = bench.fixed_load(offered)
        if args.profile_seconds > 0:
            result["profile"] = bench.profile()
        ub = result["peak"]["unbound"]["qps"]
        result["ratios"] = {label: r["qps"] / ub for label, r in result["peak"].items() if ub}
    finally:
        bench.stop_all()
    if args.flood_names > 0:
        log(f"memory flood: {args.flood_names} names")
        nsd = Nsd(work / "nsd-flood", bench.names)
        nsd.start()
        try:
            result["memory"] = {
                "flood": flood.run_flood(work, nsd.port, bench.names, args.flood_names, args.flood_cap, source=bench.source),
                "domains": flood.run_domains(work, nsd.port, bench.names, args.flood_domains, source=bench.source),
            }
        finally:
            nsd.stop()
    if not args.no_adversary:
        log("adversary passes: unique-name flood, fairness, TCP hogs")
        adv = adversary.run_all(args, work, source=bench.source)
        profile_text = adv.pop("flood_profile_text", "")
        if profile_text and not args.no_save:
            (RESULTS / "profile-flood.txt").write_text(profile_text)
        result["adversary"] = adv
    result["targets"] = targets(result["peak"], result["fixed_load"], result.get("memory"))
    if "adversary" in result:
        result["targets"].update(adversary.targets(result["adversary"]))
    result["elapsed_s"] = round(time.time() - started, 1)
    text = table(result)
    print(text)
    if not args.no_save:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        name = f"{stamp}{'-quick' if args.quick else ''}.json"
        payload = json.dumps(result, indent=2, default=str)
        (RESULTS / name).write_text(payload)
        (RESULTS / ("latest-quick.json" if args.quick else "latest.json")).write_text(payload)
        (RESULTS / ("latest-quick.txt" if args.quick else "latest.txt")).write_text(text + "\n")
        log(f"wrote benchmarks/results/{name}")
    if args.keep:
        log(f"work dir kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
