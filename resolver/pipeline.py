"""Where the chain is built: the stage list, readable in one place.

    wire -> question -> identity -> detection -> policy -> cache -> upstream -> reply

``Engine`` holds what outlives a reload (cache, upstreams, detector state,
alert sinks, learned names); ``Pipeline`` holds one config generation's stages.
A reload builds a new Pipeline and swaps it in; queries already inside the old
one finish there.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field

from heuristics import Detector, name_to_text
from heuristics.state import MemoryState, RedisState, State
from resolver.alerts import AlertHub, JsonlSink, Sink
from resolver.cache import Cache, CacheStage
from resolver.config import Config
from resolver.detection import DetectionStage
from resolver.identity import IdentityStage
from resolver.learn import LearnBook
from resolver.policy import PolicyStage, compile_policies, deny
from resolver.query import Query, Reply, Stage, servfail
from resolver.upstream import Forwarder
from resolver.wire import (
    MalformedMessage,
    fit_udp,
    inspect_reply,
)

log = logging.getLogger("dnsgate.pipeline")


def build_sinks(config: Config) -> list[Sink]:
    """One sink per ``alerts`` entry (see resolver/sinks.py for the remote ones)."""
    from resolver import sinks as remote

    return [
        JsonlSink(spec.options.get("path", "-")) if spec.type == "jsonl" else remote.build(spec)
        for spec in config.alerts
    ]


def check_sinks(config: Config) -> None:
    """Validate every remote sink's options (ConfigError names the line) without opening anything."""
    from resolver import sinks as remote

    for spec in config.alerts:
        if spec.type != "jsonl":
            remote.build(spec)


def build_state(config: Config) -> State:
    caps = config.state
    if caps.backend == "redis":
        return RedisState(caps.url, max_keys=caps.max_pairs, max_names=caps.max_names)
    return MemoryState(max_keys=caps.max_pairs, max_names=caps.max_names)


@dataclass
class Engine:
    """The parts that live across config generations."""

    cache: Cache
    forwarder: Forwarder
    detector: Detector
    state: State
    alerts: AlertHub
    learned: LearnBook
    generation: int = 0
    extra: dict[str, object] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Config, sinks: list[Sink] | None = None) -> Engine:
        state = build_state(config)
        return cls(
            cache=Cache(config.cache.max_entries),
            forwarder=Forwarder(config.upstreams, config.upstream_timeout, config.servfail_after),
            detector=Detector(state),
            state=state,
            alerts=AlertHub(build_sinks(config) if sinks is None else sinks, config.policy_alert_window),
            learned=LearnBook(config.learn_max_records),
        )

    async def start(self) -> None:
        await self.state.start()
        await self.alerts.start()

    async def close(self, now: float) -> None:
        self.forwarder.close()
        await self.alerts.close(now)
        await self.state.close()


class Pipeline:
    """One config generation: the stages, in order, and the upstream step after them."""

    def __init__(self, config: Config, engine: Engine) -> None:
        check_sinks(config)
        self.config = config
        self.engine = engine
        self.policy = PolicyStage(config, compile_policies(config), engine.alerts, engine.learned)
        self.detection = DetectionStage(engine.detector, engine.alerts, deny)
        self.stages: tuple[Stage, ...] = (
            IdentityStage(config),
            self.detection,
            self.policy,
            CacheStage(engine.cache),
        )
        self.strict_cnames = config.cname_check == "strict"

    def decide(self, query: Query) -> Reply | None:
        """Run the synchronous stages; None means the query goes upstream."""
        for stage in self.stages:
            reply = stage.resolve(query)
            if reply is not None:
                return reply
        return None

    def handle(self, query: Query) -> Reply | Awaitable[Reply]:
        """A reply now, or an awaitable one when the query must go upstream."""
        reply = self.decide(query)
        if reply is not None:
            return reply
        return self.forward(query)

    async def forward(self, query: Query) -> Reply:
        q = query.question
        raw = await self.engine.forwarder.forward(query.wire, q, tcp=query.transport == "tcp")
        if raw is None:
            return servfail(query.wire, q)
        try:
            info = inspect_reply(raw, q.end, max_ttl=self.config.cache.max_ttl, neg_ttl=self.config.cache.negative_ttl)
        except (MalformedMessage, IndexError) as exc:
            log.warning("malformed upstream reply for %s: %s", name_to_text(q.qname), exc)
            return servfail(query.wire, q)
        self.observe_reply(query, info.rcode)
        if info.cname_targets:
            denied = self._check_cnames(query, info.cname_targets)
            if denied is not None:
                return denied
        if query.cache_key and not info.truncated:
            self.engine.cache.put(query.cache_key, raw, query.now, info.ttl, info.ttl_offsets, info.rcode)
        wire = query.wire[:2] + raw[2:]
        if query.transport == "udp":
            wire = fit_udp(wire, query.wire, q)
        return Reply(wire, info.rcode, "allowed")

    def observe_reply(self, query: Query, rcode: int) -> None:
        """Feed a reply's rcode to the detector's windows and the learned names."""
        ns = query.namespace
        assert ns is not None
        q = query.question
        if ns.detection.mode != "off":
            self.engine.detector.observe_response(
                ns.name, query.client, q.qname, rcode, query.now, ns.detection.thresholds
            )
        if ns.mode == "learn":
            self.engine.learned.record_rcode(ns.name, q.qname, q.qtype, rcode)

    def _check_cnames(self, query: Query, targets: tuple[bytes, ...]) -> Reply | None:
        ns = query.namespace
        assert ns is not None
        names = [name_to_text(t) for t in targets]
        log.info("cname chain %s -> %s", name_to_text(query.question.qname), " -> ".join(names))
        if not self.strict_cnames or ns.mode == "learn":
            return None
        for target, text in zip(targets, names, strict=True):
            if not self.policy.allowed(ns.name, target):
                enforce = ns.mode == "enforce"
                self.engine.alerts.policy(
                    query.now, ns.name, query.client, query.question.qname, query.question.qtype,
                    "blocked" if enforce else "alerted", ["cname_not_allowed"], {"cname_target": text},
                )
                if enforce:
                    return deny(query, ns)
        return None

