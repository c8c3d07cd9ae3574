"""The client as the adversary (issue 9): unique-name flood, fairness under a flood, TCP hogs.

Each pass runs Unbound and dnsgate with the same allowlist (the bench's 1,000
names; everything else NXDOMAIN), one after the other on a fresh process, all
on loopback. Clients use their own loopback source addresses (127.0.0.x), so
the resolvers see distinct clients.

* flood: every name new, all denied, one registrable domain
  (``<random>.exfil-flood.com``), dnsperf ``-c 4 -q 400`` for ``--flood-seconds``;
  answered q/s, ratio dnsgate / Unbound. dnsgate runs without a rate limit
  here, so the figure is the cost of the whole pipeline on a new name.
* fairness: the same flood from 127.0.0.2 while 127.0.0.3 asks allowed names at
  a fixed 2,000 q/s (``dnsperf -Q 2000 -v``); the steady client's loss, mean and
  p99 latency. dnsgate runs three times: with ``rate_limit: {qps: 2500, burst:
  5000}`` for the namespace (slip 2, the default: half the limited queries are
  dropped, so a closed-loop flooder's outstanding queries wait on its own
  timeout instead of in dnsgate's socket queue), with ``slip: 1`` (every
  limited query answered TC=1 at once: the flooding dnsperf never waits and
  keeps its full rate, the worst case), and with no rate limit.
* tcp hog, unread: one client pipelines 1,000,000 queries on one connection
  and never reads a reply; RSS of the server before, at the end, and its peak,
  and how many queries the server took before it stopped reading.
* tcp hog, idle: 320 idle connections (20 source addresses x 16) against a
  256-connection cap, then another client asks 20 queries over TCP, a new
  connection each; how many were answered and how long they took.

Run alone: ``.venv/bin/python -m benchmarks.adversary [--quick]``; ``make bench``
runs it after the steady-mix passes.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import string
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import dnsperf, profile
from benchmarks.flood import RssSampler
from benchmarks.servers import (
    Dnsgate,
    DnsgateSpec,
    Nsd,
    Proc,
    Unbound,
    allowed_names,
    cpu_seconds,
    machine_busy_seconds,
    make_query,
    rss_kib,
)
from tests.support.harness import ensure_packages

FLOOD_DOMAIN = "exfil-flood.com"
FLOOD_SOURCE = "127.0.0.2"
STEADY_SOURCE = "127.0.0.3"
STEADY_QPS = 2000
RATE_LIMIT = {"qps": 2500, "burst": 5000, "slip": 2}  # slip 2 is the default: half the limited queries dropped
RATE_LIMIT_SLIP1 = {**RATE_LIMIT, "slip": 1}  # every limited query answered TC=1: the flood never waits
TCP_CAP = 256  # dnsgate's default tcp_max_connections
HOG_ADDRESSES = 20
HOG_PER_ADDRESS = 16  # dnsgate's default tcp_max_connections_per_client


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def flood_file(path: Path, n: int, seed: int = 5) -> int:
    """n unique random names under FLOOD_DOMAIN, one dnsperf line each."""
    rng = random.Random(seed)
    alphabet = string.ascii_lowercase + string.digits
    seen: set[str] = set()
    with open(path, "w") as fh:
        while len(seen) < n:
            label = "".join(rng.choices(alphabet, k=rng.randint(16, 30)))
            if label in seen:
                continue
            seen.add(label)
            fh.write(f"{label}.{FLOOD_DOMAIN} A\n")
    return n


def steady_file(path: Path, names: list[str]) -> None:
    rng = random.Random(3)
    path.write_text("".join(f"{rng.choice(names)} A\n" for _ in range(20_000)))


def gate_spec(label: str, rate_limit: dict[str, object] | None = None) -> DnsgateSpec:
    ns_extra: dict[str, object] = {"rate_limit": rate_limit} if rate_limit else {}
    return DnsgateSpec(label, clients=("127.0.0.0/8",), namespace_extra=ns_extra)


class Adversary:
    def __init__(self, args: argparse.Namespace, work: Path, nsd: Nsd, source: Path | None = None) -> None:
        self.args = args
        self.work = work
        self.nsd = nsd
        self.names = allowed_names()
        self.source = source
        self.flood_path = work / "flood.txt"
        self.steady_path = work / "steady.txt"
        self.flood_names = flood_file(self.flood_path, args.adversary_names)
        self.flood_profile: dict[str, Any] = {}
        self.flood_profile_text = ""
        steady_file(self.steady_path, self.names)

    # -- servers ------------------------------------------------------------

    def unbound(self, label: str) -> Unbound:
        u = Unbound(self.work / label, self.names, self.nsd.port)
        u.start()
        return u

    def gate(self, label: str, rate_limit: dict[str, object] | None = None) -> Dnsgate:
        g = Dnsgate(self.work / label, self.names, self.nsd.port, gate_spec(label, rate_limit), source=self.source)
        g.start()
        return g

    def each(self, fn: Any, slip1: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {}
        runs: list[tuple[str, Any]] = [
            ("unbound", lambda: self.unbound("ub")),
            ("dnsgate", lambda: self.gate("gate-rl", RATE_LIMIT)),
            ("dnsgate-no-limit", lambda: self.gate("gate")),
        ]
        if slip1:
            runs.insert(2, ("dnsgate-slip1", lambda: self.gate("gate-slip1", RATE_LIMIT_SLIP1)))
        for label, make in runs:
            server = make()
            try:
                out[label] = fn(label, server)
            finally:
                server.stop()
        return out

    # -- passes -------------------------------------------------------------

    def flood(self) -> dict[str, Any]:
        opts = dnsperf.PerfOptions(clients=4, outstanding=400, timeout=2.0)

        def one(label: str, server: Proc) -> dict[str, Any]:
            if label == "dnsgate":
                return {"skipped": "flood throughput is measured without a rate limit (dnsgate-no-limit)"}
            cpu0, busy0 = cpu_seconds(server.pids()), machine_busy_seconds()
            res = dnsperf.run(server.port, self.flood_path, self.args.flood_seconds, opts, source=FLOOD_SOURCE)
            cpu = cpu_seconds(server.pids()) - cpu0
            foreign = max(0.0, machine_busy_seconds() - busy0 - cpu - res.get("dnsperf_cpu_s", 0.0))
            if label == "dnsgate-no-limit" and self.args.flood_profile_seconds > 0:
                self.flood_profile = self.profile(server)
            log(f"flood {label:18s} {res.get('qps', 0):9.0f} q/s  lost {res.get('lost_pct', 0):.2f}%  "
                f"server CPU {cpu / res.get('wall_s', 1):.2f}  foreign CPU {foreign:.1f} s")
            alerts = server.workdir / "alerts.jsonl"  # dnsgate's jsonl sink; Unbound writes none
            lines = alerts.read_bytes().count(b"\n") if alerts.exists() else 0
            return {
                "alert_lines": lines, "alert_bytes": alerts.stat().st_size if alerts.exists() else 0,
                "qps": res.get("qps", 0.0), "sent": res.get("sent", 0.0), "lost_pct": res.get("lost_pct", 0.0),
                "rcodes": {k[6:]: v for k, v in res.items() if k.startswith("rcode_")},
                "names_in_file": self.flood_names, "names_repeated": res.get("sent", 0.0) > self.flood_names,
                "server_cpu_s_per_s": round(cpu / res.get("wall_s", 1), 3), "foreign_cpu_s": round(foreign, 2),
                "wall_s": res.get("wall_s", 0.0),
            }

        out = self.each(one)
        ub = out["unbound"]["qps"]
        out["ratio"] = out["dnsgate-no-limit"]["qps"] / ub if ub else 0.0
        return out

    def profile(self, server: Proc) -> dict[str, Any]:
        """perf (or py-spy) on dnsgate under the same flood (a separate run: sampling slows it)."""
        raw = self.work / "flood-profile.raw"
        opts = dnsperf.PerfOptions(clients=4, outstanding=400, timeout=2.0)
        seconds = self.args.flood_profile_seconds
        load = threading.Thread(target=dnsperf.run, args=(server.port, self.flood_path, seconds + 2, opts), kwargs={"source": FLOOD_SOURCE}, daemon=True)
        load.start()
        time.sleep(1.0)
        got = profile.record(server.pids()[0], seconds, raw)
        load.join()
        if got is None:
            return {"available": False}
        summary = profile.summarise(raw)
        self.flood_profile_text = profile.format_summary(
            summary, f"{profile.tool()}, {seconds:g}s, dnsgate (no rate limit) under the unique-name flood "
            f"(every name new, all denied, one domain), {time.strftime('%Y-%m-%d %H:%M:%S')}",
        )
        return {"available": True, "samples": summary["samples"], "self": summary["self"][:15], "total": summary["total"][:15]}

    def fairness(self) -> dict[str, Any]:
        seconds = self.args.fairness_seconds
        flood_opts = dnsperf.PerfOptions(clients=4, outstanding=400, timeout=2.0)
        steady_opts = dnsperf.PerfOptions(clients=1, outstanding=200, timeout=2.0)

        def one(label: str, server: Proc) -> dict[str, Any]:
            # warm-up: the steady names in the cache, the process past its first queries
            dnsperf.run(server.port, self.steady_path, 2, steady_opts, max_qps=STEADY_QPS, source=STEADY_SOURCE)
            baseline = dnsperf.run(server.port, self.steady_path, 3, steady_opts, max_qps=STEADY_QPS,
                                   verbose_to=self.work / f"b-{label}.txt", source=STEADY_SOURCE)
            flood: dict[str, Any] = {}
            thread = threading.Thread(
                target=lambda: flood.update(dnsperf.run(server.port, self.flood_path, seconds + 2, flood_opts, source=FLOOD_SOURCE)),
                daemon=True,
            )
            busy0, cpu0 = machine_busy_seconds(), cpu_seconds(server.pids())
            thread.start()
            time.sleep(1.0)  # the flood is at full rate before the steady client starts measuring
            steady = dnsperf.run(server.port, self.steady_path, seconds, steady_opts, max_qps=STEADY_QPS,
                                 verbose_to=self.work / f"s-{label}.txt", source=STEADY_SOURCE)
            thread.join()
            cpu = cpu_seconds(server.pids()) - cpu0
            foreign = max(0.0, machine_busy_seconds() - busy0 - cpu - flood.get("dnsperf_cpu_s", 0.0) - steady.get("dnsperf_cpu_s", 0.0))
            row = {
                "steady_sent": steady.get("sent", 0.0), "steady_lost": steady.get("lost", 0.0),
                "steady_lost_pct": steady.get("lost_pct", 0.0), "steady_mean_ms": steady.get("mean_ms", 0.0),
                "steady_p50_ms": steady.get("p50_ms"), "steady_p99_ms": steady.get("p99_ms"),
                "steady_max_ms": steady.get("max_latency_s", 0.0) * 1000,
                "steady_alone_mean_ms": baseline.get("mean_ms", 0.0), "steady_alone_p99_ms": baseline.get("p99_ms"),
                "flood_qps": flood.get("qps", 0.0), "flood_lost_pct": flood.get("lost_pct", 0.0),
                "flood_rcodes": {k[6:]: v for k, v in flood.items() if k.startswith("rcode_")},
                "server_cpu_s": round(cpu, 2), "foreign_cpu_s": round(foreign, 2),
            }
            log(f"fairness {label:18s} steady lost {row['steady_lost_pct']:.3f}%  mean {row['steady_mean_ms']:.3f} ms  "
                f"p99 {row['steady_p99_ms'] or 0:.3f} ms  (alone: mean {row['steady_alone_mean_ms']:.3f} ms)  flood {row['flood_qps']:.0f} q/s")
            return row

        out = self.each(one, slip1=True)
        out["rate_limit"] = RATE_LIMIT
        out["steady_qps"] = STEADY_QPS
        return out

    def tcp_unread(self) -> dict[str, Any]:
        def one(label: str, server: Proc) -> dict[str, Any]:
            if label == "dnsgate-no-limit":
                return {"skipped": "same TCP settings as dnsgate"}
            pid = server.pids()[0]
            sampler = RssSampler(server.pids())
            sampler.start()
            before = rss_kib(pid)
            taken, stalled = hog_unread(server.port, self.args.tcp_queries)
            after = rss_kib(pid)
            sampler.stop()
            row = {
                "queries_offered": self.args.tcp_queries, "queries_taken": taken, "stopped_reading": stalled,
                "rss_before_mib": round(before / 1024, 1), "rss_after_mib": round(after / 1024, 1),
                "rss_peak_mib": round(sampler.peak_kib / 1024, 1),
                "rss_growth_mib": round((max(after, sampler.peak_kib) - before) / 1024, 1),
            }
            log(f"tcp unread {label:18s} took {taken} of {self.args.tcp_queries} queries, RSS {row['rss_before_mib']} -> "
                f"{row['rss_after_mib']} MiB (peak {row['rss_peak_mib']})")
            return row

        return self.each(one)

    def tcp_idle(self) -> dict[str, Any]:
        def one(label: str, server: Proc) -> dict[str, Any]:
            if label == "dnsgate-no-limit":
                return {"skipped": "same TCP settings as dnsgate"}
            held = []
            for a in range(HOG_ADDRESSES):
                for _ in range(HOG_PER_ADDRESS):
                    try:
                        s = socket.create_connection(("127.0.0.1", server.port), timeout=2, source_address=(f"127.0.1.{a + 1}", 0))
                        held.append(s)
                    except OSError:
                        continue
            time.sleep(0.5)  # let the server accept (and refuse) them all before the new client asks
            answered, times = 0, []
            for i in range(20):
                t0 = time.monotonic()
                if ask_tcp(server.port, self.names[i], "127.0.0.9", timeout=3.0):
                    answered += 1
                    times.append((time.monotonic() - t0) * 1000)
            still_open = sum(1 for s in held if is_open(s))
            for s in held:
                s.close()
            row = {
                "idle_connections_opened": len(held), "idle_still_open": still_open, "cap": TCP_CAP,
                "new_client_queries": 20, "new_client_answered": answered,
                "new_client_mean_ms": round(sum(times) / len(times), 2) if times else None,
                "new_client_max_ms": round(max(times), 2) if times else None,
            }
            log(f"tcp idle {label:18s} hog opened {len(held)} ({still_open} still open); new client answered {answered}/20")
            return row

        return self.each(one)


def ask_tcp(port: int, name: str, source: str, timeout: float) -> bool:
    q = make_query(name)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0)) as s:
            s.sendall(struct.pack("!H", len(q)) + q)
            head = recv_exact(s, 2)
            reply = recv_exact(s, struct.unpack("!H", head)[0])
            return reply[:2] == q[:2]
    except OSError:
        return False


def recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def is_open(s: socket.socket) -> bool:
    try:
        s.setblocking(False)
        return s.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def hog_unread(port: int, queries: int, stall_seconds: float = 5.0) -> tuple[int, bool]:
    """Pipeline `queries` on one connection, never read; returns (queries the server took, whether it stopped reading)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the client reads nothing: keep its window small
    s.bind(("127.0.0.8", 0))
    s.connect(("127.0.0.1", port))
    s.setblocking(False)
    one = make_query("host0001.bench.example", qid=1)
    per = len(one) + 2
    batch = (struct.pack("!H", len(one)) + one) * 1000
    sent_bytes = 0
    total = queries * per
    last_progress = time.monotonic()
    stalled = False
    pending = b""
    while sent_bytes < total:
        if not pending:
            pending = batch[: min(len(batch), total - sent_bytes)]
        try:
            n = s.send(pending)
            sent_bytes += n
            pending = pending[n:]
            last_progress = time.monotonic()
        except BlockingIOError:
            if time.monotonic() - last_progress > stall_seconds:
                stalled = True
                break
            time.sleep(0.005)  # pacing of the sender while its socket is full
        except OSError:
            stalled = True  # the server closed the connection
            break
    s.close()
    return sent_bytes // per, stalled


