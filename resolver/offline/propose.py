"""``dnsgate propose``: a first allowlist per namespace from observed traffic.

Sources: captures replayed through the pipeline with every namespace in
``learn`` mode (the LearnBook records each name, the detector flags tunnels),
or the names live ``learn`` namespaces keep in Redis (``--from-redis``; see
resolver/pipeline/learn.py for the key layout), run past a fresh detector in first-seen
order.

The output is a whole dnsgate config (the ``--config`` file's settings, or the
learn-everything default) whose namespaces carry the proposed ``allow`` lists,
so it loads into ``dnsgate check-config`` as it is. Each entry is:

- an exact name, or ``*.domain`` when at least ``--collapse`` distinct names
  share one registrable domain (``domain`` itself stays exact when it was asked),
  unless that wildcard would reach names other parties hold: then the names stay
  exact and the wildcard is listed under "not proposed" with the reason (see
  :func:`wildcard_refusal`: under ``arpa``; spanning a public suffix list rule,
  ``*.amazonaws.com`` over ``s3.amazonaws.com``; right under a platform's suffix
  of the list's private section, ``*.storage.googleapis.com``; over a flagged or
  quarantined domain);
- never a search-path expansion (``api.github.com.agents.svc.cluster.local``)
  that came back NXDOMAIN;
- commented with its query count and first/last seen (UTC).

Never proposed, and listed in a commented "not proposed" block under the
namespace with the reason, for a person to judge:

- names under a domain the detector flagged as a tunnel (one ``*.domain`` line):
  flagged in the replay, by the fresh detector ``--from-redis`` runs the names
  past, by a live learning namespace's detector (kept with its learned names),
  or quarantined now in the live detector's shared state (``--from-redis``);
- names whose queries were mostly answered NXDOMAIN (what a tunnel's names get
  from an upstream that has never heard of them);
- names with a random-looking label (the detector's own encoded-label test),
  unless the domain is exempt from detection (CDNs and the like) or the name is
  a well-formed reverse lookup (not any name under ``arpa``);
- names with a label that is a lone ``*``: a client can ask for one, and an
  entry spelled ``*.domain`` would allow all of ``domain``.

These are left out before names are folded into ``*.domain``, so random
NXDOMAIN names can never add up to a wildcard.

Every entry is written so that the config loader reads it back as exactly the
name seen (:func:`entry_text`): a '.' inside a label as ``\\.``, octets that are
not printable as ``\\DDD``, and a '*' as ``\\042``, so no octet a client puts in a
name turns an entry into a wildcard.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from heuristics import Detector, DetectorSettings, features_of, name_to_text
from heuristics.names import (
    DEFAULT_EXEMPTIONS,
    is_reverse_lookup,
    is_subdomain,
    labels_of,
    platform_suffix,
    registrable_wire,
    suffix_rule_at_or_below,
    wire_of,
)
from heuristics.state import MemoryState
from resolver import config as config_mod
from resolver.config import Config
from resolver.offline.capture import utc_text
from resolver.offline.replay import (
    ProblemPrinter,
    Progress,
    capture_setup,
    port_hint,
    redis_url_problem,
    replay,
    source_error,
)
from resolver.pipeline.learn import LearnBook, RedisLearnStore
from resolver.wire.message import NXDOMAIN

__all__ = [
    "Entry", "Proposal", "entry_text", "from_book", "from_captures", "from_redis", "live_quarantines", "render",
    "wildcard_refusal",
]

DEFAULT_COLLAPSE = 5
DEFAULT_MAX_NAMES = 500_000
DEFAULT_STATE_PREFIX = "dnsgate"  # the live detector's Redis keys (heuristics/state.py RedisState)

_STAR: Final = b"*"
_ARPA: Final = b"\x04arpa\x00"
FLAGGED: Final = "flagged by the detector as a tunnel"


def entry_text(name: bytes) -> str:
    """The allow entry for exactly the wire name ``name`` (never a wildcard), without trailing dot.

    Presentation text (``\\.`` for a '.' inside a label, ``\\DDD`` for octets that
    are not printable) with every '*' written ``\\042``: the loader reads a ``*.``
    written first as a wildcard and refuses a '*' anywhere else.
    """
    # name_to_text leaves a '*' as it is, and no escape it writes holds one.
    return name_to_text(name).replace("*", "\\042")


def wildcard_text(domain: bytes) -> str:
    """The allow entry for every name below the wire name ``domain``."""
    return "*." + entry_text(domain)


@dataclass(slots=True)
class Observed:
    """One name in one namespace, all query types folded together."""

    wire: bytes  # the decisions below compare wire names label by label
    text: str
    count: int = 0
    first: float = float("inf")
    last: float = 0.0
    rcodes: set[int] = field(default_factory=set)
    nxdomain: int = 0  # queries of records whose last answer was NXDOMAIN


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
    not_proposed: dict[str, list[Entry]] = field(default_factory=dict)  # note says why
    queries: int = 0
    first: float = 0.0
    last: float = 0.0
    sources: list[str] = field(default_factory=list)
    hint: str = ""  # stderr lines about ports not replayed


class NameCount(dict[str, int]):
    """namespace -> number of names (a tiny typed counter)."""

    def add(self, key: str, n: int = 1) -> None:
        self[key] = self.get(key, 0) + n


def _plural(n: int, one: str, many: str = "") -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def _when(ts: float) -> str:
    return utc_text(ts)


# --- building the proposal -------------------------------------------------------------


def _under(name: bytes, domains: Iterable[bytes]) -> bool:
    """``name`` is one of ``domains`` or below one, label by label (a '.' inside a label is no cut)."""
    return any(is_subdomain(name, d) for d in domains)


def _allow_entries(allow: Sequence[str]) -> list[tuple[str, bytes, bool]]:
    """(entry, wire name, wildcard) for config allow entries, parsed once."""
    out = []
    for entry in allow:
        wildcard = entry.startswith("*.")
        out.append((entry, wire_of(entry[2:] if wildcard else entry), wildcard))
    return out


def _covered(name: bytes, allow: Sequence[tuple[str, bytes, bool]]) -> str | None:
    """The existing allow entry that lets ``name`` through, RPZ-style (on wire labels)."""
    for entry, wire, wildcard in allow:
        if wildcard:
            if name != wire and is_subdomain(name, wire):
                return entry
        elif name == wire:
            return entry
    return None


def _stem(labels: list[bytes]) -> bytes:
    return b"".join(bytes([len(label)]) + label for label in labels) + b"\x00"


def search_expansion(name: bytes, rcodes: set[int], known: set[bytes], cluster_domains: Iterable[bytes]) -> bool:
    """A resolver search-path try: answered NXDOMAIN, and inside the cluster
    domain or the name of another observed name with a search suffix appended.
    Names are wire names; stems are cut at label boundaries."""
    if rcodes != {NXDOMAIN}:
        return False
    if _under(name, cluster_domains):
        return True
    labels = labels_of(name)
    return any(_stem(labels[:i]) in known for i in range(2, len(labels)))


def from_book(
    book: LearnBook,
    flagged: dict[str, set[str]],
    config: Config,
    collapse: int = DEFAULT_COLLAPSE,
    quarantined: dict[str, dict[str, float]] | None = None,
) -> Proposal:
    """Turn learned records into allow entries per namespace of ``config``.

    ``flagged`` are the domains a detector flagged per namespace; the book's own
    flags (a live learning namespace's) and ``quarantined`` (namespace -> domain
    -> until, the live detector's shared quarantines) are left out the same way.
    """
    proposal = Proposal(flagged={k: set(v) for k, v in flagged.items()})
    held: dict[str, dict[str, str]] = {}  # namespace -> domain -> why it is never proposed
    for ns_name, domains in flagged.items():
        for domain in domains:
            held.setdefault(ns_name, {})[domain] = FLAGGED
    for ns_name, domain in book.flagged:
        proposal.flagged.setdefault(ns_name, set()).add(domain)
        held.setdefault(ns_name, {}).setdefault(domain, FLAGGED)
    for ns_name, found in (quarantined or {}).items():
        for domain, until in found.items():
            proposal.flagged.setdefault(ns_name, set()).add(domain)
            held.setdefault(ns_name, {}).setdefault(
                domain, f"quarantined by the live detector as a tunnel (until {_when(until)})")
    by_ns: dict[str, dict[bytes, Observed]] = {}
    domain_of: dict[bytes, bytes] = {}
    for learned_ns, raw, _qtype, seen in book.items():
        if raw == b"\x00":
            continue  # the root (priming queries) is never an allow entry
        qname = raw.lower()
        names = by_ns.setdefault(learned_ns, {})
        obs = names.get(qname)
        if obs is None:
            obs = names[qname] = Observed(qname, entry_text(qname))
            domain_of[qname] = registrable_wire(qname)
        obs.count += seen.count
        if seen.rcode == NXDOMAIN:
            obs.nxdomain += seen.count
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
        tunnels = _held_wire(held.get(ns_name, {}))
        cluster = [wire_of(d) for d in settings.cluster_domains]
        known = set(names)
        existing = list(ns.allow) if ns else []
        allow = _allow_entries(existing)
        exempt = [wire_of(d) for d in (*settings.exempt, *settings.cluster_domains)]
        if settings.default_exemptions:
            exempt.extend(wire_of(d) for d in DEFAULT_EXEMPTIONS)
        kept: dict[bytes, Observed] = {}
        refused = Refused()
        matched: dict[str, Entry] = {e: Entry(e, 0, float("inf"), 0.0, 0, "kept from config") for e in existing}
        for qname, obs in names.items():
            if search_expansion(qname, obs.rcodes, known, cluster):
                proposal.left_out_search.add(ns_name)
                continue
            tunnel = next((t for t in tunnels if is_subdomain(qname, t)), None)
            if tunnel is not None:
                proposal.left_out_tunnel.add(ns_name)
                refused.tunnel(tunnel, obs, tunnels[tunnel])
                continue
            entry = _covered(qname, allow)
            if entry is not None:
                e = matched[entry]
                e.count += obs.count
                e.names += 1
                e.first = min(e.first, obs.first)
                e.last = max(e.last, obs.last)
                continue
            why = _doubtful(obs, settings, exempt)
            if why:
                refused.name(obs, why)
                continue
            kept[qname] = obs
        entries = [e for e in matched.values()]
        for e in entries:
            if not e.count:
                e.first = e.last = 0.0
        entries.extend(_collapse(kept, domain_of, collapse, tunnels, refused))
        entries.sort(key=lambda e: (_sort_key(e.text), e.text))
        proposal.entries[ns_name] = entries
        if refused.entries:
            proposal.not_proposed[ns_name] = refused.sorted()
    return proposal


def _held_wire(held: dict[str, str]) -> dict[bytes, str]:
    """Held domains' texts as wire names, with why each is held; a text that is no name
    (a quarantine set through the admin API can be any text) covers no name and is skipped."""
    out: dict[bytes, str] = {}
    for text, why in sorted(held.items()):
        try:
            wire = wire_of(text)
        except Exception:  # noqa: BLE001 - dnspython raises several types
            wire = b""
        if wire:
            out[wire] = why
    return out


def _doubtful(obs: Observed, settings: DetectorSettings, exempt: Sequence[bytes]) -> str:
    """Why a person, not propose, should decide on this name; "" when it may be proposed."""
    if obs.nxdomain * 2 > obs.count:
        return f"mostly NXDOMAIN ({obs.nxdomain} of {_plural(obs.count, 'query', 'queries')})"
    if _STAR in labels_of(obs.wire):
        # Exempt domains too: no hostname has such a label, and a person who moves the
        # line up gets this one name (\042 is a literal '*', never a wildcard).
        return "a label that is a lone '*' (written \\042: this one name, not a wildcard)"
    if is_reverse_lookup(obs.wire) or _under(obs.wire, exempt):
        return ""
    shape = features_of(obs.wire).encoded_shape(settings.encoded_label_min, settings.entropy_ratio)
    if shape is not None and shape.non_ldh:
        return "octets outside letters, digits and '-' in a label"
    if shape is not None:
        return (f"random-looking label ({shape.length} octets, entropy {shape.ratio:.0%} of random "
                f"{shape.alphabet} text)")
    return ""


class Refused:
    """The names propose leaves to a person, folded per flagged tunnel domain."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self._tunnels: dict[bytes, Entry] = {}

    def tunnel(self, domain: bytes, obs: Observed, why: str = FLAGGED) -> None:
        e = self._tunnels.get(domain)
        if e is None:
            e = self._tunnels[domain] = Entry(wildcard_text(domain), 0, obs.first, obs.last, 0, why)
            self.entries.append(e)
        e.count += obs.count
        e.names += 1
        e.first, e.last = min(e.first, obs.first), max(e.last, obs.last)

    def name(self, obs: Observed, why: str) -> None:
        self.entries.append(Entry(obs.text, obs.count, obs.first, obs.last, 1, why))

    def wildcard(self, entry: Entry) -> None:
        self.entries.append(entry)

    def sorted(self) -> list[Entry]:
        return sorted(self.entries, key=lambda e: (_sort_key(e.text), e.text))


def _sort_key(text: str) -> tuple[bytes, ...]:
    """Labels from the top down, so entries of one domain sit together."""
    body = text[2:] if text.startswith("*.") else text
    return tuple(reversed(labels_of(wire_of(body))))


def wildcard_refusal(domain: bytes, tunnels: Iterable[bytes] = ()) -> str:
    """Why ``*.domain`` must not be proposed, whatever names were seen under it; "" when it may.

    - under ``arpa``: reverse zones are many owners' (and a delegated one carries
      a payload as well as any domain);
    - a public suffix list rule (either section) at or below ``domain``:
      ``*.amazonaws.com`` takes in every S3 bucket and ELB name anyone creates;
    - ``domain`` sits right under a suffix of the list's private section: a
      platform's name (``storage.googleapis.com`` under ``googleapis.com``) whose
      subdomains are often its tenants' (every GCS bucket), which the list does
      not say;
    - a domain flagged or quarantined as a tunnel is at or below it.
    """
    if is_subdomain(domain, _ARPA):
        return "under arpa, where every reverse zone has its own owner"
    rule = suffix_rule_at_or_below(domain)
    if rule is not None:
        return f"it spans the public suffix {rule}, whose names others register"
    platform = platform_suffix(domain)
    if platform is not None:
        return (f"it sits right under {platform}, a platform's suffix (public suffix list, private section), "
                "so the names below it may be the platform's tenants'")
    for tunnel in tunnels:
        if is_subdomain(tunnel, domain):
            return f"it covers {entry_text(tunnel)}, held as a tunnel"
    return ""


def _collapse(
    kept: dict[bytes, Observed], domain_of: dict[bytes, bytes], collapse: int,
    tunnels: Iterable[bytes] = (), refused: Refused | None = None,
) -> list[Entry]:
    groups: dict[bytes, list[Observed]] = {}
    for qname, obs in kept.items():
        groups.setdefault(domain_of[qname], []).append(obs)
    out: list[Entry] = []
    for domain, members in groups.items():
        below = [m for m in members if m.wire != domain]
        if collapse > 0 and len(below) >= collapse and domain != b"\x00":
            wildcard = Entry(
                wildcard_text(domain),
                sum(m.count for m in below),
                min(m.first for m in below),
                max(m.last for m in below),
                len(below),
            )
            why = wildcard_refusal(domain, tunnels)
            if why:
                # The names stay, one by one; the wildcard is a person's call.
                wildcard.note = f"not proposed as a wildcard: {why}; its names are proposed one by one"
                if refused is not None:
                    refused.wildcard(wildcard)
            else:
                out.append(wildcard)
                members = [m for m in members if m.wire == domain]
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
    """Replay the captures with every namespace learning, then propose from what it learned.

    At most ``max_names`` (namespace, name, type) records are kept, the least recently
    asked dropped first; the proposal's ``hint`` says how many were.
    """
    if max_names < 1:
        raise ValueError(f"max_names must be at least 1, not {max_names}")
    learning = dataclasses.replace(
        config,
        namespaces={k: dataclasses.replace(ns, mode="learn") for k, ns in config.namespaces.items()},
        learn_max_records=max_names,
    )
    captured: list[LearnBook] = []
    report = replay(paths, learning, problems=problems, progress=progress, ports=ports,
                    on_engine=lambda engine: captured.append(engine.learned))
    flagged = {name: set(s.flagged) for name, s in report.namespaces.items() if s.flagged}
    proposal = from_book(captured[0], flagged, config, collapse)
    proposal.sources = list(paths)
    proposal.hint = port_hint("dnsgate propose", report, frozenset(ports))
    if captured[0].evicted:
        proposal.hint += (f"dnsgate propose: {captured[0].evicted:,} of the least recently asked records "
                          f"were dropped to keep {max_names:,} (--max-names)\n")
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


def live_quarantines(client: Any, state_prefix: str = DEFAULT_STATE_PREFIX) -> dict[str, dict[str, float]]:
    """namespace -> domain -> until: the live detector's domain quarantines in Redis
    (``<state_prefix>:quarantines``, member ``ns|domain``, score until; see
    heuristics/state.py RedisState). A member stays there a minute past its end."""
    out: dict[str, dict[str, float]] = {}
    for raw, until in client.zrange(f"{state_prefix}:quarantines", 0, -1, withscores=True):
        member = raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else str(raw)
        namespace, bar, domain = member.partition("|")
        if bar and domain:
            found = out.setdefault(namespace, {})
            found[domain] = max(float(until), found.get(domain, 0.0))
    return out


def from_redis(url: str, config: Config, collapse: int = DEFAULT_COLLAPSE,
               prefix: str = "dnsgate:learn", state_prefix: str = DEFAULT_STATE_PREFIX) -> Proposal:
    """Propose from the names live learn-mode namespaces pushed to Redis.

    Domains the live detector flagged in a learning namespace (kept with the
    learned names) or holds quarantined (its shared state) are never proposed,
    as well as those the fresh detector flags.
    """
    import redis

    client = redis.Redis.from_url(url)
    try:
        book = RedisLearnStore(prefix).pull(client)
        quarantined = live_quarantines(client, state_prefix)
    finally:
        client.close()
    namespaces = dict(config.namespaces)
    for ns_name in book.namespaces():
        if ns_name not in namespaces:
            default = config.namespaces.get("default")
            if default is not None:
                namespaces[ns_name] = dataclasses.replace(default, name=ns_name, clients=())
    config = dataclasses.replace(config, namespaces=namespaces)
    proposal = from_book(book, flag_learned(book, config), config, collapse, quarantined)
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
        doubtful = len(proposal.not_proposed.get(ns_name, ()))
        if tunnels or proposal.left_out_search.get(ns_name) or doubtful:
            out.append(
                f"# {ns_name}: left out {proposal.left_out_tunnel.get(ns_name, 0)} name(s) of flagged "
                f"tunnel domains ({', '.join(tunnels) or 'none'}), "
                f"{proposal.left_out_search.get(ns_name, 0)} NXDOMAIN search-path expansion(s); "
                f"{doubtful} line(s) under 'not proposed' with the reason"
            )
    out.append("# Review every entry, then: dnsgate check-config FILE")
    raw_namespaces = raw.get("namespaces") or {}
    for key, value in raw.items():
        if key != "namespaces":
            if key == "unknown_clients":
                out.extend(_unknown_clients_comment(value, config_path is not None))
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
        else:
            out.append("    allow:")
            width = min(max(len(_quote(e.text)) for e in entries), 60)
            for e in entries:
                out.append(f"      - {_quote(e.text):<{width}}  # {e.comment()}")
        out.extend(_not_proposed(proposal.not_proposed.get(ns_name, [])))
    return "\n".join(out) + "\n"


NOT_PROPOSED_SHOWN = 50


def _not_proposed(entries: list[Entry]) -> list[str]:
    """The commented block of names left to a person, with the reason for each."""
    if not entries:
        return []
    out = ["    # not proposed: seen, but not allowed without a person's review (move a line up to allow it)"]
    shown = entries[:NOT_PROPOSED_SHOWN]
    width = min(max(len(_quote(e.text)) for e in shown), 60)
    for e in shown:
        out.append(f"    #   - {_quote(e.text):<{width}}  # {e.comment()}")
    if len(entries) > len(shown):
        out.append(f"    #   ... and {len(entries) - len(shown)} more")
    return out


def _unknown_clients_comment(value: Any, from_config: bool) -> list[str]:
    """Why the proposal says what it says about clients outside every ``clients:`` prefix."""
    if value == "refuse":
        return ["# unknown_clients: refuse: a client outside every clients: prefix gets REFUSED."]
    if not from_config:
        return [f"# unknown_clients: {value}: without --config the capture was replayed with every client",
                f"# in namespace {value!r}, so its allow list covers them all. Before enforcing, list the",
                "# clients: prefixes of each namespace and set unknown_clients: refuse."]
    return [f"# unknown_clients: {value} (kept from the config): a client outside every clients: prefix",
            f"# gets namespace {value!r}'s allow list."]


def _yaml_key(name: str) -> str:
    plain = yaml.safe_dump(name, default_flow_style=True).strip()
    return plain.removesuffix("\n...").strip()


# --- command line --------------------------------------------------------------------


def run_propose(args: argparse.Namespace) -> int:
    prog = "dnsgate propose"
    if bool(args.pcaps) == bool(args.from_redis):
        print(f"{prog}: give capture files or --from-redis URL (one of them)", file=sys.stderr)
        return 2
    if args.from_redis and (problem := redis_url_problem(prog, args.from_redis)):
        print(problem, file=sys.stderr)
        return 2
    setup = capture_setup(prog, args)
    if setup is None:
        return 2
    config, ports = setup
    if args.max_names < 1:
        print(f"{prog}: --max-names takes a number of records, at least 1 (not {args.max_names})", file=sys.stderr)
        return 2
    if args.collapse < 0:
        print(f"{prog}: --collapse takes a number of names, 0 (never collapse) or more (not {args.collapse})",
              file=sys.stderr)
        return 2
    if args.config:
        loaded = config_mod.read_document(config_mod.read_text(Path(args.config))) or {}
        raw = _absolute(loaded, Path(args.config).resolve().parent)
    else:
        raw = default_document()
    try:
        if args.from_redis:
            proposal = from_redis(args.from_redis, config, args.collapse, args.redis_prefix)
        else:
            enabled = None if args.progress == "auto" else args.progress == "always"
            proposal = from_captures(
                args.pcaps, config, ports=ports, collapse=args.collapse,
                max_names=args.max_names, problems=ProblemPrinter(prog, sys.stderr),
                progress=Progress(args.pcaps, sys.stderr, enabled),
            )
    except Exception as exc:
        message = source_error(prog, exc)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return 2
    sys.stdout.write(render(proposal, raw, args.mode, args.config))
    total = sum(len(v) for v in proposal.entries.values())
    sys.stderr.write(f"{prog}: {total} allow entries in {len(proposal.entries)} namespace(s)\n")
    sys.stderr.write(proposal.hint)
    return 0 if proposal.queries or args.from_redis else 1
