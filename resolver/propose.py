"""``dnsgate propose``: a first allowlist per namespace from observed traffic.

Sources: captures replayed through the pipeline with every namespace in
``learn`` mode (the LearnBook records each name, the detector flags tunnels),
or the names live ``learn`` namespaces keep in Redis (``--from-redis``; see
resolver/learn.py for the key layout), run past a fresh detector in first-seen
order.

The output is a whole dnsgate config (the ``--config`` file's settings, or the
learn-everything default) whose namespaces carry the proposed ``allow`` lists,
so it loads into ``dnsgate check-config`` as it is. Each entry is:

- an exact name, or ``*.domain`` when at least ``--collapse`` distinct names
  share one registrable domain (``domain`` itself stays exact when it was asked);
- never a name under a domain the detector flagged as a tunnel;
- never a search-path expansion (``api.github.com.agents.svc.cluster.local``)
  that came back NXDOMAIN;
- commented with its query count and first/last seen (UTC).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from heuristics import Detector, DetectorSettings, name_to_text, registrable_domain
from heuristics.state import MemoryState
from resolver.capture import CaptureError
from resolver.config import Config
from resolver.learn import LearnBook, RedisLearnStore
from resolver.wire import NXDOMAIN

__all__ = ["Entry", "Proposal", "add_command", "from_book", "from_captures", "from_redis", "render"]

DEFAULT_COLLAPSE = 5
DEFAULT_MAX_NAMES = 500_000


@dataclass(slots=True)
class Observed:
    """One name in one namespace, all query types folded together."""

    text: str
    count: int = 0
    first: float = float("inf")
    last: float = 0.0
    rcodes: set[int] = field(default_factory=set)


@dataclass(slots=True)
class Entry:
    """One line of a proposed ``allow`` list."""

    text: str  # "name" or "*.domain"
    count: int
    first: float
    last: float
    names: int = 1
    note: str = ""

    def comment(self) -> str:
        what = _plural(self.names, "name") + ", " if self.text.startswith("*.") else ""
        if not self.count:
            return f"{what}not seen" + (f"; {self.note}" if self.note else "")
        seen = f"first {_when(self.first)}, last {_when(self.last)}"
        extra = f"; {self.note}" if self.note else ""
        return f"{what}{_plural(self.count, 'query', 'queries')}, {seen}{extra}"


@dataclass(slots=True)
class Proposal:
    """Proposed entries per namespace, and what was left out and why."""

    entries: dict[str, list[Entry]] = field(default_factory=dict)
    flagged: dict[str, set[str]] = field(default_factory=dict)
    left_out_tunnel: NameCount = field(default_factory=lambda: NameCount())
    left_out_search: NameCount = field(default_factory=lambda: NameCount())
    queries: int = 0
    first: float = 0.0
    last: float = 0.0
    sources: list[str] = field(default_factory=list)


class NameCount(dict[str, int]):
    """namespace -> number of names (a tiny typed counter)."""

    def add(self, key: str, n: int = 1) -> None:
        self[key] = self.get(key, 0) + n


def _plural(n: int, one: str, many: str = "") -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


# --- building the proposal -------------------------------------------------------------


def _under(name: str, domains: Iterable[str]) -> bool:
    return any(name == d or name.endswith("." + d) for d in domains)


def _covered(name: str, allow: Sequence[str]) -> str | None:
    """The existing allow entry that lets ``name`` through, RPZ-style."""
    for entry in allow:
        if entry.startswith("*."):
            if name.endswith(entry[1:]):
                return entry
        elif name == entry:
            return entry
    return None


def search_expansion(name: str, rcodes: set[int], known: set[str], cluster_domains: Iterable[str]) -> bool:
    """A resolver search-path try: answered NXDOMAIN, and inside the cluster
    domain or the name of another observed name with a search suffix appended."""
    if rcodes != {NXDOMAIN}:
        return False
    if _under(name, cluster_domains):
        return True
    parts = name.split(".")
    for i in range(2, len(parts)):  # the stem keeps at least two labels
        if ".".join(parts[:i]) in known:
            return True
    return False


def from_book(
    book: LearnBook,
    flagged: dict[str, set[str]],
    config: Config,
    collapse: int = DEFAULT_COLLAPSE,
) -> Proposal:
    """Turn learned records into allow entries per namespace of ``config``."""
    proposal = Proposal(flagged={k: set(v) for k, v in flagged.items()})
    by_ns: dict[str, dict[str, Observed]] = {}
    domain_of: dict[str, str] = {}
    for learned_ns, qname, _qtype, seen in book.items():
        if qname == b"\x00":
            continue  # the root (priming queries) is never an allow entry
        text = name_to_text(qname).lower()
        names = by_ns.setdefault(learned_ns, {})
        obs = names.get(text)
        if obs is None:
            obs = names[text] = Observed(text)
            domain_of[text] = registrable_domain(qname)
        obs.count += seen.count
        obs.first = min(obs.first, seen.first)
        obs.last = max(obs.last, seen.last)
        if seen.rcode >= 0:
            obs.rcodes.add(seen.rcode)
        proposal.queries += seen.count
        proposal.first = min(proposal.first or seen.first, seen.first)
        proposal.last = max(proposal.last, seen.last)
    for ns_name in sorted(set(by_ns) | set(config.namespaces)):
        ns = config.namespaces.get(ns_name)
        names = by_ns.get(ns_name, {})
        settings: DetectorSettings = (ns.detection.thresholds if ns else None) or DetectorSettings()
        tunnels = proposal.flagged.get(ns_name, set())
        known = set(names)
        existing = list(ns.allow) if ns else []
        kept: dict[str, Observed] = {}
        matched: dict[str, Entry] = {e: Entry(e, 0, float("inf"), 0.0, 0, "kept from config") for e in existing}
        for text, obs in names.items():
            if _under(text, tunnels):
                proposal.left_out_tunnel.add(ns_name)
                continue
            if search_expansion(text, obs.rcodes, known, settings.cluster_domains):
                proposal.left_out_search.add(ns_name)
                continue
            entry = _covered(text, existing)
            if entry is not None:
                e = matched[entry]
                e.count += obs.count
                e.names += 1
                e.first = min(e.first, obs.first)
                e.last = max(e.last, obs.last)
                continue
            kept[text] = obs
        entries = [e for e in matched.values()]
        for e in entries:
            if not e.count:
                e.first = e.last = 0.0
        entries.extend(_collapse(kept, domain_of, collapse))
        entries.sort(key=lambda e: (_sort_key(e.text), e.text))
        proposal.entries[ns_name] = entries
    return proposal


def _sort_key(text: str) -> tuple[str, ...]:
    body = text[2:] if text.startswith("*.") else text
    return tuple(reversed(body.split(".")))


def _collapse(kept: dict[str, Observed], domain_of: dict[str, str], collapse: int) -> list[Entry]:
    groups: dict[str, list[Observed]] = {}
    for text, obs in kept.items():
        groups.setdefault(domain_of[text], []).append(obs)
    out: list[Entry] = []
    for domain, members in groups.items():
        below = [m for m in members if m.text != domain]
        if collapse > 0 and len(below) >= collapse and domain != ".":
            out.append(Entry(
                f"*.{domain}",
                sum(m.count for m in below),
                min(m.first for m in below),
                max(m.last for m in below),
                len(below),
            ))
            members = [m for m in members if m.text == domain]
        for m in members:
            note = "NXDOMAIN" if m.rcodes == {NXDOMAIN} else ""
            out.append(Entry(m.text, m.count, m.first, m.last, 1, note))
    return out


def from_captures(
    paths: Sequence[str],
    config: Config,
    *,
    ports: Iterable[int] = (53,),
    collapse: int = DEFAULT_COLLAPSE,
    max_names: int = DEFAULT_MAX_NAMES,
    problems: Any = None,
    progress: Any = None,
) -> Proposal:
    """Replay the captures with every namespace learning, then propose from what it learned."""
    from resolver.replay import replay

    learning = dataclasses.replace(
        config,
        namespaces={k: dataclasses.replace(ns, mode="learn") for k, ns in config.namespaces.items()},
        learn_max_records=max(config.learn_max_records, max_names),
    )
    captured: list[LearnBook] = []
    report = replay(paths, learning, problems=problems, progress=progress, ports=ports,
                    on_engine=lambda engine: captured.append(engine.learned))
    flagged = {name: set(s.flagged) for name, s in report.namespaces.items() if s.flagged}
    proposal = from_book(captured[0], flagged, config, collapse)
    proposal.sources = list(paths)
    return proposal


def flag_learned(book: LearnBook, config: Config) -> dict[str, set[str]]:
    """Run learned names past a fresh detector in first-seen order; flagged domains per namespace.

    A learned record keeps no client, so every name counts as one client's: the
    per-namespace windows decide.
    """
    detector = Detector(MemoryState())
    flagged: dict[str, set[str]] = {}
    records = sorted(book.items(), key=lambda r: r[3].first)
    for ns_name, qname, qtype, seen in records:
        ns = config.namespaces.get(ns_name)
        if ns is not None and ns.detection.mode == "off":
            continue
        settings = (ns.detection.thresholds if ns else None) or DetectorSettings()
        verdict = detector.observe(ns_name, "learned", qname, qtype, seen.first, settings)
        if seen.rcode >= 0:
            detector.observe_response(ns_name, "learned", qname, seen.rcode, seen.first, settings)
        if verdict is not None:
            flagged.setdefault(ns_name, set()).add(verdict.domain)
    return flagged


def from_redis(url: str, config: Config, collapse: int = DEFAULT_COLLAPSE,
               prefix: str = "dnsgate:learn") -> Proposal:
    """Propose from the names live learn-mode namespaces pushed to Redis."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        book = RedisLearnStore(prefix).pull(client)
    finally:
        client.close()
    namespaces = dict(config.namespaces)
    for ns_name in book.namespaces():
        if ns_name not in namespaces:
            default = config.namespaces.get("default")
            if default is not None:
                namespaces[ns_name] = dataclasses.replace(default, name=ns_name, clients=())
    config = dataclasses.replace(config, namespaces=namespaces)
    proposal = from_book(book, flag_learned(book, config), config, collapse)
    proposal.sources = [url]
    return proposal


