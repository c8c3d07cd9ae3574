"""What forwarding costs: dnsgate at a git ref against the working tree, dnsperf on loopback.

    .venv/bin/python -m benchmarks.upstream_cost --ref 5ee3cf5        # before: that commit
    .venv/bin/python -m benchmarks.upstream_cost --before /tmp/a --after /tmp/b   # two prepared trees

NSD serves the 1,000-name zone; each dnsgate (one worker, memory state) runs the
usual query file (90 % allowed, 10 % denied) twice: with the cache off, so that
every allowed query is forwarded and the forwarder's cost is all there is to
see, and with the cache on, as ``benchmarks.run`` measures it. Runs alternate
between the two trees, ``--rounds`` times; the medians are printed. A tree
given with ``--before``/``--after`` is run as it is (compiled modules beside
its sources are used: build them there with ``python -m resolver.native build``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks import dnsperf
from benchmarks.servers import Dnsgate, DnsgateSpec, Nsd, allowed_names, denied_names, export_source


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.upstream_cost", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", help="git ref of the 'before' dnsgate (exported with git archive)")
    ap.add_argument("--before", type=Path, help="a tree to run as 'before' instead of --ref")
    ap.add_argument("--after", type=Path, help="a tree to run as 'after' (default: the working tree)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per measured run (default 10)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds over both trees (default 3)")
    args = ap.parse_args(argv)
    if args.before is None and args.ref is None:
        ap.error("give --ref or --before")
    work = Path(tempfile.mkdtemp(prefix="dnsgate-upstream-cost-"))
    names = allowed_names(1000)
    query_file = work / "queries.txt"
    dnsperf.write_query_file(query_file, names, denied_names(2000))
    before = args.before or export_source(args.ref, work / "before")
    trees = (("before", before), ("after", args.after))
    nsd = Nsd(work / "nsd", names)
    nsd.start()
    results: dict[tuple[str, str], list[float]] = {}
    try:
        for round_ in range(args.rounds):
            for label, tree in trees:
                for cache in ("off", "on"):
                    extra: dict[str, object] = {"cache": {"max_entries": 0}} if cache == "off" else {}
                    gate = Dnsgate(work / f"{label}-{cache}-{round_}", names, nsd.port,
                                   DnsgateSpec(label=f"{label}-{cache}", extra=extra), source=tree)
                    gate.start()
                    try:
                        dnsperf.run(gate.port, query_file, 2.0, dnsperf.PerfOptions())  # warm-up
                        res = dnsperf.run(gate.port, query_file, args.duration, dnsperf.PerfOptions())
                    finally:
                        gate.stop()
                    results.setdefault((label, cache), []).append(res["qps"])
                    print(f"round {round_} {label:6} cache {cache:3}: {res['qps']:8.0f} q/s, "
                          f"lost {res.get('lost_pct', 0.0):.2f} %", file=sys.stderr, flush=True)
    finally:
        nsd.stop()
    for cache in ("off", "on"):
        old = statistics.median(results[("before", cache)])
        new = statistics.median(results[("after", cache)])
        print(f"cache {cache:3}: before {old:8.0f} q/s, after {new:8.0f} q/s ({100 * (new / old - 1):+.1f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
