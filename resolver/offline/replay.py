"""``dnsgate replay``: captures through the live pipeline, offline, in capture time.

Each query in a capture becomes a :class:`~resolver.query.Query` whose ``now`` is
the packet's timestamp and whose client is its source address, and goes through
``Pipeline.decide``, the same synchronous stages the server runs: identity,
detection, policy, cache. What would go upstream never does: replay forwards
nothing. A captured response, matched to its query by (client, port, ID, name),
feeds ``Pipeline.observe_reply`` as an upstream reply does live, so NXDOMAIN
ratios and learned rcodes work offline too.

Alerts go to the engine's sinks: ``--format jsonl`` puts a JsonlSink on stdout,
so stdout carries alert objects and nothing else; summaries, problems and the
progress bar go to stderr. See docs/replay.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from hashlib import blake2b
from pathlib import Path
from typing import IO, Any, Final

import dns.exception
import yaml

from heuristics import DetectorSettings, SettingsError
from heuristics.hll import HyperLogLog
from heuristics.names import is_subdomain, wire_of
from resolver import config as config_mod
from resolver.config import Config, ConfigError
from resolver.offline.capture import ANY_PORT, CaptureError, CaptureProblem, DnsPacket, read_many
from resolver.pipeline.alerts import SEVERITY_RANK, Alert, JsonlSink, Sink
from resolver.pipeline.chain import Engine, Pipeline
from resolver.pipeline.query import Query, Reply
from resolver.wire.message import MalformedMessage, parse_query, question_name

__all__ = [
    "FlaggedDomain",
    "NamespaceSummary",
    "Replay",
    "ReplayReport",
    "apply_overrides",
    "replay",
    "replay_config",
]

PENDING_MAX: Final = 65_536  # queries awaiting their captured response
DENIED_NAMES_MAX: Final = 50_000  # distinct denied names kept per namespace for the table
PROBLEMS_SHOWN: Final = 200  # per run; the rest are counted
COLLECT_EVERY: Final = 1 << 22  # packets between the replay loop's full collections (a power of two)
SWEEP_EVERY: Final = 5.0  # capture seconds between AlertHub sweeps (the live server's period)

# Set by the console command (resolver.cli.entry), which exits without freeing what a
# run built: the last run is kept here instead of being freed object by object as
# replay() returns (about a twentieth of a replay of 100k mostly-unique names).
# None (in-process callers, tests): every run is freed when replay() returns.
_last_run: list[Replay] | None = None


def keep_last_run() -> None:
    """Keep the last run's state alive until the process exits (see ``_last_run``)."""
    global _last_run
    _last_run = []


# --- configuration -------------------------------------------------------------------


def replay_config(path: str | None) -> Config:
    """The config a replay runs: the file's, or learn-everything; never any upstream."""
    config = config_mod.load(path) if path else config_mod.learn_all()
    # Offline and isolated: no upstream, in-memory detector state (never the live
    # Redis windows), alerts only to the sinks replay chooses.
    return dataclasses.replace(
        config, upstreams=(), state=config_mod.State(), alerts=()
    )


def parse_assignment(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as YAML (``3``, ``0.5``, ``[TXT, NULL]``, ``true``).

    Raises ValueError with a one-line reason (``KEY: '[1,2' is not a YAML value: ...``)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"{text!r}: expected KEY=VALUE")
    try:
        return key.strip(), yaml_value(value) if value.strip() else value
    except ValueError as exc:
        raise ValueError(f"{key.strip()}: {exc}") from None


def yaml_value(text: str) -> Any:
    """``text`` read as one YAML value; ValueError with a one-line reason when it is none."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = str(exc).splitlines()[0]
        if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
            mark = exc.problem_mark
            problem = exc.problem + (f" (column {mark.column + 1})" if mark is not None else "")
        raise ValueError(f"{text!r} is not a YAML value: {problem}") from None


def apply_overrides(config: Config, overrides: dict[str, Any]) -> Config:
    """Every namespace's detector thresholds with ``overrides`` applied (validated)."""
    if not overrides:
        return config
    namespaces = {}
    for name, ns in config.namespaces.items():
        base: DetectorSettings = ns.detection.thresholds or DetectorSettings()
        thresholds = base.replace(**overrides)
        namespaces[name] = dataclasses.replace(
            ns, detection=dataclasses.replace(ns.detection, thresholds=thresholds)
        )
    return dataclasses.replace(config, namespaces=namespaces)


# --- what a replay reports -------------------------------------------------------------