def run_all(args: argparse.Namespace, work: Path, source: Path | None = None) -> dict[str, Any]:
    nsd = Nsd(work / "nsd-adversary", allowed_names())
    nsd.start()
    try:
        adv = Adversary(args, work, nsd, source)
        out: dict[str, Any] = {"loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3]}
        out["flood"] = adv.flood()
        out["flood_profile"] = adv.flood_profile
        out["flood_profile_text"] = adv.flood_profile_text
        out["fairness"] = adv.fairness()
        out["tcp_unread"] = adv.tcp_unread()
        out["tcp_idle"] = adv.tcp_idle()
        out["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    finally:
        nsd.stop()
    return out


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--flood-seconds", type=float, default=10.0, help="unique-name flood run (default 10)")
    ap.add_argument("--adversary-names", dest="adversary_names", type=int, default=1_500_000, help="unique names in the flood file (default 1.5M)")
    ap.add_argument("--fairness-seconds", type=float, default=10.0, help="steady client's run under the flood (default 10)")
    ap.add_argument("--flood-profile-seconds", dest="flood_profile_seconds", type=float, default=8.0, help="perf (or py-spy) under the flood (0 skips)")
    ap.add_argument("--tcp-queries", type=int, default=1_000_000, help="pipelined queries of the TCP hog (default 1M)")


def table(adv: dict[str, Any]) -> list[str]:
    f, fair, tu, ti = adv["flood"], adv["fairness"], adv["tcp_unread"], adv["tcp_idle"]
    lines = [
        f"unique-name flood (all denied, one domain): unbound {f['unbound']['qps']:.0f} q/s, "
        f"dnsgate {f['dnsgate-no-limit']['qps']:.0f} q/s = {f['ratio']:.3f}x; "
        f"dnsgate wrote {f['dnsgate-no-limit'].get('alert_lines', 0)} alert lines for {f['dnsgate-no-limit']['sent']:.0f} denied names",
        f"fairness: steady client {fair['steady_qps']} q/s of allowed names while another floods "
        f"(dnsgate rate_limit {fair['rate_limit']})",
        f"  {'':18s} {'lost %':>7s} {'mean ms':>8s} {'p99 ms':>7s} {'flood q/s':>10s}",
    ]
    for label in ("unbound", "dnsgate", "dnsgate-slip1", "dnsgate-no-limit"):
        r = fair[label]
        lines.append(f"  {label:18s} {r['steady_lost_pct']:7.3f} {r['steady_mean_ms']:8.3f} {r['steady_p99_ms'] or 0:7.3f} {r['flood_qps']:10.0f}")
    for label in ("unbound", "dnsgate"):
        r = tu[label]
        lines.append(f"tcp unread {label}: took {r['queries_taken']} of {r['queries_offered']} pipelined queries; "
                     f"RSS {r['rss_before_mib']} -> {r['rss_after_mib']} MiB (peak {r['rss_peak_mib']})")
    for label in ("unbound", "dnsgate"):
        r = ti[label]
        lines.append(f"tcp idle {label}: {r['idle_connections_opened']} idle connections held; "
                     f"new client answered {r['new_client_answered']}/{r['new_client_queries']} over TCP")
    return lines


def targets(adv: dict[str, Any]) -> dict[str, Any]:
    fair = adv["fairness"]["dnsgate"]
    tu = adv["tcp_unread"]["dnsgate"]
    ti = adv["tcp_idle"]["dnsgate"]
    ratio = adv["flood"]["ratio"]
    return {
        "flood >= 0.5x unbound": {"value": round(ratio, 3), "met": ratio >= 0.5},
        "steady client under flood loses <= 0.1%": {"value": round(fair["steady_lost_pct"], 4), "met": fair["steady_lost_pct"] <= 0.1},
        "steady client under flood waits <= 5 ms mean": {"value": round(fair["steady_mean_ms"], 3), "met": fair["steady_mean_ms"] <= 5.0},
        "RSS grows <= 64 MB for 1M unread TCP queries": {"value": f"{tu['rss_growth_mib']} MiB ({tu['queries_taken']} taken)", "met": tu["rss_growth_mib"] * 1.048576 <= 64},
        "new TCP client answered while another holds every slot": {"value": f"{ti['new_client_answered']}/20", "met": ti["new_client_answered"] == 20},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.adversary", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(ap)
    ap.add_argument("--quick", action="store_true", help="short runs, 200k-name flood file, 100k TCP queries")
    ap.add_argument("--json", type=Path, help="write the result here")
    args = ap.parse_args(argv)
    if args.quick:
        args.flood_seconds, args.fairness_seconds = 3.0, 3.0
        args.adversary_names, args.tcp_queries = min(args.adversary_names, 300_000), min(args.tcp_queries, 100_000)
        args.flood_profile_seconds = min(args.flood_profile_seconds, 3.0)
    ensure_packages("nsd", "unbound", "dnsperf")
    with tempfile.TemporaryDirectory(prefix="dnsgate-adversary-") as tmp:
        result = run_all(args, Path(tmp))
    result["targets"] = targets(result)
    print("\n".join(table(result)))
    for name, t in result["targets"].items():
        print(f"  [{'met' if t['met'] else 'MISSED'}] {name}: {t['value']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    if result.get("flood_profile_text"):
        print(result["flood_profile_text"][:3000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
