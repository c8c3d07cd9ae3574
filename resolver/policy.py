"""The policy stage: each namespace's RPZ zones and allowlist decide a name's fate.

``enforce`` answers denied names itself (they never reach an upstream),
``observe`` forwards them and alerts, ``learn`` forwards everything and records
it. Decisions are memoised per (namespace, name).
"""

from __future__ import annotations

from resolver.alerts import AlertHub
from resolver.config import Config, Namespace
from resolver.learn import LearnBook
from resolver.query import Query, Reply
from resolver.rpz import Action, Policy, PolicyZone, Rule
from resolver.wire import (
    NOERROR,
    NXDOMAIN,
    QNAME_POINTER,
    REFUSED,
    TYPE_CNAME,
    answer_reply,
    header_reply,
    rr,
    truncated,
)

DENY_RULE_ACTIONS = {
    "nxdomain": Action.NXDOMAIN,
    "nodata": Action.NODATA,
    "drop": Action.DROP,
    "refused": None,  # REFUSED has no RPZ action; handled below
}

ANY = 255


def compile_policies(config: Config) -> dict[str, Policy]:
    """Build every namespace's Policy: its RPZ zones first, in order, then its allowlist."""
    policies: dict[str, Policy] = {}
    cache: dict[str, PolicyZone] = {}
    for ns in config.namespaces.values():
        zones: list[PolicyZone] = []
        for path in ns.rpz:
            key = str(path)
            if key not in cache:
                cache[key] = PolicyZone.from_file(path)
            zones.append(cache[key])
        zones.append(PolicyZone.allowlist(f"{ns.name}.allow", ns.allow))
        policies[ns.name] = Policy(zones)
    return policies


def local_answer(query: Query, rule: Rule) -> Reply:
    """Answer from RPZ local data: records of the asked type, or a CNAME, else NODATA."""
    qtype = query.question.qtype
    records = [
        rr(QNAME_POINTER, rec.rtype, rec.ttl, rec.rdata)
        for rec in rule.records
        if rec.rtype == qtype or rec.rtype == TYPE_CNAME or qtype == ANY
    ]
    return Reply(answer_reply(query.wire, query.question, records), NOERROR, "local")


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

    def resolve(self, query: Query) -> Reply | None:
        ns = query.namespace
        assert ns is not None
        q = query.question
        if ns.mode == "learn":
            self._learned.record(ns.name, q.qname, q.qtype, query.now)
            return None
        rule = self.decide(ns.name, q.qname)
        if rule is not None and rule.action is Action.PASSTHRU:
            return None
        if rule is not None and rule.action is Action.TCP_ONLY:
            if query.transport == "udp":
                return Reply(truncated(query.wire, q), NOERROR, "truncated")
            return None
        enforce = ns.mode == "enforce"
        if rule is not None and rule.action is Action.LOCAL_DATA:
            # A rewrite the operator wrote on purpose (walled garden), not a denial: no alert.
            return local_answer(query, rule) if enforce else None
        reasons = ["not_allowed"] if rule is None else [f"rpz_{rule.action.value}"]
        evidence: dict[str, object] = {"mode": ns.mode}
        if rule is not None:
            evidence.update(zone=rule.zone, trigger=rule.trigger)
        self._alerts.policy(
            query.now, ns.name, query.client, q.qname, q.qtype,
            "blocked" if enforce else "alerted", reasons, evidence,
        )
        if not enforce:
            return None
        if rule is None:
            return deny(query, ns)
        return apply_rule(query, rule)


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

