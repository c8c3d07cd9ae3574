"""The policy stage: each namespace's RPZ zones and allowlist decide a name's fate.

``enforce`` answers denied names itself (they never reach an upstream),
``observe`` forwards them and alerts, ``learn`` forwards everything and records
it. Decisions are memoised per (namespace, name).

Reply side, as BIND does it: when the query name matched no RPZ trigger, each
target of the upstream's CNAME chain is looked up in the RPZ zones and the
first rewrite found applies to the reply (:meth:`PolicyStage.rewrite_chain`);
after a PASSTHRU trigger nothing further is checked. A local-data CNAME is
answered with the CNAME and its target's upstream answer
(:func:`append_followed`). Unlike BIND, which sends the target upstream
whatever its own triggers say, the target is a name dnsgate would send
upstream for the client, so it is decided as a query for it would be first
(``Pipeline.follow``; ``resolve`` with ``followed_from``): allowed, tcp-only,
local data of its own, or denied; what it gets is put after the CNAME
(:func:`nest_followed`).
"""

from __future__ import annotations

import logging
from typing import Final

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from heuristics import name_to_text
from resolver.config import Config, Namespace
from resolver.pipeline.alerts import AlertHub
from resolver.pipeline.learn import LearnBook
from resolver.pipeline.query import Query, Reply
from resolver.pipeline.rpz import Action, AllowList, LocalRecord, Policy, PolicyZone, Rule
from resolver.pipeline.scrub import UpstreamAnswer
from resolver.wire.message import (
    MAX_NAME,
    NOERROR,
    NXDOMAIN,
    QNAME_POINTER,
    REFUSED,
    TYPE_CNAME,
    ReplyInfo,
    answer_reply,
    header_reply,
    rr,
    truncated,
)

log = logging.getLogger("dnsgate.policy")

CHAIN_LOG_LINES: Final = 100  # CNAME-chain lines a CHAIN_LOG_SECONDS, at most; the rest are counted
CHAIN_LOG_SECONDS: Final = 60.0


class ChainLog:
    """The ``cname chain`` log lines, bounded: a client asking one allowed name with a CNAME
    under thousands of qtypes (each a cache miss), or many such names, must not fill the disk.

    Each distinct (namespace, name, chain) is logged once a window, at most
    ``CHAIN_LOG_LINES`` of them; the next window's first line is preceded by one
    line with the count of what was not logged.
    """

    def __init__(self) -> None:
        self.start = float("-inf")
        self.seen: dict[tuple[str, bytes, tuple[bytes, ...]], None] = {}
        self.held = 0  # chains not logged in this window (repeats, or past the cap)

    def log(self, now: float, namespace: str, qname: bytes, targets: list[bytes]) -> None:
        if not self.start <= now < self.start + CHAIN_LOG_SECONDS:
            if self.held:
                log.info("cname chain: %d more not logged in the last %.0f s (repeats, or past %d lines)",
                         self.held, CHAIN_LOG_SECONDS, CHAIN_LOG_LINES)
            self.start = now
            self.seen.clear()
            self.held = 0
        key = (namespace, qname, tuple(targets))
        if key in self.seen or len(self.seen) >= CHAIN_LOG_LINES:
            self.held += 1
            return
        self.seen[key] = None
        log.info("cname chain %s -> %s", name_to_text(qname), " -> ".join(name_to_text(t) for t in targets))

DENY_RULE_ACTIONS = {
    "nxdomain": Action.NXDOMAIN,
    "nodata": Action.NODATA,
    "drop": Action.DROP,
    "refused": None,  # REFUSED has no RPZ action; handled below
}

ANY = 255


def compile_policies(config: Config) -> dict[str, Policy]:
    """Build every namespace's Policy: its RPZ zones, in order, and its allowlist."""
    policies: dict[str, Policy] = {}
    cache: dict[str, PolicyZone] = {}
    for ns in config.namespaces.values():
        zones: list[PolicyZone] = []
        for path in ns.rpz:
            key = str(path)
            if key not in cache:
                cache[key] = PolicyZone.from_file(path)
            zones.append(cache[key])
        policies[ns.name] = Policy(zones, AllowList(f"{ns.name}.allow", ns.allow))
    return policies