@dataclass(slots=True)
class FlaggedDomain:
    """Tunnel alerts for one (namespace, domain)."""

    domain: str
    alerts: int = 0
    severity: str = "info"
    reasons: set[str] = field(default_factory=set)
    evidence: dict[str, Any] = field(default_factory=dict)  # of the most severe alert
    first: float = 0.0
    last: float = 0.0
    clients: set[str] = field(default_factory=set)

    def add(self, alert: Alert) -> None:
        if not self.alerts:
            self.first = alert.ts
        self.alerts += 1
        self.last = alert.ts
        self.reasons.update(alert.reasons)
        if len(self.clients) < 16:
            self.clients.add(alert.client)
        if SEVERITY_RANK[alert.severity] >= SEVERITY_RANK[self.severity]:
            self.severity = alert.severity
            self.evidence = alert.evidence


@dataclass(slots=True)
class NamespaceSummary:
    """Counts for one namespace; bounded whatever the capture holds."""

    name: str
    mode: str
    detection: str
    queries: int = 0
    responses: int = 0
    upstream: int = 0  # would have gone upstream (allowed, or alerted only)
    actions: Counter[str] = field(default_factory=Counter)
    unique: HyperLogLog = field(default_factory=HyperLogLog)
    denied: dict[str, int] = field(default_factory=dict)  # qname -> denials (folded count)
    denied_overflow: int = 0
    denied_domains: Counter[str] = field(default_factory=Counter)  # domain -> names denied
    flagged: dict[str, FlaggedDomain] = field(default_factory=dict)

    @property
    def unique_names(self) -> int:
        """An estimate (HyperLogLog, a few percent off), never more than the queries."""
        return min(self.unique.count(), self.queries)

    def top_flagged(self, n: int = 10) -> list[FlaggedDomain]:
        return sorted(
            self.flagged.values(),
            key=lambda f: (-SEVERITY_RANK[f.severity], -f.alerts, f.domain),
        )[:n]


@dataclass(slots=True)
class ReplayReport:
    files: list[str]
    packets: int = 0
    queries: int = 0
    responses: int = 0
    matched: int = 0
    malformed: int = 0
    problems: int = 0
    # The earliest and latest capture times seen: a capture's packets need not be in time order.
    first_ts: float = float("inf")
    last_ts: float = float("-inf")
    alerts: Counter[str] = field(default_factory=Counter)
    namespaces: dict[str, NamespaceSummary] = field(default_factory=dict)
    seconds: float = 0.0
    elsewhere: Counter[int] = field(default_factory=Counter)  # DNS-looking UDP on ports not replayed

    @property
    def span(self) -> float:
        """Seconds of capture time from the earliest packet to the latest (0 without packets)."""
        return self.last_ts - self.first_ts if self.packets else 0.0

    def flagged_domains(self) -> set[str]:
        return {d for s in self.namespaces.values() for d in s.flagged}

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "packets": self.packets,
            "queries": self.queries,
            "responses": self.responses,
            "matched_responses": self.matched,
            "malformed": self.malformed,
            "problems": self.problems,
            "alerts": dict(self.alerts),
            "seconds": round(self.seconds, 3),
            "namespaces": {
                s.name: {
                    "queries": s.queries,
                    "unique_names": s.unique_names,
                    "names_denied": len(s.denied) + s.denied_overflow,
                    "flagged": sorted(s.flagged),
                }
                for s in self.namespaces.values()
            },
        }


class _Summaries:
    """The report's summary of a namespace, made on first use."""

    def __init__(self, report: ReplayReport, config: Config) -> None:
        self.report = report
        self.config = config

    def __call__(self, namespace: str) -> NamespaceSummary:
        s = self.report.namespaces.get(namespace)
        if s is None:
            ns = self.config.namespaces.get(namespace)
            s = NamespaceSummary(
                namespace,
                ns.mode if ns else "?",
                ns.detection.mode if ns else "?",
            )
            self.report.namespaces[namespace] = s
        return s


class SummarySink:
    """A sink that folds alerts into the report's per-namespace summaries."""

    name = "summary"

    def __init__(self, report: ReplayReport, summary: Callable[[str], NamespaceSummary]) -> None:
        self.report = report
        self.summary = summary

    def submit(self, alert: Alert) -> None:
        self.report.alerts[alert.kind] += 1
        s = self.summary(alert.namespace)
        if alert.kind == "tunnel":
            flagged = s.flagged.get(alert.domain)
            if flagged is None:
                flagged = s.flagged[alert.domain] = FlaggedDomain(alert.domain)
            flagged.add(alert)
        elif alert.kind == "policy":
            if alert.qname in s.denied:
                s.denied[alert.qname] += alert.count
                return
            if len(s.denied) < DENIED_NAMES_MAX:
                s.denied[alert.qname] = alert.count
            else:
                s.denied_overflow += 1
            if alert.domain in s.denied_domains or len(s.denied_domains) < DENIED_NAMES_MAX:
                s.denied_domains[alert.domain] += 1

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


