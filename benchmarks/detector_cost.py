"""Cost of Detector.observe in microseconds per query, by kind of traffic.

Run: .venv/bin/python -m benchmarks.detector_cost [--queries N] [--repeat R]

Each scenario starts from a fresh detector, feeds its queries 1 ms apart, and
reports CPU time per query (``time.process_time``: other programs on a shared
machine do not count) as the best of ``--repeat`` runs, and wall time of that run.
Queries are 1 ms apart unless said otherwise.

* seen name: 2,000 popular names, already seen, asked again by 50 clients;
* new names, one tunnel domain: base32 labels under one domain, TXT (the
  unique-name flood: the domain is flagged early and stays flagged);
* new names, quiet domains: 3 never-seen names under each of many domains
  (ordinary browsing: no domain ever looks suspicious; its first
  ``spread_skip_names`` names are short, under ``spread_free_bytes``, and cost
  the all-domain meters of heuristics/spread.py nothing);
* new names, busy benign domain: counters under one domain from 50 clients,
  A, one a second (suspicious by volume: the names pay for the full estimate).
"""

from __future__ import annotations

import argparse
import base64
import random
import time
from collections.abc import Callable

import dns.name

from heuristics import Detector, DetectorSettings
from heuristics.state import MemoryState

Query = tuple[str, bytes, int]  # client, wire name, qtype


def wire(text: str) -> bytes:
    return dns.name.from_text(text).to_wire().lower()


def seen_names(n: int, rng: random.Random) -> tuple[list[Query], list[Query]]:
    popular = [wire(f"svc{i}.api{i % 20}.example{i % 50}.com") for i in range(2000)]
    clients = [f"10.0.{i}.1" for i in range(50)]
    # Popular names are re-asked: warm each three times, as a pod resolving them would.
    warm = [(clients[(i + k) % 50], name, 1) for i, name in enumerate(popular) for k in range(3)]
    picks = [(clients[rng.randrange(50)], popular[rng.randrange(len(popular))], 1) for _ in range(n)]
    return warm, picks


def tunnel(n: int, rng: random.Random) -> tuple[list[Query], list[Query]]:
    return [], [
        (f"10.0.{i % 50}.1", wire(base64.b32encode(rng.randbytes(20)).decode().rstrip("=") + f".t{i % 100}.example.net"), 16)
        for i in range(n)
    ]


def quiet_domains(n: int, _rng: random.Random) -> tuple[list[Query], list[Query]]:
    words = ["api", "www", "cdn", "static", "login", "img", "docs", "mail"]
    return [], [
        (f"10.0.{i % 50}.1", wire(f"{words[i % 8]}{i // 8 % 3}.site{i // 3}.example"), 1)
        for i in range(n)
    ]


def busy_benign(n: int, _rng: random.Random) -> tuple[list[Query], list[Query]]:
    return [], [(f"10.0.{i % 50}.1", wire(f"host-{i}.pool.cdn-benign.com"), 1) for i in range(n)]


Maker = Callable[[int, random.Random], tuple[list[Query], list[Query]]]

# name -> (queries, share of --queries, seconds between queries)
SCENARIOS: dict[str, tuple[Maker, float, float]] = {
    "seen name": (seen_names, 1.0, 0.001),
    "new names, one tunnel domain": (tunnel, 0.25, 0.001),
    "new names, quiet domains": (quiet_domains, 0.25, 0.001),
    "new names, busy benign domain": (busy_benign, 0.25, 1.0),
}


def run(make: Maker, n: int, step: float) -> tuple[float, float, int]:
    """(cpu us/query, wall us/query, verdicts) for one fresh detector."""
    settings = DetectorSettings()
    det = Detector(MemoryState())
    warm, queries = make(n, random.Random(1))
    for client, name, qtype in warm:
        det.observe("ns", client, name, qtype, 1000.0, settings)
    verdicts = 0
    observe = det.observe
    cpu, wall = time.process_time(), time.perf_counter()
    for i, (client, name, qtype) in enumerate(queries):
        if observe("ns", client, name, qtype, 2000.0 + i * step, settings) is not None:
            verdicts += 1
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu / len(queries) * 1e6, wall / len(queries) * 1e6, verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    for label, (make, share, step) in SCENARIOS.items():
        n = max(1, int(args.queries * share))
        best = min((run(make, n, step) for _ in range(args.repeat)), key=lambda r: r[0])
        cpu, wall, verdicts = best
        print(f"{label:<32} {cpu:7.1f} us/query CPU  ({wall:7.1f} wall)  {n} queries, {verdicts} verdicts")


if __name__ == "__main__":
    main()
