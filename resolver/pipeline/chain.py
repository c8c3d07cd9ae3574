"""Where the chain is built: the stage list, readable in one place.

    wire -> question -> loop guard -> admission -> identity -> rate limit -> detection -> quarantine
         -> policy -> cache -> upstream -> scrub -> rebinding -> cname chain -> reply

An RPZ local CNAME's target goes back through detection and policy before it
is sent upstream, and its answer through scrub, rebinding and cname chain
(``Pipeline.follow``).

``Engine`` holds what outlives a reload (cache, upstreams, detector state,
alert sinks, learned names); ``Pipeline`` holds one config generation's stages.
A reload builds a new Pipeline and swaps it in; queries already inside the old
one finish there.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from heuristics import Detector, name_to_text
from heuristics.state import MemoryState, RedisState, State
from resolver.config import Config
from resolver.pipeline.admission import AdmissionStage
from resolver.pipeline.alerts import AlertHub, Sink
from resolver.pipeline.cache import Cache, CacheStage
from resolver.pipeline.detection import DetectionStage
from resolver.pipeline.identity import IdentityStage, PodTable
from resolver.pipeline.learn import LearnBook
from resolver.pipeline.loop import LogLimit, LoopGuard, dnsgate_mark
from resolver.pipeline.policy import (
    PolicyStage,
    append_followed,
    compile_policies,
    deny,
    follow_query,
    nest_followed,
)
from resolver.pipeline.quarantine import QuarantineStage
from resolver.pipeline.query import Query, Reply, ReplyHook, Stage, servfail
from resolver.pipeline.ratelimit import RateLimiter, RateLimitStage
from resolver.pipeline.rebinding import RebindingCounts, RebindingGuard
from resolver.pipeline.scrub import MalformedReply, Scrubber, UpstreamAnswer
from resolver.pipeline.upstream import Forwarder
from resolver.wire.message import (
    MalformedMessage,
    Question,
    ReplyInfo,
    fit_udp,
    inspect_reply,
    parse_query,
)

log = logging.getLogger("dnsgate.pipeline")

MAX_FOLLOWS: Final = 8  # local CNAMEs followed for one question; a loop of them ends in SERVFAIL


def build_state(config: Config) -> State:
    caps = config.state
    if caps.backend == "redis":
        return RedisState(caps.url, max_keys=caps.max_pairs, max_names=caps.max_names, cluster=caps.cluster)
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
    scrubber: Scrubber = field(default_factory=Scrubber)
    admission: AdmissionStage = field(default_factory=AdmissionStage)
    pods: PodTable = field(default_factory=PodTable)  # filled by the Pods watch when identity.kubernetes is set
    rebinding: RebindingCounts = field(default_factory=RebindingCounts)
    limiter: RateLimiter = field(default_factory=RateLimiter)
    loop: LoopGuard = field(default_factory=LoopGuard)
    generation: int = 0

    @classmethod
    def from_config(cls, config: Config, sinks: list[Sink]) -> Engine:
        state = build_state(config)
        pods = PodTable()
        loop = LoopGuard(dnsgate_mark(config))
        return cls(
            pods=pods,
            loop=loop,
            cache=Cache(config.cache.max_entries),
            forwarder=Forwarder(config.upstreams, config.upstream_timeout, config.servfail_after, mark=loop.marked),
            detector=Detector(state),
            state=state,
            alerts=AlertHub(sinks, config.policy_alert_window, workloads=pods.lookup),
            learned=LearnBook(config.learn_max_records),
            limiter=RateLimiter(config.rate_limit_clients),
        )

    async def start(self) -> None:
        await self.state.start()
        await self.alerts.start()

    async def close(self, now: float) -> None:
        self.forwarder.close()
        await self.alerts.close(now)
        await self.state.close()


def answer_policy_scope(config: Config, namespace: str) -> bytes:
    """A cache-key prefix naming a namespace and the version of what decides on its answers.

    A reload that changes the namespace's RPZ zones, allowlist, rebinding guard
    or CNAME check gives it a fresh prefix, so answers checked under the old
    policy are not served again (they age out of the cache).
    """
    ns = config.namespaces[namespace]
    digest = hashlib.blake2b(digest_size=8)
    digest.update(repr((ns.allow, ns.mode, ns.deny_action, ns.rebinding, config.cname_check)).encode())
    for path in ns.rpz:
        try:
            digest.update(Path(path).read_bytes())
        except OSError:
            digest.update(str(path).encode())
    return namespace.encode() + b"\x00" + digest.digest()


class Pipeline:
    """One config generation: the stages, in order, and the upstream step after them."""

    def __init__(self, config: Config, engine: Engine) -> None:
        self.config = config
        self.engine = engine
        self._follow_log = LogLimit()  # local-CNAME chains too long (an RPZ loop): a line a minute
        self.policy = PolicyStage(config, compile_policies(config), engine.alerts, engine.learned)
        self.detection = DetectionStage(engine.detector, engine.alerts, deny, engine.learned)
        self.quarantine = QuarantineStage(engine.state.clients, self.policy, engine.alerts, deny)
        self.rate_limit = RateLimitStage(engine.limiter, engine.alerts)
        engine.alerts.ipv6_prefix = config.ipv6_client_prefix
        self.identity = IdentityStage(config, engine.pods)
        scopes = {name: answer_policy_scope(config, name) for name in config.namespaces}
        self.cache = cache = CacheStage(engine.cache, scopes)
        self.loop = engine.loop
        self.admission = engine.admission
        # The stages in the order decide() runs them (it calls each by its own type, so
        # the compiled build makes direct calls; this tuple says what the order is).
        self.stages: tuple[Stage, ...] = (
            self.loop,
            self.admission,
            self.identity,
            self.rate_limit,
            self.detection,
            self.quarantine,
            self.policy,
            cache,
        )
        self.rebinding = RebindingGuard(config, engine.alerts, engine.rebinding)
        self.max_ttl: int = config.cache.max_ttl
        self.negative_ttl: int = config.cache.negative_ttl
        # The reply side, in order: each sees the scrubbed answer; the first to return a
        # Reply replaces it, and the cache (last) keeps only what all of them let through.
        self.reply_hooks: tuple[ReplyHook, ...] = (self.detection, self.policy, self.rebinding, cache)

    def decide(self, query: Query) -> Reply | None:
        """Run the synchronous stages, in the order of ``stages``; None means the query goes upstream.

        Written out stage by stage rather than as a loop over ``stages``: a call
        through the tuple's Protocol type is a dynamic method lookup a query,
        each stage's own type is a direct call in the compiled build.
        """
        # A Reply is always true, so ``or`` moves on exactly when a stage returned None.
        return (
            self.loop.resolve(query)
            or self.admission.resolve(query)
            or self.identity.resolve(query)
            or self.rate_limit.resolve(query)
            or self.detection.resolve(query)
            or self.quarantine.resolve(query)
            or self.policy.resolve(query)
            or self.cache.resolve(query)
        )

    def handle(self, query: Query) -> Reply | Awaitable[Reply]:
        """A reply now, or an awaitable one when the query must go upstream.

        When the detector records estimates (the live server turns that on, see
        ``Server``), every never-seen name it had to estimate on the way is charged
        to its client's rate-limit bucket (see resolver/pipeline/ratelimit.py):
        the limit bounds work, not packets.
        """
        reply = self.decide(query)
        charged = self.detection.detector.estimated_for
        if charged:
            self.rate_limit.charge(query, charged)
            charged.clear()
        if reply is not None:
            if reply.follow is not None:
                return self.follow(query, reply)
            return reply
        return self.forward(query)

    async def follow(self, query: Query, local: Reply) -> Reply:
        """Resolve a local CNAME's target upstream and append its answer (RPZ local data).

        The target is a name dnsgate sends upstream for the client (with ``CNAME
        *.suffix.``, the client's own labels), so it goes through what a query for
        it would: the detector observes it, and the namespace's policy decides it
        (:meth:`_decide_followed`); its upstream answer gets the reply checks of a
        forwarded one (:meth:`_check_reply`: CNAME chain, ``cname_check``, rebinding
        guard) and the TTL cap. Whatever those answer instead (a denial, local
        data, another local CNAME) comes after the CNAME chain so far.
        """
        for _ in range(MAX_FOLLOWS):
            assert local.follow is not None
            wire = follow_query(query, local.follow)
            target = Query(wire, parse_query(wire), query.client, query.transport, query.now,
                           query.listener_namespace)
            target.view = query.view
            target.pod = query.pod
            target.owner = query.owner
            inner = self._decide_followed(query, target)
            if inner is None:
                raw = await self.engine.forwarder.forward(
                    wire, target.question, tcp=query.transport == "tcp", client=query.owner
                )
                if raw is None:
                    return servfail(query.wire, query.question)
                try:
                    answer = self.engine.scrubber.scrub(raw, target.question, client_edns=True)
                    info = self._inspect(answer, target.question)
                except (MalformedReply, MalformedMessage, IndexError) as exc:
                    self._malformed(query, exc)
                    return servfail(query.wire, query.question)
                inner = self._check_reply(target, answer, info)
                if inner is None:
                    return self._fit(query, append_followed(local, answer))
            local = nest_followed(query, local, inner)
            if local.follow is None:
                return self._fit(query, local)
        count = self._follow_log.due(query.now)  # a client asking into an RPZ loop must not flood the log
        if count:
            log.warning("more than %d local CNAMEs for %s: SERVFAIL (an RPZ CNAME loop?); such queries since the "
                        "last line: %d", MAX_FOLLOWS, name_to_text(query.question.qname), count)
        return servfail(query.wire, query.question)

    def _decide_followed(self, query: Query, target: Query) -> Reply | None:
        """The detector and the policy on a followed name, as on a query (None: it may go upstream).

        Estimates the detector made for it are charged to the client, as in :meth:`handle`.
        """
        reply = self.detection.resolve(target)
        charged = self.detection.detector.estimated_for
        if charged:
            self.rate_limit.charge(query, charged)
            charged.clear()
        if reply is None:
            reply = self.policy.resolve(target, query.question.qname)
        return reply

    def _fit(self, query: Query, reply: Reply) -> Reply:
        if query.transport == "udp" and reply.wire is not None:
            reply.wire = fit_udp(reply.wire, query.wire, query.question)
        return reply

    def _malformed(self, query: Query, exc: Exception) -> None:
        seen = self.engine.scrubber.count_malformed(exc)
        if seen == 1 or seen % 1000 == 0:  # an upstream must not be able to flood the log
            qname = name_to_text(query.question.qname)
            log.warning("malformed upstream reply for %s (%d so far): %s", qname, seen, exc)

    async def forward(self, query: Query) -> Reply:
        q = query.question
        # Loop marks are counted per client as the identity stage names it: a host of a /64
        # must not get MARKS_PER_CLIENT fresh marks with each of its addresses.
        raw = await self.engine.forwarder.forward(query.wire, q, tcp=query.transport == "tcp", client=query.owner)
        if raw is None:
            return servfail(query.wire, q)
        try:
            answer = self.engine.scrubber.scrub(raw, q, client_edns=q.has_edns)
            info = self._inspect(answer, q)
        except (MalformedReply, MalformedMessage, IndexError) as exc:
            self._malformed(query, exc)
            return servfail(query.wire, q)
        replaced = self._on_reply(query, answer, info)
        if replaced is not None:
            if replaced.follow is not None:
                return await self.follow(query, replaced)
            if query.transport == "udp" and replaced.wire is not None:
                replaced.wire = fit_udp(replaced.wire, query.wire, q)
            return replaced
        wire = query.wire[:2] + answer.wire[2:]
        if query.transport == "udp":
            wire = fit_udp(wire, query.wire, q)
        return Reply(wire, info.rcode, "allowed")

    def _inspect(self, answer: UpstreamAnswer, q: Question) -> ReplyInfo:
        """The reply's TTLs, rcode and offsets; a TTL above ``max_ttl`` (or with its top bit set)
        is lowered in the answer itself, so no client sees it, relayed or from the cache."""
        info = inspect_reply(answer.wire, q.end, max_ttl=self.max_ttl, neg_ttl=self.negative_ttl)
        if info.over_max_ttl:
            answer.clamp_ttls(info.ttl_offsets, self.max_ttl)
        return info

    def _on_reply(self, query: Query, answer: UpstreamAnswer, info: ReplyInfo) -> Reply | None:
        """The reply hooks in the order of ``reply_hooks``: the first Reply returned replaces the
        answer and the hooks after it never see it (each called by its own type, as in decide)."""
        replaced = self._check_reply(query, answer, info)
        if replaced is None:
            replaced = self.cache.on_reply(query, answer, info)
        return replaced

    def _check_reply(self, query: Query, answer: UpstreamAnswer, info: ReplyInfo) -> Reply | None:
        """The hooks before the cache: detection, policy, rebinding guard (a followed name's
        answer gets these and is not cached)."""
        replaced = self.detection.on_reply(query, answer, info)
        if replaced is None:
            replaced = self.policy.on_reply(query, answer, info)
        if replaced is None:
            replaced = self.rebinding.on_reply(query, answer, info)
        return replaced

    def observe_reply(self, query: Query, rcode: int) -> None:
        """An rcode seen without a reply to check (replay reads it from the capture)."""
        self.detection.observe_rcode(query, rcode)
        self.policy.observe_rcode(query, rcode)