# --- the replay ----------------------------------------------------------------------


class Replay:
    """One pass over captures through one Engine + Pipeline.

    ``feed`` takes packets in capture-time order; ``finish`` flushes folded
    alerts and returns the report. Memory is bounded: the pending-response
    table is capped, the pipeline's own state is bounded by its config.
    """

    def __init__(
        self,
        config: Config,
        sinks: Sequence[Sink] = (),
        files: Sequence[str] = (),
        on_query: Callable[[Query, Reply | None], None] | None = None,
    ) -> None:
        self.config = config
        # Called after ``Pipeline.decide`` with each query and the pipeline's reply
        # (None: it would go upstream); alerts raised by that query are already out.
        self.on_query = on_query
        self.report = ReplayReport(list(files))
        # Not the bound self.summary: the engine keeps its sinks, and a sink holding this
        # Replay would tie the engine and the detector's state into a reference cycle,
        # left for a full collection to free once the run is over.
        self._summary = _Summaries(self.report, config)
        self._summary_sink = SummarySink(self.report, self._summary)
        self.engine = Engine.from_config(config, sinks=[*sinks, self._summary_sink])
        self.pipeline = Pipeline(config, self.engine)
        self._features = self.engine.detector.features
        asyncio.run(self.engine.start())
        # Listener-bound namespaces: a query to that address and port lands there.
        self._listeners: dict[tuple[str, int], str] = {}
        self._any_listeners: dict[int, str] = {}
        for lst in config.listen:
            if lst.namespace is None:
                continue
            if lst.address in ("0.0.0.0", "::"):  # noqa: S104
                self._any_listeners[lst.port] = lst.namespace
            else:
                self._listeners[(lst.address, lst.port)] = lst.namespace
        self._pending: dict[tuple[str, int, int, bytes], Query] = {}
        self._next_sweep = float("-inf")  # the first packet sweeps, whatever its time
        # Keyed by namespace name: hashing a Namespace (its client networks) per query costs.
        self._summaries: dict[str | None, NamespaceSummary] = {}

    def summary(self, namespace: str) -> NamespaceSummary:
        return self._summary(namespace)

    def feed(self, pkt: DnsPacket, on_malformed: Callable[[DnsPacket, str], None] | None = None) -> None:
        report = self.report
        report.packets += 1
        now = pkt.ts
        if now > report.last_ts:
            report.last_ts = now
        if now < report.first_ts:
            report.first_ts = now
        if now >= self._next_sweep:
            self.engine.alerts.sweep(now)
            self._next_sweep = now + SWEEP_EVERY
        if pkt.is_response:
            self._response(pkt)
            return
        wire = pkt.wire
        if wire[2] & 0x78:
            return  # opcode NOTIFY, UPDATE ...: answered NOTIMP before the pipeline, live too
        try:
            q = parse_query(wire)
        except (MalformedMessage, IndexError) as exc:
            report.malformed += 1
            if on_malformed is not None:
                on_malformed(pkt, f"malformed DNS query: {exc}")
            return
        if q.edns_version:
            return  # answered BADVERS before the pipeline, live too
        report.queries += 1
        listener_ns = None
        if self._listeners or self._any_listeners:
            listener_ns = self._listeners.get((pkt.dst, pkt.dport)) or self._any_listeners.get(pkt.dport)
        query = Query(wire, q, pkt.src, pkt.transport, now, listener_ns)
        reply = self.pipeline.decide(query)
        if self.on_query is not None:
            self.on_query(query, reply)
        view = query.view
        s = self._namespace_summary(view.name if view is not None else None)
        s.queries += 1
        # A keyed-per-process hash() would make the count differ from run to run. The
        # detector has just hashed the name the same way, unless detection is off.
        feats = self._features.peek(q.qname)
        s.unique.add(
            feats.member if feats is not None else int.from_bytes(blake2b(q.qname, digest_size=8).digest(), "little")
        )
        if reply is not None:
            s.actions[reply.action] += 1
            return
        s.upstream += 1
        pending = self._pending
        if len(pending) >= PENDING_MAX:
            del pending[next(iter(pending))]  # oldest: its response was never captured
        pending[(pkt.src, pkt.sport, (wire[0] << 8) | wire[1], q.qname)] = query

    def _namespace_summary(self, name: str | None) -> NamespaceSummary:
        """:meth:`summary` kept by namespace name (None: refused), for every packet."""
        s = self._summaries.get(name)
        if s is None:
            s = self._summaries[name] = self.summary(name if name is not None else "(refused)")
        return s

    def _response(self, pkt: DnsPacket) -> None:
        self.report.responses += 1
        wire = pkt.wire  # a DnsPacket holds at least the 12 octets of a header
        if not (wire[4] or wire[5]) or not wire[2] & 0x80:  # no question, or QR clear
            return
        try:
            qname = question_name(wire)[0].lower()
        except (MalformedMessage, IndexError):
            return
        query = self._pending.pop((pkt.dst, pkt.dport, (wire[0] << 8) | wire[1], qname), None)
        if query is None:
            return
        view = query.view
        if view is None:
            return
        self.report.matched += 1
        self._namespace_summary(view.name).responses += 1
        self.pipeline.observe_reply(query, wire[3] & 0xF)

    def finish(self) -> ReplayReport:
        self._pending.clear()
        for s in self.report.namespaces.values():
            if s.upstream:
                s.actions["upstream"] = s.upstream
        asyncio.run(self.engine.close(self.report.last_ts if self.report.packets else 0.0))
        return self.report


