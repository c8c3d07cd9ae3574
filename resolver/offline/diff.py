"""``dnsgate diff --declared``: declared egress against what was observed.

Per namespace it lists

- names observed but not declared (counts, clients, first/last seen): the
  workload reached for something nobody wrote down;
- declared entries never used in the observed period: candidates for removal
  at the next review.

Observed traffic comes from captures, replayed through the pipeline with every
namespace learning (the client of each query is kept), or from the names live
``learn`` namespaces keep in Redis (no clients there). Declared names match
observed ones exactly as the live policy stage would match them: each
namespace's entries are compiled into the same allowlist zone. NXDOMAIN
search-path expansions of declared names (``api.github.com.agents.svc.cluster.local``)
are never counted as undeclared.

The exit status is 1 when anything undeclared was observed, so the command can
gate a CI job or a review.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from heuristics import DetectorSettings, name_to_text
from heuristics.names import wire_of
from resolver.config import Config
from resolver.offline.capture import is_capture, utc_text
from resolver.offline.declared import Declaration, Source, declarations_or_error
from resolver.offline.propose import search_expansion
from resolver.offline.replay import ProblemPrinter, capture_setup, redis_url_problem, replay, source_error
from resolver.pipeline.learn import LearnBook, RedisLearnStore
from resolver.pipeline.query import Query, Reply
from resolver.pipeline.rpz import PolicyZone

__all__ = ["NamespaceDiff", "Observation", "compare", "observe_captures", "observe_redis", "render_text"]

MAX_CLIENTS = 16  # clients kept per name; more are counted


@dataclass(slots=True)
class Observation:
    """One name asked in one namespace, every query type folded together."""

    qname: bytes
    count: int = 0
    first: float = float("inf")
    last: float = 0.0
    clients: set[str] = field(default_factory=set)
    more_clients: int = 0
    rcodes: set[int] = field(default_factory=set)

    def saw(self, client: str | None, now: float, count: int = 1) -> None:
        self.count += count
        self.first = min(self.first, now)
        self.last = max(self.last, now)
        if client is None or client in self.clients:
            return
        if len(self.clients) < MAX_CLIENTS:
            self.clients.add(client)
        else:
            self.more_clients += 1


Observed = dict[str, dict[bytes, Observation]]  # namespace -> lowercased wire qname -> observation


@dataclass(slots=True)
class NamespaceDiff:
    """What one namespace asked for against what it declared."""

    namespace: str
    undeclared: list[Observation] = field(default_factory=list)
    unused: list[tuple[str, list[Source]]] = field(default_factory=list)
    used: int = 0
    search_expansions: int = 0


def observe_captures(paths: Sequence[str], config: Config, ports: Iterable[int] = (53,),
                     problems: Any = None) -> Observed:
    """Replay captures with every namespace learning; every query's namespace and client kept."""
    learning = dataclasses.replace(
        config, namespaces={k: dataclasses.replace(ns, mode="learn") for k, ns in config.namespaces.items()},
    )
    observed: Observed = {}
    books: list[LearnBook] = []

    def on_query(query: Query, _reply: Reply | None) -> None:
        ns = query.namespace
        if ns is None:
            return  # refused: no namespace to hold it against
        qname = query.question.qname.lower()
        names = observed.setdefault(ns.name, {})
        obs = names.get(qname)
        if obs is None:
            obs = names[qname] = Observation(qname)
        obs.saw(query.client, query.now)

    replay(paths, learning, ports=ports, problems=problems, on_query=on_query,
           on_engine=lambda engine: books.append(engine.learned))
    for ns_name, qname, _qtype, seen in books[0].items():
        obs = observed.get(ns_name, {}).get(qname.lower())
        if obs is not None and seen.rcode >= 0:
            obs.rcodes.add(seen.rcode)
    return observed