# --- rendering -----------------------------------------------------------------------


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _dump(value: Any, indent: int) -> list[str]:
    text = yaml.safe_dump(value, default_flow_style=False, sort_keys=False, allow_unicode=True)
    return [" " * indent + line for line in text.splitlines()]


def _absolute(raw: Any, base: Path) -> Any:
    """The raw config with relative file paths (rpz zones, jsonl sinks) made absolute,
    so the proposal validates wherever it is written."""
    if not isinstance(raw, dict):
        return raw
    out = dict(raw)
    alerts = out.get("alerts")
    if isinstance(alerts, list):
        fixed = []
        for sink in alerts:
            if isinstance(sink, dict) and sink.get("type") == "jsonl" and sink.get("path", "-") != "-":
                sink = {**sink, "path": str((base / str(sink["path"])).resolve())}
            fixed.append(sink)
        out["alerts"] = fixed
    namespaces = out.get("namespaces")
    if isinstance(namespaces, dict):
        fixed_ns = {}
        for name, body in namespaces.items():
            if isinstance(body, dict) and isinstance(body.get("rpz"), list):
                body = {**body, "rpz": [str((base / str(p)).resolve()) for p in body["rpz"]]}
            fixed_ns[name] = body
        out["namespaces"] = fixed_ns
    return out