class StdoutClosed(Exception):
    """The reader of stdout went away (``dnsgate replay ... | head``); the console command
    (``resolver.cli.entry``) ends quietly on it, as on any BrokenPipeError from stdout."""


class StdoutAlerts(JsonlSink):
    """The jsonl sink on stdout; a closed pipe ends the replay instead of logging per alert."""

    def __init__(self) -> None:
        super().__init__("-", stream=sys.stdout)

    def submit(self, alert: Alert) -> None:
        try:
            sys.stdout.write(alert.to_json() + "\n")
        except BrokenPipeError:
            raise StdoutClosed from None
        self.delivered += 1


def source_error(prog: str, exc: Exception) -> str | None:
    """The one-line message for a capture or Redis source that failed; None for any other error."""
    if isinstance(exc, (CaptureError, OSError)):  # redis.ConnectionError is an OSError subclass too
        return f"{prog}: {exc}"
    if type(exc).__module__.startswith("redis"):
        return f"{prog}: redis: {exc}"
    return None


def redis_url_problem(prog: str, url: str) -> str | None:
    """The one-line error for a ``--from-redis`` URL the Redis client cannot use; None when it can."""
    from redis.connection import parse_url  # the Redis client: only --from-redis needs it

    try:
        parse_url(url)
    except ValueError as exc:
        return f"{prog}: --from-redis {url}: {exc}"
    return None


class ProblemPrinter:
    """Reports skipped packets on stderr by file and packet number; caps the flood."""

    def __init__(self, prog: str, stream: IO[str], limit: int = PROBLEMS_SHOWN) -> None:
        self.prog = prog
        self.stream = stream
        self.limit = limit
        self.count = 0

    def say(self, path: str, number: int, message: str) -> None:
        self.count += 1
        if self.count <= self.limit:
            self.stream.write(f"{self.prog}: {path}: packet {number}: {message}\n")
        elif self.count == self.limit + 1:
            self.stream.write(f"{self.prog}: further problems are counted, not shown\n")

    def capture(self, problem: CaptureProblem) -> None:
        self.say(problem.path, problem.number, problem.message)


class Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal.

    The fraction done is the read position of the capture files (from
    /proc/self/fdinfo) over their total size, so it needs no help from the reader.
    """

    def __init__(self, paths: Sequence[str], stream: IO[str], enabled: bool | None = None) -> None:
        self.stream = stream
        self.enabled = stream.isatty() if enabled is None else enabled
        self.paths = {os.path.realpath(p) for p in paths}
        self.total = sum(_size(p) for p in paths) or 1
        self._next = 0.0
        self._started = time.monotonic()

    def _position(self) -> int:
        pos = 0
        try:
            for fd in os.listdir("/proc/self/fd"):
                try:
                    if os.readlink(f"/proc/self/fd/{fd}") in self.paths:
                        with open(f"/proc/self/fdinfo/{fd}") as info:
                            pos += int(info.readline().split()[1])
                except (OSError, ValueError, IndexError):
                    continue
        except OSError:
            return 0
        return pos

    def update(self, report: ReplayReport, label: str = "") -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + 0.2
        frac = min(self._position() / self.total, 1.0)
        bar = "#" * int(frac * 30)
        rate = report.packets / max(now - self._started, 1e-6)
        self.stream.write(
            f"\r{label}[{bar:<30}] {frac:6.1%} {report.packets:,} packets "
            f"{report.queries:,} queries {sum(report.alerts.values()):,} alerts {rate:,.0f}/s "
        )
        self.stream.flush()

    def done(self) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def replay(
    paths: Sequence[str],
    config: Config,
    *,
    sinks: Sequence[Sink] = (),
    ports: Iterable[int] = (53,),
    problems: ProblemPrinter | None = None,
    progress: Progress | None = None,
    label: str = "",
    on_engine: Callable[[Engine], None] | None = None,
    on_query: Callable[[Query, Reply | None], None] | None = None,
) -> ReplayReport:
    """Stream the captures at ``paths`` through a fresh pipeline built from ``config``.

    Raises CaptureError before any output when a file cannot be read at all.
    ``on_engine`` sees the Engine before the first packet (propose reads its LearnBook).
    ``on_query`` sees every query after the pipeline decided it (see ``Replay``).
    """
    started = time.monotonic()
    if _last_run:
        _last_run.clear()  # the run kept before is freed now: one run's state at a time
    on_problem = problems.capture if problems is not None else None
    elsewhere: Counter[int] = Counter()
    packets = read_many(list(paths), ports=frozenset(ports), on_problem=on_problem, elsewhere=elsewhere)
    run = Replay(config, sinks, paths, on_query=on_query)
    run.report.elsewhere = elsewhere
    if on_engine is not None:
        on_engine(run.engine)
    # DnsPacket does not name its file; with several files a malformed query is
    # reported against all of them (packet numbers are per file).
    where = paths[0] if len(paths) == 1 else " or ".join(paths)

    def malformed(pkt: DnsPacket, message: str) -> None:
        if problems is not None:
            problems.say(where, pkt.number, message)

    show = progress is not None and progress.enabled
    # The loop makes no reference cycles (the detector's state is trees of windows,
    # rows and sketches), yet the cyclic collector kept scanning its millions of
    # long-lived objects: about a sixth of a replay's time. Automatic collection is
    # off while packets are fed, with a full collection every COLLECT_EVERY packets
    # (a cycle that does appear, an exception kept with its traceback, is freed by
    # then); afterwards what the loop allocated joins the oldest generation without
    # being scanned (freeze, then unfreeze): the next full collection frees any
    # cycle among it, and a later gen-0 collection does not walk it all at once.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for i, pkt in enumerate(packets):
            run.feed(pkt, malformed)  # not a bound method kept in a local: compiled, that is a generic call
            if not i & 1023:
                if show and progress is not None:
                    progress.update(run.report, label)
                if not i & (COLLECT_EVERY - 1) and i:
                    gc.collect()
    finally:
        if not gc.get_freeze_count():  # (a caller's own frozen objects stay frozen: then no shortcut)
            gc.freeze()
            gc.unfreeze()
        if was_enabled:
            gc.enable()
    if show and progress is not None:
        progress.done()
    report = run.finish()
    report.problems = problems.count if problems is not None else 0
    report.seconds = time.monotonic() - started
    if _last_run is not None:
        _last_run.append(run)
    return report


# --- output --------------------------------------------------------------------------


def render_table(report: ReplayReport, top: int = 10) -> str:
    """The human summary: per namespace, queries, denied and unique names, flagged domains."""
    from resolver.offline.report import evidence_text  # the HTML page's module: a jsonl replay never loads it

    out: list[str] = []
    span = report.span
    out.append(
        f"replayed {report.queries:,} queries ({report.responses:,} responses, "
        f"{report.matched:,} matched to forwarded queries) over {span:,.0f}s of capture "
        f"from {len(report.files)} file(s)"
        + (f"; {report.problems} packet(s) skipped" if report.problems else "")
        + (f"; {report.malformed} malformed queries" if report.malformed else "")
    )
    for s in sorted(report.namespaces.values(), key=lambda s: -s.queries):
        out.append("")
        out.append(f"namespace {s.name}  (mode {s.mode}, detection {s.detection})")
        actions = ", ".join(f"{k} {v:,}" for k, v in s.actions.most_common())
        out.append(f"  queries        {s.queries:>10,}   ({actions})")
        out.append(f"  unique names   {f'~{s.unique_names:,}':>10}   (estimate)")
        out.append(f"  names denied   {len(s.denied) + s.denied_overflow:>10,}")
        if s.denied:
            out.append("    by domain (names denied):")
            for domain, names in s.denied_domains.most_common(top):
                out.append(f"      {names:>6,}  {domain}")
            out.append("    most denied names (denials):")
            worst = sorted(s.denied.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
            for name, count in worst:
                out.append(f"      {count:>6,}  {name if len(name) <= 90 else name[:87] + '...'}")
        flagged = s.top_flagged(top)
        out.append(f"  flagged domains {len(s.flagged):>9,}")
        if flagged:
            width = max(len(f.domain) for f in flagged)
            for f in flagged:
                out.append(
                    f"    {f.domain:<{width}}  {f.severity:<8} {f.alerts:>4} alert(s)  "
                    f"reasons: {', '.join(sorted(f.reasons))}"
                )
                if f.evidence:
                    out.append(f"    {'':<{width}}  evidence: {evidence_text(f.evidence)}")
                    example = str(f.evidence.get("qname", ""))
                    if example:
                        cut = example if len(example) <= 90 else example[:87] + "..."
                        out.append(f"    {'':<{width}}  e.g. {cut}")
    return "\n".join(out) + "\n"


def render_summary(report: ReplayReport) -> str:
    """One stderr paragraph for ``--format jsonl`` runs."""
    lines = [
        f"dnsgate replay: {report.queries:,} queries, {report.responses:,} responses, "
        f"{report.alerts.get('policy', 0):,} policy and {report.alerts.get('tunnel', 0):,} tunnel "
        f"alerts in {report.seconds:.2f}s"
        + (f"; {report.problems} packet(s) skipped" if report.problems else "")
    ]
    for s in sorted(report.namespaces.values(), key=lambda s: -s.queries):
        flagged = ", ".join(f.domain for f in s.top_flagged(5)) or "none"
        lines.append(
            f"  {s.name}: {s.queries:,} queries, ~{s.unique_names:,} unique names, "
            f"{len(s.denied) + s.denied_overflow:,} names denied, flagged: {flagged}"
        )
    return "\n".join(lines) + "\n"


# --- sweeps --------------------------------------------------------------------------


def load_labels(path: str) -> set[str]:
    """Tunnel domains, one per line in presentation form (``\\.`` and ``\\DDD`` understood);
    ``#`` starts a comment. Raises ValueError naming ``file:line`` for a line that is no name."""
    labels = set()
    for number, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip().lower().rstrip(".")
        if not line:
            continue
        try:
            _wire(line)
        except dns.exception.DNSException as exc:
            raise ValueError(f"{path}:{number}: not a domain name: {line!r} ({exc})") from None
        labels.add(line)
    return labels


