"""Per-query cost of dnsgate's metrics, and the cost of one scrape.

Run: .venv/bin/python benchmarks/metrics_cost.py [--queries N]

1. ``QueryCounters.count`` alone (what the query path pays), next to the same
   two counts done with prometheus-client labelled Counters.
2. In situ: ``Server.query`` for a denied name (answered synchronously, no
   network) with counting as shipped, then with counting replaced by a no-op;
   the difference is what metrics add to a real query.
3. One ``/metrics`` exposition (``generate_latest``) with the counters filled.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import dns.message
from prometheus_client import CollectorRegistry, Counter, generate_latest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resolver import config as config_mod
from resolver.operations.listeners import Server
from resolver.operations.metrics import AlertCounts, Collector, QueryCounters

CONFIG = """
listen: [{address: 127.0.0.1, port: 0}]
upstreams: [{address: 127.0.0.1, port: 9}]
unknown_clients: refuse
detection: {mode: observe}
namespaces:
  agents: {clients: [127.0.0.0/8], mode: enforce, allow: [allowed.test]}
  ci: {clients: [10.0.0.0/8], mode: enforce, allow: [allowed.test]}
"""

ROUNDS = 7


def one_round(fn: Callable[[int], None], n: int) -> float:
    start = time.perf_counter_ns()
    for i in range(n):
        fn(i)
    return (time.perf_counter_ns() - start) / n


def per_call_ns(fn: Callable[[int], None], n: int) -> float:
    """Fastest round's time per call of ``fn(i)``, in nanoseconds (least disturbed by noise)."""
    return min(one_round(fn, n) for _ in range(ROUNDS))


def interleaved_ns(a: Callable[[int], None], b: Callable[[int], None], n: int) -> tuple[float, float]:
    """Like ``per_call_ns`` for two variants, rounds alternating so drift hits both alike."""
    ta, tb = [], []
    for _ in range(ROUNDS):
        ta.append(one_round(a, n))
        tb.append(one_round(b, n))
    return min(ta), min(tb)


def counters_alone(n: int) -> tuple[float, float, float]:
    counters = QueryCounters()
    keys = [("agents", "allowed", 1, 0), ("agents", "denied", 28, 3), ("ci", "cached", 16, 0)]

    def dict_count(i: int) -> None:
        counters.count(*keys[i % 3])

    registry = CollectorRegistry()
    queries = Counter("q", "q", ["namespace", "action", "qtype"], registry=registry)
    rcodes = Counter("r", "r", ["rcode"], registry=registry)
    labels = [("agents", "allowed", "A", "NOERROR"), ("agents", "denied", "AAAA", "NXDOMAIN"),
              ("ci", "cached", "TXT", "NOERROR")]

    def prom_count(i: int) -> None:
        ns, action, qtype, rcode = labels[i % 3]
        queries.labels(ns, action, qtype).inc()
        rcodes.labels(rcode).inc()

    def nothing(i: int) -> None:
        keys[i % 3]

    base = per_call_ns(nothing, n)
    return per_call_ns(dict_count, n) - base, per_call_ns(prom_count, n) - base, base


async def in_situ(n: int) -> tuple[float, float, Server]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dnsgate.yaml"
        path.write_text(CONFIG)
        server = Server(config_mod.load(path))
    wires = [dns.message.make_query(f"n{i}.denied.test", "A").to_wire() for i in range(1000)]

    counters = server.counters
    real_count = counters.count

    def no_count(*_args: object) -> None:
        return None

    def counted(i: int) -> None:
        counters.count = real_count  # type: ignore[method-assign]
        server.query(wires[i % 1000], "127.0.0.1", "udp", None)

    def uncounted(i: int) -> None:
        counters.count = no_count  # type: ignore[method-assign]
        server.query(wires[i % 1000], "127.0.0.1", "udp", None)

    for i in range(2000):  # warm the memo, the detector and the alert folding
        counted(i)
    with_ns, without_ns = interleaved_ns(counted, uncounted, n)
    counters.count = real_count  # type: ignore[method-assign]
    return with_ns, without_ns, server


def scrape_cost(server: Server) -> tuple[float, int]:
    for ns in ("agents", "ci"):
        for action in ("allowed", "cached", "denied", "refused", "quarantined"):
            for qtype in (1, 2, 5, 6, 12, 15, 16, 28, 33, 64, 65, 255, 99):
                server.counters.count(ns, action, qtype, 0)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(server, AlertCounts()))
    body = generate_latest(registry)
    start = time.perf_counter()
    for _ in range(200):
        generate_latest(registry)
    return (time.perf_counter() - start) / 200 * 1e3, len(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=200_000)
    args = parser.parse_args()
    dict_ns, prom_ns, loop_ns = counters_alone(args.queries)
    counted, uncounted, server = asyncio.run(in_situ(args.queries // 4))
    scrape_ms, size = scrape_cost(server)
    print(f"QueryCounters.count (dict increments):    {dict_ns:7.0f} ns/query")
    print(f"prometheus-client Counter.labels().inc x2: {prom_ns:7.0f} ns/query  (for comparison)")
    print(f"  (loop overhead subtracted: {loop_ns:.0f} ns)")
    print(f"Server.query, denied name, with metrics:  {counted / 1000:7.2f} us/query")
    print(f"Server.query, denied name, no metrics:    {uncounted / 1000:7.2f} us/query")
    print(f"  difference (noise-level when small):    {(counted - uncounted):7.0f} ns "
          f"({(counted - uncounted) / counted * 100:.1f}%)")
    print(f"one /metrics scrape ({size} bytes):       {scrape_ms:7.2f} ms")


if __name__ == "__main__":
    main()
