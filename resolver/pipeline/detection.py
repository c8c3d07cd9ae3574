"""The detection stage: every query, in every mode, goes past the tunnelling detector.

With detection ``enforce`` a flagged (namespace, domain) is quarantined for a
while and its queries get the namespace's deny action; with ``observe`` the
detector only alerts. Detection runs before the allowlist so that denied names
are watched too and a quarantine overrides an allowed name.
"""

from __future__ import annotations

from typing import Any

from heuristics import Detector, Verdict, name_to_text
from resolver.config import Namespace
from resolver.pipeline.alerts import Alert, AlertHub, qtype_text
from resolver.pipeline.learn import LearnBook
from resolver.pipeline.query import Query, Reply
from resolver.pipeline.scrub import UpstreamAnswer
from resolver.wire.message import ReplyInfo


class DetectionStage:
    def __init__(self, detector: Detector, alerts: AlertHub, deny: Any, learned: LearnBook | None = None) -> None:
        self.detector = detector
        self._alerts = alerts
        self._deny = deny  # callable(query, namespace) -> Reply
        # A learning namespace's flagged domains are kept with its learned names: with
        # detection enforce the quarantined queries are never recorded, and propose
        # must still know not to allow the domain.
        self._learned = learned
        self.quarantine_blocks = 0

    def resolve(self, query: Query) -> Reply | None:
        view = query.view
        assert view is not None
        if view.detection == "off":
            return None
        q = query.question
        enforce = view.detection == "enforce"
        # A quarantined name costs a lookup or two: checked before any scoring, on wire
        # labels, so a quarantine of D covers every name below D whatever octets (a '.'
        # included) its labels hold.
        if enforce and self.detector.quarantined_name(view.name, q.qname, query.now):
            self.quarantine_blocks += 1
            return self._blocked(query, view.namespace)
        qname = q.qname
        # The question name as sent starts at offset 12; when it differs from the
        # lowercased name only in case, the detector prices the case too.
        sent = query.wire[12 : 12 + len(qname)]
        raw = sent if sent != qname and sent.lower() == qname else None
        detector = self.detector
        # The detector counts a client as the identity stage names it (query.owner): a pod
        # with all its addresses, an IPv6 host with its network. Per address, a host of a
        # /64 could spread a channel over as many "clients" as it likes.
        owner = query.owner
        verdict = detector.observe(view.name, owner, qname, q.qtype, query.now, view.thresholds, raw, owner)
        if detector.churned:
            self._report_churn(query.now, view.thresholds.long_window_seconds, view.thresholds.churn_domains)
        if verdict is None:
            return None
        query.domain = verdict.domain
        if self._learned is not None and view.mode == "learn":
            self._learned.flag(view.name, verdict.domain, query.now)
        if enforce and not verdict.repeat:
            until = query.now + view.thresholds.quarantine_seconds
            self.detector.quarantine(view.name, verdict.domain, until)
        if verdict.alert:
            # After the quarantine: the hub may fold the alert for the remote sinks
            # (a client flooding fresh domains), never the decision.
            self._alerts.tunnel(self.alert(query, view.namespace, verdict, "quarantined" if enforce else "alerted"))
        if enforce:
            self.quarantine_blocks += 1
            return self._blocked(query, view.namespace)
        return None

    def _report_churn(self, now: float, window: float, threshold: int) -> None:
        """``domain_churn`` alerts for the clients the detector reported past ``churn_domains``."""
        churned = self.detector.churned
        for namespace, client, owner, qname, qtype, count in churned:
            self._alerts.domain_churn(
                now, namespace, client, qname, qtype,
                {"never_seen_domains": count, "window_seconds": window, "churn_domains": threshold,
                 "counted_as": owner},
            )
        churned.clear()

    def on_reply(self, query: Query, _answer: UpstreamAnswer, info: ReplyInfo, /) -> Reply | None:
        """Feed the answer's rcode to the detector's windows (NXDOMAIN ratios, answered names)."""
        self.observe_rcode(query, info.rcode)
        return None

    def observe_rcode(self, query: Query, rcode: int) -> None:
        """An answer's rcode, live or read from a capture in replay."""
        view = query.view
        assert view is not None
        if view.detection != "off":
            q = query.question
            self.detector.observe_response(view.name, query.owner, q.qname, rcode, query.now, view.thresholds)

    def _blocked(self, query: Query, ns: Namespace) -> Reply:
        reply: Reply = self._deny(query, ns)
        reply.action = "quarantined"
        return reply

    @staticmethod
    def alert(query: Query, ns: Namespace, verdict: Verdict, action: str) -> Alert:
        q = query.question
        text = verdict.evidence.get("qname")  # the detector's text of this very name
        return Alert(
            ts=query.now,
            kind="tunnel",
            severity=verdict.severity,
            namespace=ns.name,
            client=query.client,
            qname=text if isinstance(text, str) else name_to_text(q.qname),
            qtype=qtype_text(q.qtype),
            domain=verdict.domain,
            reasons=list(verdict.reasons),
            action=action,
            evidence=dict(verdict.evidence),
        )
