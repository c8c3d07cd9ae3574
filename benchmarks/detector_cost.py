"""Cost of Detector.observe in microseconds per query, seen and new names.

Run: .venv/bin/python benchmarks/detector_cost.py [--queries N]
"""

from __future__ import annotations

import argparse
import base64
import random
import time

import dns.name

from heuristics import Detector, DetectorSettings
from heuristics.state import MemoryState


def wire(text: str) -> bytes:
    return dns.name.from_text(text).to_wire().lower()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queries", type=int, default=100_000)
    args = parser.parse_args()
    rng = random.Random(1)
    settings = DetectorSettings()
    det = Detector(MemoryState())
    popular = [wire(f"svc{i}.api{i % 20}.example{i % 50}.com") for i in range(2000)]
    clients = [f"10.0.{i}.1" for i in range(50)]
    for i, name in enumerate(popular):  # warm: features memoised, names seen
        det.observe("ns", clients[i % 50], name, 1, 1000.0, settings)

    n = args.queries
    picks = [(popular[rng.randrange(len(popular))], clients[rng.randrange(50)]) for _ in range(n)]
    start = time.perf_counter()
    for i, (name, client) in enumerate(picks):
        det.observe("ns", client, name, 1, 1000.0 + i / 1000, settings)
    seen_us = (time.perf_counter() - start) / n * 1e6

    fresh = [
        wire(base64.b32encode(rng.randbytes(20)).decode().rstrip("=") + f".t{i % 100}.example.net")
        for i in range(n // 4)
    ]
    start = time.perf_counter()
    for i, name in enumerate(fresh):
        det.observe("ns", clients[i % 50], name, 16, 2000.0 + i / 1000, settings)
    new_us = (time.perf_counter() - start) / len(fresh) * 1e6

    print(f"observe, seen name: {seen_us:6.1f} us/query  ({n} queries)")
    print(f"observe, new name:  {new_us:6.1f} us/query  ({len(fresh)} queries)")


if __name__ == "__main__":
    main()