@lru_cache(maxsize=65536)
def _wire(text: str) -> bytes:
    return wire_of(text)


def _matches(domain: str, label: str) -> bool:
    """A flagged domain and a labelled one match when either is the other or below it,
    compared label by label on wire names (``x\\.evil.test`` is not under ``evil.test``)."""
    flagged, labelled = _wire(domain), _wire(label)
    return is_subdomain(flagged, labelled) or is_subdomain(labelled, flagged)


@dataclass(slots=True)
class SweepRow:
    value: Any
    flagged: set[str]
    tp: set[str] = field(default_factory=set)
    fp: set[str] = field(default_factory=set)
    fn: set[str] = field(default_factory=set)
    seconds: float = 0.0


def score(flagged: set[str], labels: set[str]) -> tuple[set[str], set[str], set[str]]:
    """(true positives, false positives, missed labels) of flagged domains against labels."""
    tp = {d for d in flagged if any(_matches(d, lab) for lab in labels)}
    fp = flagged - tp
    fn = {lab for lab in labels if not any(_matches(d, lab) for d in flagged)}
    return tp, fp, fn


def render_sweep(key: str, rows: list[SweepRow], labels: set[str] | None) -> str:
    head = f"{key:>14}  {'flagged':>7}"
    if labels is not None:
        head += f"  {'TP':>4}  {'FP':>4}  {'FN':>4}  {'precision':>9}  {'recall':>6}"
    out = [head + "  domains"]
    for r in rows:
        line = f"{json.dumps(r.value):>14}  {len(r.flagged):>7}"
        if labels is not None:
            precision = len(r.tp) / len(r.flagged) if r.flagged else 1.0
            recall = len(r.tp) / len(labels) if labels else 1.0
            line += (
                f"  {len(r.tp):>4}  {len(r.fp):>4}  {len(r.fn):>4}  {precision:>9.2f}  {recall:>6.2f}"
            )
            names = [f"+{d}" for d in sorted(r.tp)] + [f"!{d}" for d in sorted(r.fp)]
            names += [f"-{d}" for d in sorted(r.fn)]
        else:
            names = sorted(r.flagged)
        out.append(f"{line}  {' '.join(names) or '-'}")
    if labels is not None:
        out.append("(+ true positive, ! false positive, - labelled tunnel not flagged)")
    return "\n".join(out) + "\n"


# --- command line --------------------------------------------------------------------