def default_document() -> dict[str, Any]:
    """Top-level settings when there is no --config: the replay default, made concrete."""
    return {
        "upstreams": "system",
        "unknown_clients": "default",
        "detection": {"mode": "observe"},
        "namespaces": {"default": {}},
    }


def render(proposal: Proposal, raw: dict[str, Any], mode: str = "observe",
           config_path: str | None = None) -> str:
    """The proposal as a config file: ``raw``'s settings with each namespace's allow list."""
    out: list[str] = [
        "# dnsgate allowlist proposed by `dnsgate propose` from "
        + ", ".join(proposal.sources or ["(nothing)"]),
    ]
    if proposal.queries:
        out.append(f"# {proposal.queries:,} queries seen, {_when(proposal.first)} .. {_when(proposal.last)} (UTC)")
    for ns_name in sorted(proposal.entries):
        tunnels = sorted(proposal.flagged.get(ns_name, ()))
        if tunnels or proposal.left_out_search.get(ns_name):
            out.append(
                f"# {ns_name}: left out {proposal.left_out_tunnel.get(ns_name, 0)} name(s) of flagged "
                f"tunnel domains ({', '.join(tunnels) or 'none'}) and "
                f"{proposal.left_out_search.get(ns_name, 0)} NXDOMAIN search-path expansion(s)"
            )
    out.append("# Review every entry, then: dnsgate check-config FILE")
    raw_namespaces = raw.get("namespaces") or {}
    for key, value in raw.items():
        if key != "namespaces":
            out.extend(_dump({key: value}, 0))
            continue
    out.append("namespaces:")
    names = list(raw_namespaces) + [n for n in sorted(proposal.entries) if n not in raw_namespaces]
    for ns_name in names:
        body = raw_namespaces.get(ns_name) or {}
        out.append(f"  {_yaml_key(ns_name)}:")
        # A namespace that was learning moves on to ``mode``; one already observing or
        # enforcing keeps its mode (the config's default is enforce).
        ns_mode = body.get("mode", "enforce") if config_path and ns_name in raw_namespaces else mode
        if ns_mode == "learn":
            ns_mode = mode
        rest = {k: v for k, v in body.items() if k not in ("mode", "allow")}
        out.append(f"    mode: {ns_mode}")
        if rest:
            out.extend(_dump(rest, 4))
        entries = proposal.entries.get(ns_name, [])
        if not entries:
            out.append("    allow: []")
            continue
        out.append("    allow:")
        width = min(max(len(_quote(e.text)) for e in entries), 60)
        for e in entries:
            out.append(f"      - {_quote(e.text):<{width}}  # {e.comment()}")
    return "\n".join(out) + "\n"


