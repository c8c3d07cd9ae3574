"""Adaptive channels against the detector: detection rate and bytes before detection.

Draws channels from the seeded generator in ``tests/tunnels/adaptive.py``
(encodings, chunking, pacing, answers, spread all randomised), runs each through
the replay pipeline (replay's default config, default thresholds) and prints, per
family, how many were detected and the distribution of payload bytes sent before
the first alert (median, p90, worst). Undetected draws count with everything
they sent (up to 32 KB or 3 days). Then the benign cloud shapes of
``tests/benign_corpus.py`` (SDK telemetry from 40 clients, unique-ID beacons,
CDN content hashes) and the benign day, with the registrable domains flagged.

The ``rotation`` family (one client or a few, 10-60 domains with 1-2 names each)
is drawn and reported apart, so that the rows of the other families stay
comparable with earlier runs. Its draws carry at most what their domains' names
hold (a few hundred bytes to ~10 KB): the rows split them at 4 KB carried in
all, and say the most a missed draw sent.

The ``clients`` family (one channel spread over 9-48 clients of one namespace,
1-2 domains, round robin or a client at random per name) is drawn and reported
apart as well, with the same columns as rotation.

Run:  .venv/bin/python -m benchmarks.adaptive_table [--draws 100] [--seed 0] [--benign-queries 120000]
Writes benchmarks/results/adaptive.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import save_results  # noqa: E402
from tests.benign_corpus import benign_day, cloud_shapes, rcode_for  # noqa: E402
from tests.tunnels.adaptive import (  # noqa: E402
    FAMILIES,
    MANY_CLIENTS,
    ROTATION,
    Outcome,
    draw,
    flagged_domains,
    percentile,
    score,
)

RESULTS = ROOT / "benchmarks" / "results" / "adaptive.json"
COMMAND = ".venv/bin/python -m benchmarks.adaptive_table"
LIMIT = 4096  # issue 13: detected within 4 KB
DAY = 86400.0


def _group(outcomes: Sequence[Outcome], label: str) -> dict[str, Any]:
    sent = [o.bytes_sent for o in outcomes if o.detected]
    missed = [o for o in outcomes if not o.detected]
    within = sum(1 for o in outcomes if o.detected and o.bytes_sent <= LIMIT)
    within_day = sum(1 for o in outcomes if o.detected and o.seconds <= DAY)
    return {
        "group": label,
        "draws": len(outcomes),
        "detected": len(outcomes) - len(missed),
        "within_4kb": within,
        "within_day": within_day,
        "median_bytes": percentile(sent, 0.5) if sent else None,
        "p90_bytes": percentile(sent, 0.9) if sent else None,
        "worst_bytes": max(sent) if sent else None,
        "median_seconds": percentile([o.seconds for o in outcomes if o.detected], 0.5) if sent else None,
        "worst_seconds": max((o.seconds for o in outcomes if o.detected), default=None),
        "missed_worst_bytes": max((o.bytes_sent for o in missed), default=None),
        "missed": [f"{o.channel.family}#{o.channel.seed}: {o.channel.describe()} "
                   f"({o.bytes_sent:,} B in {o.queries} queries, {o.seconds / 3600:.1f} h)" for o in missed],
        "late": [f"{o.channel.family}#{o.channel.seed}: {o.channel.describe()} "
                 f"({o.bytes_sent:,} B, {o.seconds / 3600:.1f} h; {', '.join(o.reasons)})"
                 for o in outcomes if o.detected and o.bytes_sent > LIMIT],
    }


def run(draws: int, seed: int, benign_queries: int, log: Callable[[str], None]) -> dict[str, Any]:
    started = time.monotonic()
    def scored(family: str) -> list[Outcome]:
        out = []
        for i in range(draws):
            outcome = score(draw(seed + i, family))
            out.append(outcome)
            if outcome.other_flagged:
                log(f"  {family}#{seed + i}: also flagged {outcome.other_flagged}")
        log(f"  {family}: {draws} draws in {time.monotonic() - started:.0f} s")
        return out

    outcomes = [o for family in FAMILIES for o in scored(family)]
    groups = [_group([o for o in outcomes if o.channel.family == f], f) for f in FAMILIES]
    slow = [o for o in outcomes if o.channel.interval >= 10 and o.channel.bytes_per_day >= 1024]
    groups.append(_group(slow, "paced >= 10 s, >= 1 KB/day (any family)"))
    thin = [o for o in outcomes if o.channel.bytes_per_day < 1024]
    groups.append(_group(thin, "below 1 KB/day (outside the targets)"))
    for label, pick in (
        ("word lists and syllables", lambda o: o.channel.encoding.startswith(("words", "proquint"))),
        ("several clients", lambda o: len(o.channel.clients) > 1),
        ("several domains", lambda o: len(o.channel.domains) > 1),
        ("NXDOMAIN answers", lambda o: o.channel.rcode == 3),
    ):
        groups.append(_group([o for o in outcomes if pick(o)], label))
    by_encoding = [_group([o for o in outcomes if o.channel.encoding == e], e)
                   for e in sorted({o.channel.encoding for o in outcomes})]

    rotation = scored(ROTATION)
    capacity = {o.channel.seed: o.channel.capacity() for o in rotation}
    rotation_groups = [
        _group(rotation, "rotation: 10-60 domains, 1-2 names each"),
        _group([o for o in rotation if capacity[o.channel.seed] > LIMIT], "rotation carrying > 4 KB in all"),
        _group([o for o in rotation if capacity[o.channel.seed] <= LIMIT],
               "rotation carrying <= 4 KB in all (outside the targets)"),
        _group([o for o in rotation if o.channel.names_per_domain == 1], "rotation, 1 name a domain"),
        _group([o for o in rotation if len(o.channel.clients) > 1], "rotation, several clients"),
        _group([o for o in rotation if o.channel.interval >= 10], "rotation, paced >= 10 s"),
    ]

    spread = scored(MANY_CLIENTS)
    spread_groups = [
        _group(spread, "clients: 9-48 clients of one namespace, 1-2 domains"),
        _group([o for o in spread if len(o.channel.clients) <= 16], "clients, 9-16 clients"),
        _group([o for o in spread if len(o.channel.clients) > 16], "clients, 17-48 clients"),
        _group([o for o in spread if o.channel.interval < 10], "clients, bulk (< 10 s between queries)"),
        _group([o for o in spread if o.channel.interval >= 10 and o.channel.bytes_per_day >= 1024],
               "clients, paced >= 10 s, >= 1 KB/day"),
        _group([o for o in spread if o.channel.encoding.startswith(("words", "proquint"))],
               "clients, word lists and syllables"),
        _group([o for o in spread if o.channel.rcode == 0], "clients, NOERROR answers"),
        _group([o for o in spread if o.channel.random_clients], "clients, a client at random per name"),
    ]

    # The clients draws again, each name asked A then AAAA (what a fleet's telemetry looks like);
    # then the same with every client an address of one IPv6 /64, counted as one host
    # (ipv6_client_prefix: 64).
    dual = [replace(draw(seed + i, MANY_CLIENTS), dual_stack=True) for i in range(draws)]
    dual_scored = [score(c) for c in dual]
    host = [score(replace(c, clients=tuple(f"2001:db8:64:1::{k + 1:x}" for k in range(len(c.clients)))),
                  ipv6_client_prefix=64) for c in dual]
    log(f"  clients, A and AAAA: {2 * draws} draws in {time.monotonic() - started:.0f} s")
    spread_groups += [
        _group(dual_scored, "clients asking A and AAAA of each name (telemetry-like)"),
        _group([o for o in dual_scored if o.channel.interval < 10], "the same, bulk (< 10 s between queries)"),
        _group(host, "the same, every client an address of one IPv6 /64 (ipv6_client_prefix: 64)"),
    ]

    benign: list[dict[str, Any]] = []
    shapes = cloud_shapes()
    if benign_queries:
        shapes["benign day (tests/benign_corpus.py)"] = [
            (ts, client, qname, qtype, rcode_for(qname))
            for ts, client, qname, qtype in benign_day(seed=11, queries=benign_queries)
        ]
    for name, rows in shapes.items():
        flagged = flagged_domains(rows)
        benign.append({"workload": name, "queries": len(rows), "clients": len({r[1] for r in rows}),
                       "flagged": sorted(flagged)})
        log(f"  {name}: {len(rows):,} queries, flagged {sorted(flagged)}")
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": f"{COMMAND} --draws {draws} --seed {seed} --benign-queries {benign_queries}",
        "config": "replay default (namespace default, mode learn, detection observe, default thresholds)",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "groups": groups,
        "encodings": by_encoding,
        "rotation": rotation_groups,
        "clients": spread_groups,
        "benign": benign,
        "seconds": round(time.monotonic() - started, 1),
    }


def _b(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _h(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.0f} s" if v < 120 else (f"{v / 60:.0f} min" if v < 7200 else f"{v / 3600:.1f} h")


def render(result: dict[str, Any]) -> str:
    out = ["| draws | n | detected | within 4 KB | within a day | bytes before alert: median | p90 | worst "
           "| time to alert: median | worst |", "|---|---|---|---|---|---|---|---|---|---|"]
    for table in (result["groups"], result["encodings"]):
        for g in table:
            out.append(f"| {g['group']} | {g['draws']} | {g['detected']} | {g['within_4kb']} | {g['within_day']} "
                       f"| {_b(g['median_bytes'])} | {_b(g['p90_bytes'])} | {_b(g['worst_bytes'])} "
                       f"| {_h(g['median_seconds'])} | {_h(g['worst_seconds'])} |")
    out += ["", "| rotation and clients draws | n | detected | within 4 KB | bytes before alert: median | p90 | worst "
            "| time to alert: median | worst | most sent by a missed draw |", "|---|---|---|---|---|---|---|---|---|---|"]
    for g in result.get("rotation", []) + result.get("clients", []):
        out.append(f"| {g['group']} | {g['draws']} | {g['detected']} | {g['within_4kb']} "
                   f"| {_b(g['median_bytes'])} | {_b(g['p90_bytes'])} | {_b(g['worst_bytes'])} "
                   f"| {_h(g['median_seconds'])} | {_h(g['worst_seconds'])} | {_b(g['missed_worst_bytes'])} |")
    out += ["", "| benign workload | queries | clients | registrable domains flagged |", "|---|---|---|---|"]
    for b in result["benign"]:
        out.append(f"| {b['workload']} | {b['queries']:,} | {b['clients']} | "
                   f"{', '.join(f'`{d}`' for d in b['flagged']) or '**none**'} |")
    tables = result["groups"][: len(FAMILIES)] + result.get("rotation", [])[:1] + result.get("clients", [])[:1]
    missed = [m for g in tables for m in g["missed"]]
    late = [m for g in tables for m in g["late"]]
    if missed or late:
        out += ["", "Missed (everything sent) and late (> 4 KB) draws:"]
        out += [f"- missed {m}" for m in missed] + [f"- late {m}" for m in late]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--draws", type=int, default=100, help="draws per family (default 100)")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--benign-queries", type=int, default=120_000,
                   help="size of the benign day (0: only the cloud shapes; default 120000)")
    p.add_argument("--out", default=str(RESULTS), help=f"results JSON (default {RESULTS.relative_to(ROOT)})")
    args = p.parse_args(argv)
    result = run(args.draws, args.seed, args.benign_queries, log=lambda s: print(s, file=sys.stderr))
    out = save_results(Path(args.out), result)
    sys.stdout.write(render(result))
    print(f"\n{result['seconds']} s; results in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