def rewrite_target(qname: bytes, rule: Rule) -> bytes | None:
    """``CNAME *.suffix.``: the query name with the suffix appended (None when too long)."""
    assert rule.rewrite_suffix is not None
    target = qname[:-1] + rule.rewrite_suffix
    return target if len(target) <= MAX_NAME else None


def local_answer(query: Query, rule: Rule) -> Reply:
    """Answer from RPZ local data: records of the asked type, else NODATA; a CNAME is followed."""
    q = query.question
    qtype = q.qtype
    cname = rule.cname
    if rule.rewrite_suffix is not None:
        target = rewrite_target(q.qname, rule)
        if target is None:
            yxdomain = int(dns.rcode.YXDOMAIN)
            return Reply(header_reply(query.wire, q, yxdomain), yxdomain, "local")
        cname = LocalRecord(TYPE_CNAME, rule.rewrite_ttl, target)
    if cname is not None:
        follow = None if qtype in (TYPE_CNAME, ANY) else cname.rdata
        wire = answer_reply(query.wire, q, [rr(QNAME_POINTER, TYPE_CNAME, cname.ttl, cname.rdata)])
        return Reply(wire, NOERROR, "local", follow)
    records = [
        rr(QNAME_POINTER, rec.rtype, rec.ttl, rec.rdata)
        for rec in rule.records
        if rec.rtype == qtype or qtype == ANY
    ]
    return Reply(answer_reply(query.wire, q, records), NOERROR, "local")


def follow_query(query: Query, target: bytes) -> bytes:
    """The query for a local CNAME's target: same type, recursion desired, the client's EDNS size."""
    q = query.question
    name = dns.name.from_wire(target, 0)[0]
    out = dns.message.make_query(
        name, dns.rdatatype.RdataType.make(q.qtype), dns.rdataclass.RdataClass.make(q.qclass),
        use_edns=0 if q.has_edns else None, payload=q.udp_size,
    )
    return out.to_wire()


def append_followed(local: Reply, answer: UpstreamAnswer) -> Reply:
    """The local CNAME answer with the target's chain and records appended, and its rcode."""
    return _appended(local, answer.message, local.action, None)


def nest_followed(query: Query, local: Reply, inner: Reply) -> Reply:
    """What a followed name got for its own question (a denial, its local data, a chain
    rewrite), put after the local CNAME chain that led to it: the chain, then the inner
    reply's answer records and rcode; nothing for a drop, TC=1 for a truncated one."""
    if inner.wire is None:
        return Reply(None, NOERROR, inner.action)
    msg = dns.message.from_wire(inner.wire)
    if msg.flags & dns.flags.TC:
        return Reply(truncated(query.wire, query.question), NOERROR, "truncated")
    return _appended(local, msg, inner.action, inner.follow)


def _appended(local: Reply, inner: dns.message.Message, action: str, follow: bytes | None) -> Reply:
    assert local.wire is not None
    msg = dns.message.from_wire(local.wire)
    msg.answer.extend(inner.answer)
    msg.set_rcode(inner.rcode())
    return Reply(msg.to_wire(), int(msg.rcode()), action, follow)


