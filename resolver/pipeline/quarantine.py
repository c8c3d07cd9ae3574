"""The client quarantine stage: a workload that reaches for something undeclared is cut off.

For a namespace with ``on_undeclared: quarantine``, a client asking for a name
the namespace does not allow (no allow entry or RPZ PASSTHRU matches, or an
RPZ rule denies it) is quarantined: that query and every later one from the
client, for any name, get the namespace's deny action until the quarantine
ends. One ``critical`` alert of kind ``undeclared`` names the name that
triggered it. With ``on_undeclared: alert`` only the alert is raised.

What is quarantined is the workload: a client the identity stage named as a
pod is quarantined as that pod (key ``pod:<namespace>/<name>``), so every
address it has (IPv4 and IPv6 of a dual-stack pod) is cut off, and an address
the pod leaves behind is not; any other client is quarantined by its address,
an IPv6 one by its network of ``ipv6_client_prefix`` bits (``query.owner``).
A quarantine of the address is honoured for a pod too (one set before the pod
list arrived, while the CIDR rule identified it).

The quarantine is checked for every query of every namespace, so a quarantine
another replica set (shared through Redis) or one left from before a reload
still holds. It acts only in ``enforce`` mode; ``observe`` alerts
(``action: alerted``) and ``learn`` does neither.

Search-path expansions never trigger it: a stub resolver with ``ndots:5``
asks ``api.github.com.agents.svc.cluster.local`` before ``api.github.com``.
A name under one of the namespace's search domains (``on_undeclared.search``,
by default the detection's ``cluster_domains``) is one; so is an allowed name
followed by at most ``SEARCH_SUFFIX_LABELS`` more labels (a host search domain
such as ``corp.example``). Both are still denied by the policy stage as usual.
"""

from __future__ import annotations

from collections.abc import Callable

from heuristics import name_to_text, registrable_domain
from heuristics.client_quarantine import ClientQuarantine, ClientQuarantines
from heuristics.names import labels_of
from resolver.config import Namespace
from resolver.pipeline.alerts import Alert, AlertHub, qtype_text
from resolver.pipeline.policy import PolicyStage
from resolver.pipeline.query import Query, Reply
from resolver.pipeline.rpz import Action

SEARCH_SUFFIX_LABELS = 4
DENYING = frozenset({Action.NXDOMAIN, Action.NODATA, Action.DROP})


def _wire(labels: list[bytes]) -> bytes:
    return b"".join(bytes((len(label),)) + label for label in labels) + b"\x00"


class QuarantineStage:
    def __init__(self, book: ClientQuarantines, policy: PolicyStage, alerts: AlertHub,
                 deny: Callable[[Query, Namespace], Reply]) -> None:
        self.book = book
        self._policy = policy
        self._alerts = alerts
        self._deny = deny
        self._search: dict[str, tuple[bytes, ...]] = {}  # namespace -> search suffixes, wire form

    def resolve(self, query: Query) -> Reply | None:
        view = query.view
        assert view is not None
        ns = view.namespace
        owner = query.owner
        # A client is quarantined as a whole (query.owner): a pod with all its addresses, an
        # IPv6 host with its network: its other addresses must not get it out. The address's
        # own quarantine holds for a pod too (set before the pod list named it); a network's
        # does not, or one unnamed address would cut off every named pod of a node's /64.
        if len(self.book) and (
            self.book.until(view.name, owner) > query.now
            or (owner != query.client and self.book.until(view.name, query.client) > query.now)
        ):
            self.book.blocks += 1
            return self._blocked(query, ns)
        rule = view.on_undeclared
        if rule is None or view.mode == "learn" or not self.undeclared(ns, query.question.qname):
            return None
        enforce = view.mode == "enforce" and rule.action == "quarantine"
        q = query.question
        evidence: dict[str, object] = {"mode": view.mode, "on_undeclared": rule.action}
        if enforce:
            until = query.now + rule.duration
            self.book.set(ClientQuarantine(view.name, owner, until, query.now, name_to_text(q.qname)))
            if query.pod is None and owner != query.client:
                # Its network, and its address itself: once the pod watch names it (its owner
                # then its pod key), the address's quarantine still holds for it.
                self.book.set(ClientQuarantine(view.name, query.client, until, query.now, name_to_text(q.qname)))
            self.book.started += 1
            evidence.update(until=round(until, 3), duration=rule.duration, quarantined=owner)
        self._alerts.emit(Alert(
            ts=query.now, kind="undeclared", severity="critical", namespace=view.name, client=query.client,
            qname=name_to_text(q.qname), qtype=qtype_text(q.qtype),
            domain=query.domain or registrable_domain(q.qname), reasons=["undeclared"],
            action="quarantined" if enforce else "alerted", evidence=evidence,
        ))
        return self._blocked(query, ns) if enforce else None

    def undeclared(self, ns: Namespace, qname: bytes) -> bool:
        """True when the namespace does not allow ``qname`` and it is no search-path expansion."""
        rule = self._policy.decide(ns.name, qname)
        if rule is not None and rule.action not in DENYING:
            return False
        if qname == b"\x00":
            return False  # the root: priming, not egress
        for suffix in self._search_suffixes(ns):
            if qname.endswith(suffix) and (len(qname) == len(suffix) or self._label_boundary(qname, suffix)):
                return False
        try:
            labels = labels_of(qname)
        except ValueError:
            return True
        # An allowed stem (two labels at least) with a short suffix: a host search domain's try.
        for cut in range(max(2, len(labels) - SEARCH_SUFFIX_LABELS), len(labels)):
            if self._policy.allowed(ns.name, _wire(labels[:cut])):
                return False
        return True

    @staticmethod
    def _label_boundary(qname: bytes, suffix: bytes) -> bool:
        """``suffix`` starts at a label of ``qname`` (not inside one)."""
        start = len(qname) - len(suffix)
        i = 0
        while i < start:
            i += 1 + qname[i]
        return i == start

    def _search_suffixes(self, ns: Namespace) -> tuple[bytes, ...]:
        found = self._search.get(ns.name)
        if found is None:
            rule = ns.on_undeclared
            names = rule.search if rule is not None and rule.search is not None else tuple(
                getattr(ns.detection.thresholds, "cluster_domains", ()) or ()
            )
            found = tuple(_wire([label.encode().lower() for label in n.split(".") if label]) for n in names)
            self._search[ns.name] = found
        return found

    def _blocked(self, query: Query, ns: Namespace) -> Reply:
        reply = self._deny(query, ns)
        reply.action = "quarantined"
        return reply