def observe_redis(url: str, prefix: str = "dnsgate:learn") -> Observed:
    """The names live learn-mode namespaces pushed to Redis (no client addresses: the last pod, if known)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        book = RedisLearnStore(prefix).pull(client)
    finally:
        client.close()
    observed: Observed = {}
    for ns_name, qname, _qtype, seen in book.items():
        key = qname.lower()
        names = observed.setdefault(ns_name, {})
        obs = names.get(key)
        if obs is None:
            obs = names[key] = Observation(key)
        # Redis keeps no client address; with pod identity on it keeps the pod that last asked.
        obs.saw(f"pod {seen.pod}" if seen.pod else None, seen.first, seen.count)
        obs.last = max(obs.last, seen.last)
        if seen.rcode >= 0:
            obs.rcodes.add(seen.rcode)
    return observed


def compare(declaration: Declaration, observed: Observed,
            cluster_domains: Iterable[str] = DetectorSettings().cluster_domains) -> list[NamespaceDiff]:
    """Per namespace: undeclared observed names and unused declared entries."""
    out: list[NamespaceDiff] = []
    domains = [wire_of(d) for d in cluster_domains]
    for ns in sorted(set(declaration.allow) | set(observed)):
        entries = declaration.entries(ns)
        zone = PolicyZone.allowlist(f"{ns}.declared", entries)
        diff = NamespaceDiff(ns)
        used: set[str] = set()
        names = observed.get(ns, {})
        # Wire names: search-path stems are cut at label boundaries, never at a '.' inside a label.
        known = {wire_of(e) for e in entries if not e.startswith("*.")}
        known.update(names)
        for qname, obs in names.items():
            if qname == b"\x00":
                continue  # the root (priming queries) is no one's egress
            rule = zone.match(qname)
            if rule is not None:
                used.add(rule.trigger)
                continue
            if search_expansion(qname, obs.rcodes, known, domains):
                diff.search_expansions += 1
                continue
            diff.undeclared.append(obs)
        diff.undeclared.sort(key=lambda o: (-o.count, o.qname))
        diff.used = len(used)
        diff.unused = [(e, declaration.allow[ns][e]) for e in entries if e not in used]
        out.append(diff)
    return out


# --- output --------------------------------------------------------------------------------


def _when(ts: float) -> str:
    return utc_text(ts) if ts and ts != float("inf") else "-"


def _clients(obs: Observation) -> str:
    if not obs.clients:
        return "(not recorded)"
    text = ",".join(sorted(obs.clients))
    return text + (f" +{obs.more_clients} more" if obs.more_clients else "")


def render_text(diffs: list[NamespaceDiff]) -> str:
    out: list[str] = []
    for d in diffs:
        out.append(f"namespace {d.namespace}: {len(d.undeclared)} undeclared name(s) observed, "
                   f"{len(d.unused)} declared entr{'y' if len(d.unused) == 1 else 'ies'} unused")
        if d.undeclared:
            out.append("  observed, not declared:")
            rows = [(name_to_text(o.qname), str(o.count), _clients(o), _when(o.first), _when(o.last))
                    for o in d.undeclared]
            header = ("NAME", "QUERIES", "CLIENTS", "FIRST SEEN", "LAST SEEN")
            widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
            for row in [header, *rows]:
                out.append("    " + "  ".join(
                    cell.rjust(w) if i == 1 else cell.ljust(w)
                    for i, (cell, w) in enumerate(zip(row, widths, strict=True))
                ).rstrip())
        if d.unused:
            out.append("  declared, never observed (candidates for removal at review):")
            for entry, sources in d.unused:
                out.append(f"    {entry}  # " + "; ".join(str(s) for s in sources))
        if d.search_expansions:
            out.append(f"  ({d.search_expansions} NXDOMAIN search-path expansion(s) not counted)")
    return "\n".join(out) + "\n"


def render_json(diffs: list[NamespaceDiff]) -> str:
    doc = {
        d.namespace: {
            "undeclared": [
                {"name": name_to_text(o.qname), "queries": o.count, "clients": sorted(o.clients),
                 "more_clients": o.more_clients, "first": o.first, "last": o.last}
                for o in d.undeclared
            ],
            "unused": [{"entry": e, "sources": [str(s) for s in sources]} for e, sources in d.unused],
            "search_expansions": d.search_expansions,
        }
        for d in diffs
    }
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


# --- command line --------------------------------------------------------------------------


def run_diff(args: argparse.Namespace) -> int:
    prog = "dnsgate diff"
    # ``--declared A.yaml B.json capture.pcap``: the captures are told apart by their magic number.
    args.pcaps = [*args.pcaps, *(p for p in args.declared if is_capture(p))]
    args.declared = [p for p in args.declared if not is_capture(p)]
    if not args.declared:
        print(f"{prog}: --declared needs at least one declaration file", file=sys.stderr)
        return 2
    if bool(args.pcaps) == bool(args.from_redis):
        print(f"{prog}: give capture files or --from-redis URL (one of them)", file=sys.stderr)
        return 2
    if args.from_redis and (problem := redis_url_problem(prog, args.from_redis)):
        print(problem, file=sys.stderr)
        return 2
    declaration = declarations_or_error(prog, args.declared, args)
    if declaration is None:
        return 2
    setup = capture_setup(prog, args)
    if setup is None:
        return 2
    config, ports = setup
    if not args.config:
        # Without a config every client of the capture is in --namespace.
        default = config.namespaces["default"]
        config = dataclasses.replace(
            config, namespaces={args.namespace: dataclasses.replace(default, name=args.namespace)},
            unknown_clients=args.namespace,
        )
    try:
        if args.from_redis:
            observed = observe_redis(args.from_redis, args.redis_prefix)
        else:
            observed = observe_captures(args.pcaps, config, ports=ports,
                                        problems=ProblemPrinter(prog, sys.stderr))
    except Exception as exc:  # noqa: BLE001 - exit 1 must only ever mean "undeclared egress seen"
        print(source_error(prog, exc) or f"{prog}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    settings = next((ns.detection.thresholds for ns in config.namespaces.values() if ns.detection.thresholds),
                    DetectorSettings())
    diffs = compare(declaration, observed, settings.cluster_domains)
    sys.stdout.write(render_json(diffs) if args.format == "json" else render_text(diffs))
    undeclared = sum(len(d.undeclared) for d in diffs)
    return 1 if undeclared else 0