class PolicyStage:
    def __init__(
        self,
        config: Config,
        policies: dict[str, Policy],
        alerts: AlertHub,
        learned: LearnBook,
    ) -> None:
        self._policies = policies
        self._alerts = alerts
        self._learned = learned
        self._memo: dict[tuple[str, bytes], Rule | None] = {}
        self._memo_size = config.decision_memo_size
        self._strict_cnames = config.cname_check == "strict"
        self._chain_log = ChainLog()

    def decide(self, namespace: str, qname: bytes) -> Rule | None:
        """The matching rule for a name, None when nothing matches (not allowed)."""
        key = (namespace, qname)
        try:
            return self._memo[key]
        except KeyError:
            pass
        rule = self._policies[namespace].match(qname)
        if len(self._memo) >= self._memo_size:
            self._memo.clear()  # cheap bound; a flood of unique names re-fills it with itself
        self._memo[key] = rule
        return rule

    def allowed(self, namespace: str, qname: bytes) -> bool:
        rule = self.decide(namespace, qname)
        return rule is not None and rule.action is Action.PASSTHRU

    def on_reply(self, query: Query, answer: UpstreamAnswer, info: ReplyInfo, /) -> Reply | None:
        """The reply side of the policy: learned rcodes, CNAME-chain rewrites, then ``cname_check``.

        Both read the scrubbed chain: CNAME targets and the names a DNAME
        synthesises (an upstream may send a DNAME without the CNAME it implies).
        """
        self.observe_rcode(query, info.rcode)
        rewritten = self.rewrite_chain(query, answer)
        if rewritten is not None or len(answer.chain) < 2:
            return rewritten
        return self.check_cnames(query, answer.targets)

    def observe_rcode(self, query: Query, rcode: int) -> None:
        """Learn mode keeps each name's rcodes, for ``propose`` (live, or from a capture in replay)."""
        view = query.view
        assert view is not None
        if view.mode == "learn":
            q = query.question
            self._learned.record_rcode(view.name, q.qname, q.qtype, rcode)

    def check_cnames(self, query: Query, targets: tuple[dns.name.Name, ...]) -> Reply | None:
        """Log the chain; with ``cname_check: strict`` deny a chain through a name not allowed."""
        view = query.view
        assert view is not None
        wires = [_wire_name(t) for t in targets]
        self._chain_log.log(query.now, view.name, query.question.qname, wires)
        if not self._strict_cnames or view.mode == "learn":
            return None
        for target in wires:
            if not self.allowed(view.name, target):
                text = name_to_text(target)
                enforce = view.mode == "enforce"
                self._alerts.policy(
                    query.now, view.name, query.client, query.question.qname, query.question.qtype,
                    "blocked" if enforce else "alerted", ["cname_not_allowed"], {"cname_target": text},
                )
                if enforce:
                    return deny(query, view.namespace)
        return None

    def rewrite_chain(self, query: Query, answer: UpstreamAnswer) -> Reply | None:
        """BIND's CNAME-chain rule: the first RPZ rewrite of a chain target applies.

        Only when the query name itself matched no RPZ trigger (an allow entry
        is not one); None when nothing is rewritten (or the mode only alerts).
        """
        view = query.view
        assert view is not None
        if view.mode == "learn" or not answer.targets:
            return None
        policy = self._policies[view.name]
        if not policy.zones:
            return None
        own = self.decide(view.name, query.question.qname)
        if own is not None and not own.allowlist:
            return None
        for target in answer.targets:
            target_wire = target.to_wire()
            assert target_wire is not None
            rule = policy.rpz(target_wire.lower())
            if rule is None:
                continue
            if rule.action is Action.PASSTHRU:
                return None
            if rule.action is Action.TCP_ONLY:
                if query.transport == "udp":
                    return Reply(truncated(query.wire, query.question), NOERROR, "truncated")
                return None
            enforce = view.mode == "enforce"
            if rule.action is not Action.LOCAL_DATA:
                q = query.question
                self._alerts.policy(
                    query.now, view.name, query.client, q.qname, q.qtype,
                    "blocked" if enforce else "alerted", [f"rpz_{rule.action.value}"],
                    {"mode": view.mode, "zone": rule.zone, "trigger": rule.trigger,
                     "cname_target": target.to_text(omit_final_dot=True)},
                )
            if not enforce:
                return None
            return chain_rewrite(query, answer, target, rule)
        return None

    def resolve(self, query: Query, followed_from: bytes = b"") -> Reply | None:
        """The policy's answer for a query, None to hand it on (upstream).

        ``followed_from`` names the client's question when ``query`` is the target
        of a local CNAME that dnsgate is about to send upstream (its alerts say so).
        """
        view = query.view
        assert view is not None
        q = query.question
        if view.mode == "learn":
            pod = query.pod
            if pod is None:
                self._learned.record(view.name, q.qname, q.qtype, query.now)
            else:
                self._learned.record(
                    view.name, q.qname, q.qtype, query.now, f"{pod.namespace}/{pod.name}", pod.service_account
                )
            return None
        rule = self.decide(view.name, q.qname)
        if rule is not None and rule.action is Action.PASSTHRU:
            return None
        if rule is not None and rule.action is Action.TCP_ONLY:
            if query.transport == "udp":
                return Reply(truncated(query.wire, q), NOERROR, "truncated")
            return None
        enforce = view.mode == "enforce"
        if rule is not None and rule.action is Action.LOCAL_DATA:
            # A rewrite the operator wrote on purpose (walled garden), not a denial: no alert.
            return local_answer(query, rule) if enforce else None
        reasons = ["not_allowed"] if rule is None else [f"rpz_{rule.action.value}"]
        evidence: dict[str, object] = {"mode": view.mode}
        if rule is not None:
            evidence.update(zone=rule.zone, trigger=rule.trigger)
        if followed_from:
            evidence["followed_from"] = name_to_text(followed_from)
        self._alerts.policy(
            query.now, view.name, query.client, q.qname, q.qtype,
            "blocked" if enforce else "alerted", reasons, evidence,
        )
        if not enforce:
            return None
        if rule is None:
            return deny(query, view.namespace)
        return apply_rule(query, rule)


