"""Reading crafted captures against an ordinary one: reassembly work stays linear.

A hostile capture can try to make `dnsgate replay` spend its time in TCP or IP
reassembly instead of the pipeline. Three files, each read with
``resolver.offline.capture.read_dns`` (what replay reads with), best of
``--repeat`` runs in this process:

- ``udp``: the replay benchmark's capture, ordinary UDP queries and responses
  (``benchmarks/work/replay-100k.pcap``, written by
  ``benchmarks/replay_throughput.py``; skipped when it is not there);
- ``tcp-gap``: one connection, ``--segments`` one-byte segments 40k-120k bytes
  ahead of a gap that never fills, then as many in order (the worst case of a
  reassembly that scans the waiting segments for each new one);
- ``fragments``: two datagrams of 8,190 eight-byte fragments, each with one hole.

Each line gives seconds and MB/s. Results go to benchmarks/results/capture_worst.json.

Run: .venv/bin/python -m benchmarks.capture_worst [--segments 40000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import save_results  # noqa: E402
from resolver.offline.capture import CaptureProblem, read_dns  # noqa: E402
from tests.support.frames import eth, ip4, pcap, tcp, write  # noqa: E402

WORK = ROOT / "benchmarks" / "work"
RESULTS = ROOT / "benchmarks" / "results" / "capture_worst.json"
SYN, ACK = 0x02, 0x10


def tcp_gap(segments: int, isn: int = 1000) -> list[bytes]:
    base = isn + 1
    frames = [eth(ip4(tcp(b"", isn, SYN), proto=6))]
    frames += [eth(ip4(tcp(b"z", base + segments + 2 + 2 * i, ACK), proto=6)) for i in range(segments)]
    frames += [eth(ip4(tcp(b"\xff", base + i, ACK), proto=6)) for i in range(segments)]
    return frames


def fragments_with_holes(datagrams: int = 2, count: int = 8190) -> list[bytes]:
    frames = []
    for ident in range(1, datagrams + 1):
        frames.append(eth(ip4(b"x" * 8, ident=ident, frag=count)))  # the last fragment first
        frames += [eth(ip4(b"x" * 8, ident=ident, frag=0x2000 | i)) for i in range(count - 1)]
    return frames


def timed(path: Path, repeat: int) -> dict[str, Any]:
    best = float("inf")
    packets = problems = 0
    for _ in range(repeat):
        found: list[CaptureProblem] = []
        start = time.perf_counter()
        packets = sum(1 for _ in read_dns(str(path), on_problem=found.append))
        best = min(best, time.perf_counter() - start)
        problems = len(found)
    size = path.stat().st_size
    return {"bytes": size, "seconds": round(best, 3), "mb_per_second": round(size / 1e6 / best, 1),
            "dns_messages": packets, "problems": problems}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segments", type=int, default=40_000, help="one-byte segments on each side of the gap")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each file; the best counts")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    files = {
        "tcp-gap": write(WORK / "worst-tcp-gap.pcap", pcap(tcp_gap(args.segments))),
        "fragments": write(WORK / "worst-fragments.pcap", pcap(fragments_with_holes())),
    }
    ordinary = WORK / "replay-100k.pcap"
    if ordinary.exists():
        files = {"udp": ordinary, **files}
    result: dict[str, Any] = {}
    for name, path in files.items():
        result[name] = row = timed(Path(path), args.repeat)
        print(f"{name:10} {row['bytes'] / 1e6:6.1f} MB  {row['seconds']:6.3f} s  {row['mb_per_second']:7.1f} MB/s  "
              f"{row['dns_messages']:,} messages, {row['problems']:,} problems")
    for name in ("tcp-gap", "fragments"):
        Path(files[name]).unlink()
    save_results(RESULTS, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