def _overrides(prog: str, sets: list[str]) -> dict[str, Any] | None:
    overrides: dict[str, Any] = {}
    for text in sets:
        try:
            key, value = parse_assignment(text)
        except ValueError as exc:
            print(f"{prog}: --set {exc}", file=sys.stderr)
            return None
        overrides[key] = value
    return overrides


def build_config(prog: str, args: argparse.Namespace, extra: dict[str, Any] | None = None) -> Config | None:
    """Load the replay config with --set (and ``extra``) applied; print errors, None on failure."""
    overrides = _overrides(prog, args.sets)
    if overrides is None:
        return None
    overrides.update(extra or {})
    try:
        return apply_overrides(replay_config(args.config), overrides)
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
    except SettingsError as exc:
        print(f"{prog}: --set {exc.key}: {exc.message}", file=sys.stderr)
    return None


def capture_setup(prog: str, args: argparse.Namespace) -> tuple[Config, frozenset[int]] | None:
    """The config (``build_config``) and the ``--port`` set of a capture command; None, said on stderr, when bad."""
    config = build_config(prog, args)
    if config is None:
        return None
    ports = capture_ports(prog, args.port)
    if ports is None:
        return None
    return config, ports


def capture_ports(prog: str, given: Sequence[str] | None) -> frozenset[int] | None:
    """``--port`` values as the capture reader wants them (ANY_PORT for ``any``); None, said on stderr, when bad."""
    if not given:
        return frozenset({53})
    if "any" in given:
        return ANY_PORT
    try:
        ports = frozenset(int(p) for p in given)
    except ValueError:
        ports = frozenset({0})
    if all(0 < p < 65536 for p in ports):
        return ports
    print(f"{prog}: --port takes a port number (1-65535) or 'any', not {given!r}", file=sys.stderr)
    return None


def port_hint(prog: str, report: ReplayReport, ports: frozenset[int]) -> str:
    """Lines for stderr when DNS went by on ports that were not replayed, or nothing was replayed."""
    lines = []
    if report.elsewhere:
        seen = ", ".join(f"{port} ({n:,} messages)" for port, n in report.elsewhere.most_common(5))
        first = report.elsewhere.most_common(1)[0][0]
        lines.append(f"{prog}: DNS also seen on UDP port(s) {seen}, not replayed: "
                     f"add --port {first} (or --port any to find DNS by content)")
    if not report.queries:
        where = "any port" if ports == ANY_PORT else "port " + ", ".join(map(str, sorted(ports)))
        lines.append(f"{prog}: no DNS queries found on {where}")
    return "".join(line + "\n" for line in lines)


def run_replay(args: argparse.Namespace) -> int:
    prog = "dnsgate replay"
    if not args.pcaps:
        print(f"{prog}: give at least one capture file", file=sys.stderr)
        return 2
    if args.sweep and args.format == "jsonl":
        print(f"{prog}: --sweep prints a table; drop --format jsonl", file=sys.stderr)
        return 2
    args.format = args.format or ("table" if args.sweep else "jsonl")
    if args.labels and not args.sweep:
        print(f"{prog}: --labels needs --sweep", file=sys.stderr)
        return 2
    if getattr(args, "jobs", None) is not None and not args.sweep:
        print(f"{prog}: --jobs needs --sweep", file=sys.stderr)
        return 2
    setup = capture_setup(prog, args)
    if setup is None:
        return 2
    config, ports = setup
    problems = ProblemPrinter(prog, sys.stderr)
    enabled = None if args.progress == "auto" else args.progress == "always"
    try:
        if args.sweep:
            return _run_sweep(prog, args, config, ports, problems, enabled)
        sinks: list[Sink] = []
        if args.format == "jsonl":
            sinks.append(StdoutAlerts())
        timeline = None
        if args.report:
            from resolver.offline.report import Timeline, render_report  # the HTML page's module, for --report only

            timeline = Timeline()
            sinks.append(timeline)
        progress = Progress(args.pcaps, sys.stderr, enabled)
        report = replay(args.pcaps, config, sinks=sinks, ports=ports, problems=problems,
                        progress=progress)
    except CaptureError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    if args.format == "table":
        sys.stdout.write(render_table(report, args.top))
    else:
        sys.stdout.flush()
        sys.stderr.write(render_summary(report))
    sys.stderr.write(port_hint(prog, report, ports))
    if timeline is not None:
        status = _write_report(prog, args.report, lambda: render_report(report, timeline, args.top))
        if status:
            return status
    return 0 if report.queries else 1