def chain_rewrite(query: Query, answer: UpstreamAnswer, target: dns.name.Name, rule: Rule) -> Reply:
    """The upstream's chain up to ``target``, then the rule's answer for ``target``."""
    if rule.action is Action.DROP:
        return Reply(None, NOERROR, "dropped")
    request = dns.message.from_wire(query.wire)
    reply = dns.message.make_response(request)
    reply.flags |= dns.flags.RA
    for rrset in answer.message.answer:
        if rrset.name == target:
            break
        reply.answer.append(rrset)
    follow = None
    qtype = query.question.qtype
    if rule.action is Action.NXDOMAIN:
        reply.set_rcode(dns.rcode.NXDOMAIN)
    elif rule.action is Action.LOCAL_DATA:
        target_wire = target.to_wire()
        assert target_wire is not None
        cname = rule.cname
        if rule.rewrite_suffix is not None:
            rewritten = rewrite_target(target_wire.lower(), rule)
            if rewritten is None:
                reply.set_rcode(dns.rcode.YXDOMAIN)
            else:
                cname = LocalRecord(TYPE_CNAME, rule.rewrite_ttl, rewritten)
        records = [cname] if cname is not None else [
            rec for rec in rule.records if rec.rtype == qtype or qtype == ANY
        ]
        for rec in records:
            rtype = dns.rdatatype.RdataType.make(rec.rtype)
            rdata = dns.rdata.from_wire(dns.rdataclass.IN, rtype, rec.rdata, 0, len(rec.rdata))
            reply.answer.append(dns.rrset.from_rdata(target, rec.ttl, rdata))
        if cname is not None and qtype not in (TYPE_CNAME, ANY):
            follow = cname.rdata
    return Reply(reply.to_wire(), int(reply.rcode()), "local" if rule.action is Action.LOCAL_DATA else "denied", follow)


def _wire_name(name: dns.name.Name) -> bytes:
    """A name's uncompressed wire form, lowercased as the policy's keys are."""
    wire = name.to_wire()
    assert wire is not None
    return wire.lower()


def deny(query: Query, ns: Namespace) -> Reply:
    """The namespace's deny action for a name no trigger allowed."""
    if ns.deny_action == "refused":
        return Reply(header_reply(query.wire, query.question, REFUSED), REFUSED, "denied")
    action = DENY_RULE_ACTIONS[ns.deny_action]
    assert action is not None
    return apply_rule(query, Rule(action, "deny_action", "*"))


def apply_rule(query: Query, rule: Rule) -> Reply:
    q = query.question
    if rule.action is Action.NXDOMAIN:
        return Reply(header_reply(query.wire, q, NXDOMAIN, aa=True), NXDOMAIN, "denied")
    if rule.action is Action.NODATA:
        return Reply(header_reply(query.wire, q, NOERROR, aa=True), NOERROR, "denied")
    if rule.action is Action.DROP:
        return Reply(None, NOERROR, "dropped")
    if rule.action is Action.LOCAL_DATA:
        return local_answer(query, rule)
    raise ValueError(f"no answer for action {rule.action}")