def _yaml_key(name: str) -> str:
    plain = yaml.safe_dump(name, default_flow_style=True).strip()
    return plain.removesuffix("\n...").strip()


# --- command line --------------------------------------------------------------------


def add_command(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "propose", help="print a YAML allowlist per namespace from captures or learned names",
        description="Propose allowlists from observed traffic: PCAP files replayed in learn "
                    "mode, or the names live learn-mode namespaces keep in Redis.",
    )
    common(p)
    p.add_argument("--from-redis", metavar="URL", help="read learned names from Redis instead of captures")
    p.add_argument("--redis-prefix", default="dnsgate:learn", help="key prefix of the learned names")
    p.add_argument("--collapse", type=int, default=DEFAULT_COLLAPSE, metavar="N",
                   help=f"write *.domain when N or more names share a registrable domain "
                        f"(default {DEFAULT_COLLAPSE}; 0 never collapses)")
    p.add_argument("--mode", choices=("observe", "enforce"), default="observe",
                   help="mode written for namespaces that were learning (default observe)")
    p.add_argument("--max-names", type=int, default=DEFAULT_MAX_NAMES,
                   help=f"distinct (namespace, name, type) records kept (default {DEFAULT_MAX_NAMES:,})")
    p.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                   help="progress bar on stderr (auto: when stderr is a terminal)")
    p.set_defaults(func=run_propose)


def run_propose(args: argparse.Namespace) -> int:
    from resolver.replay import ProblemPrinter, Progress, build_config

    prog = "dnsgate propose"
    if bool(args.pcaps) == bool(args.from_redis):
        print(f"{prog}: give capture files or --from-redis URL (one of them)", file=sys.stderr)
        return 2
    config = build_config(prog, args)
    if config is None:
        return 2
    if args.config:
        loaded = yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) or {}
        raw = _absolute(loaded, Path(args.config).resolve().parent)
    else:
        raw = default_document()
    try:
        if args.from_redis:
            proposal = from_redis(args.from_redis, config, args.collapse, args.redis_prefix)
        else:
            enabled = None if args.progress == "auto" else args.progress == "always"
            proposal = from_captures(
                args.pcaps, config, ports=args.port or [53], collapse=args.collapse,
                max_names=args.max_names, problems=ProblemPrinter(prog, sys.stderr),
                progress=Progress(args.pcaps, sys.stderr, enabled),
            )
    except CaptureError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # redis.ConnectionError is an OSError subclass too
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if type(exc).__module__.startswith("redis"):
            print(f"{prog}: redis: {exc}", file=sys.stderr)
            return 2
        raise
    sys.stdout.write(render(proposal, raw, args.mode, args.config))
    total = sum(len(v) for v in proposal.entries.values())
    sys.stderr.write(f"{prog}: {total} allow entries in {len(proposal.entries)} namespace(s)\n")
    return 0