def _write_report(prog: str, path: str, render: Callable[[], str]) -> int:
    from resolver.offline.report import write as write_page  # the HTML page's module, for --report only

    text = render()  # outside the try: only an error writing the file is the file's
    try:
        write_page(path, text)
    except OSError as exc:
        print(f"{prog}: --report {path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"{prog}: report written to {path}", file=sys.stderr)
    return 0


def sweep_jobs(given: int | None, values: int) -> int:
    """How many values of a sweep replay at once: ``given``, else one per CPU this process
    may run on; never more than there are values."""
    if given is None:
        given = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(given, values))


# A parallel sweep's work, set in the parent before its workers fork (so nothing of it is
# pickled): the captures, one config per value, the ports, the name errors are signed with.
_sweep_work: tuple[list[str], list[Config], frozenset[int], str] | None = None


def _sweep_value(index: int) -> ReplayReport:
    """One value of a parallel sweep, in a forked worker; the report goes back pickled.

    Only the first value's run reports skipped packets (every run meets the same ones).
    """
    assert _sweep_work is not None
    paths, configs, ports, prog = _sweep_work
    problems = ProblemPrinter(prog, sys.stderr) if index == 0 else None
    report = replay(paths, configs[index], ports=ports, problems=problems)
    sys.stderr.flush()
    return report


def _sweep_reports(
    prog: str, paths: list[str], configs: list[Config], ports: frozenset[int], jobs: int,
) -> Iterator[ReplayReport]:
    """The sweep's reports in value order, ``jobs`` runs at a time in forked processes.

    A worker replays one value and exits (its run's memory goes with it), so at most
    ``jobs`` runs' state is alive at once.
    """
    import multiprocessing  # ~2 ms of imports that only a parallel sweep needs

    global _sweep_work
    _sweep_work = (paths, configs, ports, prog)
    try:
        context = multiprocessing.get_context("fork")
        # Ctrl-C reaches the whole process group: the workers are born ignoring it (no
        # traceback from each), and this process, interrupted, ends them on leaving the pool.
        interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            pool = context.Pool(jobs, maxtasksperchild=1)
        finally:
            signal.signal(signal.SIGINT, interrupt)
        with pool:
            yield from pool.imap(_sweep_value, range(len(configs)))
    finally:
        _sweep_work = None


def _run_sweep(prog: str, args: argparse.Namespace, config: Config, ports: frozenset[int],
               problems: ProblemPrinter, enabled: bool | None) -> int:
    key, sep, values_text = args.sweep.partition("=")
    key = key.strip()
    if not sep or not key or not values_text.strip():
        print(f"{prog}: --sweep: expected KEY=V1,V2,..., got {args.sweep!r}", file=sys.stderr)
        return 2
    try:
        values = [yaml_value(v) for v in values_text.split(",") if v.strip()]
    except ValueError as exc:
        print(f"{prog}: --sweep {key}: {exc}", file=sys.stderr)
        return 2
    given: int | None = getattr(args, "jobs", None)
    if given is not None and given < 1:
        print(f"{prog}: --jobs: expected 1 or more, got {given}", file=sys.stderr)
        return 2
    try:
        labels = load_labels(args.labels) if args.labels else None
    except (OSError, ValueError) as exc:
        print(f"{prog}: --labels: {exc}", file=sys.stderr)
        return 2
    configs: list[Config] = []
    for value in values:
        try:
            configs.append(apply_overrides(config, {key: value}))
        except SettingsError as exc:
            print(f"{prog}: --sweep {exc.key}: {exc.message}", file=sys.stderr)
            return 2
    jobs = sweep_jobs(given, len(values))
    if jobs == 1:
        # Every value meets the same skipped packets: the first value's run reports them.
        reports: Iterator[ReplayReport] = (
            replay(args.pcaps, swept, ports=ports, problems=problems if i == 0 else None,
                   progress=Progress(args.pcaps, sys.stderr, enabled), label=f"{key}={value} ")
            for i, (value, swept) in enumerate(zip(values, configs, strict=True))
        )
    else:
        reports = _sweep_reports(prog, list(args.pcaps), configs, ports, jobs)
    rows: list[SweepRow] = []
    done: list[ReplayReport] = []
    for value, report in zip(values, reports, strict=True):
        row = SweepRow(value, report.flagged_domains(), seconds=report.seconds)
        if labels is not None:
            row.tp, row.fp, row.fn = score(row.flagged, labels)
        rows.append(row)
        done.append(report)
        sys.stderr.write(f"{prog}: {key}={json.dumps(value)}: {len(row.flagged)} flagged domain(s) "
                         f"in {report.seconds:.2f}s\n")
    sys.stdout.write(render_sweep(key, rows, labels))
    if args.report:
        from resolver.offline.report import render_sweep_report  # the HTML page's module, for --report only

        return _write_report(prog, args.report, lambda: render_sweep_report(key, rows, done, labels))
    return 0
