"""The detector: name features + pair windows -> Verdict.

Decisions come from window evidence per (namespace, domain) and per (client,
domain), at a short and a long scale. Features of a single name (one long or
random-looking label) only add reasons and severity to a verdict the windows
already support: alone they never reach ``alert_points``.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Final

from .features import FeatureCache, NameFeatures, case_bits
from .names import DEFAULT_EXEMPTIONS, domain_text, name_to_text, wire_of
from .settings import DetectorSettings
from .spread import (
    all_fresh,
    concentration,
    effective_clients,
    first_name_charge,
    note_client,
    note_recent_client,
    slow_drip,
)
from .state import State
from .windows import Field, Geometry, PairWindows, Pending, Window

__all__ = ["SEVERITIES", "Detector", "Verdict"]

SEVERITIES: Final = ("info", "warning", "high", "critical")
_NX: Final = 3  # RCODE NXDOMAIN
MAX_CHURN: Final = 1024  # domain_churn reports waiting for the caller, at most
MAX_CHURN_OWNERS: Final = 100_000  # clients whose never-seen domains are counted; the least recent go first
_RARE_DOMAIN: Final = ((Field.NEW_NAMES, 1),)  # a client's first name under a domain new to the namespace
_ANSWER: Final = ((Field.RESPONSES, 1),)  # the deltas of an answer, and of an NXDOMAIN one
_NX_ANSWER: Final = ((Field.RESPONSES, 1), (Field.NXDOMAIN, 1))
# (field, 1) for every counter, made once: a query's deltas are picked from these, not built.
_ONE: Final[tuple[tuple[int, int], ...]] = tuple([(i, 1) for i in range(Field.COUNT)])


@dataclass(frozen=True, slots=True, init=False)
class Verdict:
    """Why a domain looks like a tunnel, and how sure the detector is.

    ``alert`` is False when every reason was already alerted for this
    (namespace, domain) within ``suppress_seconds`` and severity did not grow.
    ``repeat`` is True when the verdict was not scored again: the pair was
    flagged within the last short window (or is quarantined) and the query
    cost only a counter.
    """

    domain: str
    reasons: tuple[str, ...]
    severity: str
    evidence: dict[str, object] = field(hash=False, compare=False)
    alert: bool = True
    repeat: bool = False  # a decision taken earlier, returned again without scoring

    def __init__(
        self, domain: str, reasons: tuple[str, ...], severity: str, evidence: dict[str, object],
        alert: bool = True, repeat: bool = False,
    ) -> None:
        object.__setattr__(self, "domain", domain)
        object.__setattr__(self, "reasons", reasons)
        object.__setattr__(self, "severity", severity)
        object.__setattr__(self, "evidence", evidence)
        object.__setattr__(self, "alert", alert)
        object.__setattr__(self, "repeat", repeat)


class _Limits:
    """The thresholds the query path reads, copied from a DetectorSettings once.

    DetectorSettings stays a Python class (heuristics/settings.py), so each of its
    attributes costs a generic lookup from compiled code; these are native fields.
    """

    __slots__ = (
        "alert_points", "churn_domains", "client_budget_long_bytes", "client_budget_short_bytes", "concentration",
        "data_qtype_names_long", "data_qtype_names_short", "encoded_label_min", "encoded_names_long",
        "encoded_names_short", "entropy_ratio", "fresh_ratio", "long_label", "long_label_names",
        "long_window_seconds", "lowest_budget_bytes", "namespace_budget_long_bytes",
        "namespace_budget_short_bytes", "non_ldh_names",
        "nxdomain_min_responses", "nxdomain_ratio", "rare_domains_per_hour", "rare_qtype_names",
        "short_window_seconds", "slow_budget_bytes", "slow_min_buckets", "spread_clients",
        "spread_free_bytes", "spread_fresh_ratio", "spread_skip_names", "suppress_seconds", "unique_short",
    )

    short_window_seconds: float
    long_window_seconds: float
    client_budget_short_bytes: int
    client_budget_long_bytes: int
    namespace_budget_short_bytes: int
    namespace_budget_long_bytes: int
    slow_budget_bytes: int
    slow_min_buckets: int
    fresh_ratio: float
    spread_clients: int
    concentration: float
    spread_fresh_ratio: float
    spread_skip_names: int
    spread_free_bytes: int
    encoded_label_min: int
    entropy_ratio: float
    long_label: int
    encoded_names_short: int
    encoded_names_long: int
    non_ldh_names: int
    long_label_names: int
    unique_short: int
    rare_qtype_names: int
    data_qtype_names_short: int
    data_qtype_names_long: int
    nxdomain_ratio: float
    nxdomain_min_responses: int
    rare_domains_per_hour: int
    churn_domains: int
    alert_points: int
    suppress_seconds: float
    lowest_budget_bytes: int  # the lowest of the five budgets: any window's first bar

    def __init__(self, s: DetectorSettings) -> None:
        self.short_window_seconds = float(s.short_window_seconds)
        self.long_window_seconds = float(s.long_window_seconds)
        self.client_budget_short_bytes = int(s.client_budget_short_bytes)
        self.client_budget_long_bytes = int(s.client_budget_long_bytes)
        self.namespace_budget_short_bytes = int(s.namespace_budget_short_bytes)
        self.namespace_budget_long_bytes = int(s.namespace_budget_long_bytes)
        self.slow_budget_bytes = int(s.slow_budget_bytes)
        self.slow_min_buckets = int(s.slow_min_buckets)
        self.fresh_ratio = float(s.fresh_ratio)
        self.spread_clients = int(s.spread_clients)
        self.concentration = float(s.concentration)
        self.spread_fresh_ratio = float(s.spread_fresh_ratio)
        self.spread_skip_names = int(s.spread_skip_names)
        self.spread_free_bytes = int(s.spread_free_bytes)
        self.encoded_label_min = int(s.encoded_label_min)
        self.entropy_ratio = float(s.entropy_ratio)
        self.long_label = int(s.long_label)
        self.encoded_names_short = int(s.encoded_names_short)
        self.encoded_names_long = int(s.encoded_names_long)
        self.non_ldh_names = int(s.non_ldh_names)
        self.long_label_names = int(s.long_label_names)
        self.unique_short = int(s.unique_short)
        self.rare_qtype_names = int(s.rare_qtype_names)
        self.data_qtype_names_short = int(s.data_qtype_names_short)
        self.data_qtype_names_long = int(s.data_qtype_names_long)
        self.nxdomain_ratio = float(s.nxdomain_ratio)
        self.nxdomain_min_responses = int(s.nxdomain_min_responses)
        self.rare_domains_per_hour = int(s.rare_domains_per_hour)
        self.churn_domains = int(s.churn_domains)
        self.alert_points = int(s.alert_points)
        self.suppress_seconds = float(s.suppress_seconds)
        self.lowest_budget_bytes = min(
            self.client_budget_short_bytes, self.client_budget_long_bytes, self.namespace_budget_short_bytes,
            self.namespace_budget_long_bytes, self.slow_budget_bytes,
        )


@dataclass(slots=True)
class _Derived:
    """Per-settings values computed once (exemption set, window geometry)."""

    settings: DetectorSettings
    limits: _Limits
    exempt: frozenset[bytes]  # wire names: matched label-wise against a name's suffixes
    geometry: Geometry
    rare_qtypes: frozenset[int]
    data_qtypes: frozenset[int]


@dataclass(slots=True, init=False)
class _Decision:
    """A (namespace, domain) the detector has made up its mind about, until ``until``."""

    until: float
    verdict: Verdict
    quarantine: bool
    queries: int = 0  # queries that cost only this counter

    def __init__(self, until: float, verdict: Verdict, quarantine: bool, queries: int = 0) -> None:
        self.until = until
        self.verdict = verdict
        self.quarantine = quarantine
        self.queries = queries


@dataclass(slots=True, init=False)
class _Score:
    points: int
    reasons: list[str]
    scope: str
    scale: str
    window: Window
    seconds: float
    budget: int = 0  # the information budget that was crossed (0: none)
    rule: str = ""  # which budget: "window", "slow" (spread over time)
    share: float | None = None  # namespace scope: share of the largest clients
    fresh: bool = False  # namespace scope: counted because nearly all its names are fresh
    clients: float | None = None  # namespace_first_names scope: clients' worth carrying it

    def __init__(
        self, points: int, reasons: list[str], scope: str, scale: str, window: Window, seconds: float,
        budget: int = 0, rule: str = "", share: float | None = None, fresh: bool = False,
        clients: float | None = None,
    ) -> None:
        self.points = points
        self.reasons = reasons
        self.scope = scope
        self.scale = scale
        self.window = window
        self.seconds = seconds
        self.budget = budget
        self.rule = rule
        self.share = share
        self.fresh = fresh
        self.clients = clients


class Detector:
    """Scores queries against per-pair windows held in a :class:`State`.

    ``observe`` is synchronous and cheap (memoised features, incremental window
    totals); shared backends sync in the background.
    """

    def __init__(
        self,
        state: State,
        max_names: int = 65536,
        max_alerts: int = 100_000,
        pending_bytes: int = 1024,
        pending_entries: int = 32,
    ) -> None:
        self.state = state
        self.features = FeatureCache(max_names)
        self._derived: dict[int, _Derived] = {}
        self._alerted: dict[tuple[str, str, str], tuple[float, int]] = {}
        self.max_alerts = max_alerts
        self.observed = 0
        self.exempted = 0
        self.malformed = 0
        # Decided (namespace, domain) pairs: namespace -> wire domain -> decision.
        self._decisions: dict[str, dict[bytes, _Decision]] = {}
        self._decision_count = 0
        self._skipped: dict[tuple[str, bytes], int] = {}  # queries of expired decisions, per pair
        self.max_decisions = max_alerts
        self.decided_queries = 0  # queries answered from a decision (a counter each)
        # A pair's deferred names are estimated at the latest when they hold this
        # many subdomain octets or entries: bounded memory per pair, same results.
        self.pending_bytes = pending_bytes
        self.pending_entries = pending_entries
        self.deferred = 0  # queries whose estimate waited (and maybe never came)
        self.promotions = 0
        self.estimated = 0  # queries that paid for the estimate
        # Clients past ``churn_domains`` never-seen domains in the long window, for the caller
        # to alert (namespace, client, whom it was counted as, the name that crossed, its
        # qtype, the count): once per owner and ``suppress_seconds``, at most MAX_CHURN waiting.
        self.churned: list[tuple[str, str, str, bytes, int, int]] = []
        self._churn_noted: dict[tuple[str, str], float] = {}
        # (namespace, owner) -> its never-seen domains over the long window. Kept apart from
        # the state's pairs: a flood of pairs must not evict the very count that reports it.
        self._churn: dict[tuple[str, str], Window] = {}
        # When a list, the client of every never-seen name estimated is appended to it:
        # the live server charges that work to the client's rate-limit bucket.
        self.estimated_for: list[str] | None = None


    # --- public API -------------------------------------------------------------
    def observe(
        self,
        namespace: str,
        client: str,
        qname: bytes,
        qtype: int,
        now: float,
        settings: DetectorSettings,
        raw: bytes | None = None,
        owner: str = "",
    ) -> Verdict | None:
        """Account one query; return a Verdict when window evidence reaches ``alert_points``.

        ``raw`` is the name as the client sent it when its letter case differs
        from ``qname`` (lowercased): mixed-case labels carry a bit per letter,
        which a never-seen name is charged on top of its text (features.case_bits).
        ``owner`` is who the client is for ``churn_domains`` (``pod:<ns>/<name>``
        for a known pod, all its addresses together); empty: the client's address,
        an IPv6 one counted by its /64.

        Three tiers, cheapest first: a (namespace, domain) already decided
        (flagged within the last short window, or quarantined) costs a counter and
        returns the decision again (``repeat=True``, ``alert=False``); a name under
        a pair that cheap counters say cannot reach a verdict yet is counted and
        left for later; only a promoted pair pays for the estimate and a score.
        """
        self.observed += 1
        derived = self._settings(settings)
        lim = derived.limits
        try:
            feats = self.features.get(qname)
        except ValueError:
            self.malformed += 1
            return None
        if self._exempt(feats, derived):
            self.exempted += 1
            return None
        decided = self._decided(namespace, feats, now)
        if decided is not None:
            decided.queries += 1
            self.decided_queries += 1
            return decided.verdict
        state = self.state
        if now > state.clock:
            state.clock = now  # whether a pair is still live when it comes up for eviction
        tag = feats.tag(namespace)
        geometry = derived.geometry
        ns_pair = state.pair(tag, geometry)
        client_pair = state.pair(feats.client_key(tag, client), geometry)
        rare = state.new_domain(namespace, feats.domain)
        client_rare = state.pair(f"{namespace}||{client}", geometry, unique=False)

        # Tier 1: counters any query can pay for.
        deltas: list[tuple[int, int]] = [_ONE[Field.QUERIES]]
        new = state.first_sight((namespace, feats.digest))
        spread = False
        free = 0  # what the name carries free in the all-domain meters
        first = False  # one of the domain's first names (spread_skip_names)
        case = 0
        if new:
            deltas.append(_ONE[Field.NEW_NAMES])
            if raw is not None:
                case = case_bits(raw, feats)
            # As they were before this query, every replica's names included.
            ns_new = ns_pair.long.total(Field.NEW_NAMES)
            ns_queries = ns_pair.long.total(Field.QUERIES)
            if (
                # A rare domain: few clients, or a fleet whose names are all asked once
                # (spread.all_fresh: telemetry re-asks its hosts and asks A and AAAA).
                (note_client(ns_pair, client) <= lim.spread_clients
                 or ns_new >= lim.spread_fresh_ratio * ns_queries)
                # names of a real service are re-asked; a channel's never are
                and ns_new >= lim.fresh_ratio * ns_queries
            ):
                if ns_new >= lim.spread_skip_names:
                    spread = True
                else:
                    # One of the domain's first names: charged what it carries beyond
                    # spread_free_bytes (spread.first_name_charge), so that a rotation
                    # over domains with a few names each is metered; a site's www, cdn,
                    # _dmarc or DKIM selector carries less and costs nothing here.
                    free = lim.spread_free_bytes
                    first = True
                    spread = first_name_charge(feats, case, free) > 0
            if feats.non_ldh:
                deltas.append(_ONE[Field.NON_LDH])
            if feats.max_label >= lim.long_label:
                deltas.append(_ONE[Field.LONG_LABEL])
        # Rare and data qtypes count distinct (name, qtype): retries of one name don't.
        if (qtype in derived.rare_qtypes or qtype in derived.data_qtypes) and state.first_sight(
            (namespace, feats.digest + qtype.to_bytes(2, "big"))
        ):
            kind = Field.RARE_QTYPE if qtype in derived.rare_qtypes else Field.DATA_QTYPE
            deltas.append(_ONE[kind])
        frozen = tuple(deltas)
        _apply(ns_pair, now, frozen)
        _apply(client_pair, now, frozen)
        shares = state.shares
        if shares:
            state.record(tag, "n", ns_pair, frozen, None)
            state.record(tag, "c|" + client, client_pair, frozen, None)
        if len(frozen) == 1:
            # A name already seen, with an ordinary type, carries no new information:
            # count it and stop. Scores change only with new names, rare types and
            # responses, and the next such query re-scores the pair.
            return None
        if rare:
            _apply(client_rare, now, _RARE_DOMAIN)
            if shares:
                # Shared like the pairs, so that a client spread over replicas is counted once.
                state.record(f"{namespace}||rare", "c|" + client, client_rare, _RARE_DOMAIN, None)
            if lim.churn_domains:
                self._count_churn(namespace, owner or churn_owner(client), client, qname, qtype, now, lim, geometry)
        else:
            client_rare.long.advance(now)
            client_rare.short.advance(now)
        if shares:
            note = getattr(state, "note_time", None)
            if note is not None:
                note(now)

        # Tier 2: the information estimate, encoding test and HyperLogLog, now for a
        # promoted pair, deferred (in order, exactly) for the others.
        entry = Pending(
            qname, client, (ns_pair.short.head, ns_pair.long.head, client_pair.short.head, client_pair.long.head), new,
            case,
        )
        if ns_pair.promoted:
            self._estimate(tag, ns_pair, client_pair, entry, feats, derived)
        else:
            ns_pair.pending.append(entry)
            if new:
                ns_pair.pending_bytes += len(feats.subdomain)
                ns_pair.pending_names += 1
            if (
                # A rare domain past its first few fresh names is evidence enough.
                not spread
                and ns_pair.pending_bytes < self.pending_bytes
                and len(ns_pair.pending) < self.pending_entries
                and not self._could_alert(ns_pair, client_pair, client_rare, lim)
            ):
                self.deferred += 1
                return None
            self._promote(tag, ns_pair, client_pair, client, derived)
        spread_pairs = (
            self._spread(namespace, client, feats, case, free, first, now, derived.geometry) if spread else []
        )

        best = self._score(ns_pair, client_pair, client_rare, lim, now, spread_pairs, tag, namespace)
        if best is None:
            return None
        verdict = self._verdict(namespace, client, qname, qtype, feats, best, lim, now)
        if verdict.alert:
            skipped = self._skipped.pop((namespace, feats.domain_wire), 0)
            if skipped:
                verdict.evidence["decided_queries"] = skipped
        # Decided for one short window: the queries in it cost a counter; then the pair
        # is scored again, so a new reason or a higher severity is alerted within it.
        hold = min(lim.suppress_seconds, lim.short_window_seconds)
        if hold > 0:
            self._decide(namespace, feats.domain_wire, now + hold, verdict, False)
        return verdict

    def observe_response(
        self,
        namespace: str,
        client: str,
        qname: bytes,
        rcode: int,
        now: float,
        settings: DetectorSettings,
    ) -> None:
        """Account one response (for the NXDOMAIN ratio)."""
        derived = self._settings(settings)
        # Features depend on the name alone: the query's, still cached, serve without
        # marking them used again.
        feats = self.features.peek(qname)
        if feats is None:
            try:
                feats = self.features.get(qname)
            except ValueError:
                return
        if self._exempt(feats, derived):
            return
        tag = feats.tag(namespace)
        deltas = _NX_ANSWER if rcode == _NX else _ANSWER
        state = self.state
        ns_pair = state.pair(tag, derived.geometry)
        client_pair = state.pair(feats.client_key(tag, client), derived.geometry)
        _apply(ns_pair, now, deltas)
        _apply(client_pair, now, deltas)
        if state.shares:
            state.record(tag, "n", ns_pair, deltas, None)
            state.record(tag, "c|" + client, client_pair, deltas, None)
        if rcode == _NX:
            self._reopen_on_nxdomain(namespace, feats, ns_pair, client_pair, derived.limits)

    def _reopen_on_nxdomain(
        self, namespace: str, feats: NameFeatures, ns_pair: PairWindows, client_pair: PairWindows,
        s: _Limits,
    ) -> None:
        """A flag decided without ``nxdomain_ratio`` ends when the answers now give it:
        the next query is scored, and the new reason alerted."""
        decisions = self._decisions.get(namespace)
        decided = decisions.get(feats.domain_wire) if decisions else None
        if decided is None or decided.quarantine or "nxdomain_ratio" in decided.verdict.reasons:
            return
        for pair in (client_pair, ns_pair):
            for window in (pair.short, pair.long):
                responses = window.total(Field.RESPONSES)
                nxdomains = window.total(Field.NXDOMAIN)
                if responses >= s.nxdomain_min_responses and nxdomains >= s.nxdomain_ratio * responses:
                    decided.until = 0.0  # expired: _decided() reports its counter and drops it
                    return

    def quarantined(self, namespace: str, domain: str, now: float) -> bool:
        """True while ``domain`` is quarantined for ``namespace`` (any replica's decision)."""
        return self.state.quarantine_until(namespace, domain) > now

    def quarantined_name(self, namespace: str, qname: bytes, now: float) -> bool:
        """True while ``qname``'s registrable domain or any ancestor of it is quarantined.

        Walked on wire labels: a quarantine of D covers every name below D,
        whatever octets (a '.', NUL, bytes >= 0x80) its labels hold. A quarantine
        decided here (or by another replica) is remembered locally, so the next
        query under it costs a few dictionary lookups.
        """
        try:
            feats = self.features.get(qname)
        except ValueError:
            return False
        decided = self._decided(namespace, feats, now)
        if decided is not None and decided.quarantine:
            decided.queries += 1
            self.decided_queries += 1
            return True
        until = self.state.quarantine_until
        for domain in feats.ancestors():
            end = until(namespace, domain_text(domain))
            if end > now:
                self._decide(namespace, domain, end, None, True)
                return True
        return False

    def quarantine(self, namespace: str, domain: str, until: float) -> None:
        """Quarantine ``domain`` for ``namespace`` until ``until`` (epoch seconds)."""
        self.state.set_quarantine(namespace, domain, until)
        try:
            wire = wire_of(domain)
        except Exception:  # noqa: BLE001 - dnspython raises several types; such a text covers no query
            return
        self._decide(namespace, wire, until, None, True)

    def stats(self) -> dict[str, int]:
        """Counters for metrics: how many queries each tier handled."""
        return {
            "observed": self.observed,
            "exempted": self.exempted,
            "malformed": self.malformed,
            "decided_queries": self.decided_queries,
            "deferred": self.deferred,
            "promotions": self.promotions,
            "estimated": self.estimated,
            "decisions": self._decision_count,
        }

    # --- internals ------------------------------------------------------------------
    def _settings(self, settings: DetectorSettings) -> _Derived:
        derived = self._derived.get(id(settings))
        if derived is not None and derived.settings is settings:
            return derived
        texts = set(settings.exempt) | set(settings.cluster_domains)
        if settings.default_exemptions:
            texts |= DEFAULT_EXEMPTIONS
        exempt = {wire_of(text) for text in texts}
        derived = _Derived(
            settings=settings,
            limits=_Limits(settings),
            exempt=frozenset(exempt),
            geometry=Geometry(
                settings.short_window_seconds,
                settings.short_buckets,
                settings.long_window_seconds,
                settings.long_buckets,
                settings.compression_context_bytes,
            ),
            rare_qtypes=frozenset(settings.rare_qtypes),
            data_qtypes=frozenset(settings.data_qtypes) - frozenset(settings.rare_qtypes),
        )
        if len(self._derived) > 256:
            self._derived.clear()
        self._derived[id(settings)] = derived
        return derived

    @staticmethod
    def _exempt(feats: NameFeatures, derived: _Derived) -> bool:
        """Not scored: a well-formed reverse lookup (not any name under ``arpa``: one
        with a payload in it is a channel like any other), or a name at or below an
        exempt domain."""
        if feats.reverse:
            return True
        exempt = derived.exempt
        return any(suffix in exempt for suffix in feats.suffixes)

    def _decided(self, namespace: str, feats: NameFeatures, now: float) -> _Decision | None:
        """The live decision on the name's registrable domain, or a quarantine of an ancestor.

        A flag is about one registrable domain (``x.github.io`` is not ``y.github.io``);
        a quarantine of D covers every name below D.
        """
        decisions = self._decisions.get(namespace)
        if not decisions:
            return None
        own = feats.domain_wire
        for domain in feats.ancestors():
            found = decisions.get(domain)
            if found is not None and (found.quarantine or domain == own):
                if found.until > now:
                    return found
                del decisions[domain]
                self._decision_count -= 1
                if found.queries:
                    # Reported with the pair's next alert, so the gap in its figures is visible.
                    skipped = self._skipped
                    if len(skipped) >= self.max_decisions:
                        skipped.clear()
                    key = (namespace, domain)
                    skipped[key] = skipped.get(key, 0) + found.queries
        return None

    def _decide(
        self, namespace: str, domain: bytes, until: float, verdict: Verdict | None, quarantine: bool
    ) -> None:
        decisions = self._decisions.setdefault(namespace, {})
        old = decisions.pop(domain, None)
        if old is None:
            self._decision_count += 1
        else:
            # A flag never shortens a quarantine; a quarantine replaces a flag's hold, so it
            # ends when quarantine_seconds say even when that is shorter than the hold, and
            # the pair is scored again from its next query.
            until = max(until, old.until) if old.quarantine else until
            quarantine = quarantine or old.quarantine
            verdict = verdict or old.verdict
        if verdict is None:
            text = domain_text(domain)
            verdict = Verdict(text, ("quarantine",), "warning", {}, False, True)
        elif not verdict.repeat:
            verdict = Verdict(verdict.domain, verdict.reasons, verdict.severity, {}, False, True)
        decisions[domain] = _Decision(until, verdict, quarantine)
        if self._decision_count > self.max_decisions:
            self._forget_decisions()

    def _forget_decisions(self) -> None:
        # Oldest first (dicts keep insertion order); a forgotten decision is only
        # a cheaper path lost: the windows and quarantines still decide.
        for decisions in self._decisions.values():
            for domain in list(decisions)[: max(1, len(decisions) // 4)]:
                del decisions[domain]
                self._decision_count -= 1

    def _count_churn(
        self, namespace: str, owner: str, client: str, qname: bytes, qtype: int, now: float, s: _Limits,
        geometry: Geometry,
    ) -> None:
        """Count one never-seen domain for ``owner``; report it past ``churn_domains``."""
        key = (namespace, owner)
        counts = self._churn
        window = counts.pop(key, None)  # popped and put back: the dict's order is least recent first
        if window is None:
            if len(counts) >= MAX_CHURN_OWNERS:
                for old in list(counts)[: len(counts) // 4]:
                    del counts[old]
            window = Window(geometry.long_seconds, geometry.long_buckets)
        counts[key] = window
        window.advance(now)
        window.add(Field.NEW_NAMES, 1)
        count = window.totals[Field.NEW_NAMES]
        if count >= s.churn_domains:
            self._note_churn(namespace, key[1], client, qname, qtype, count, now, s)

    def _note_churn(
        self, namespace: str, owner: str, client: str, qname: bytes, qtype: int, count: int, now: float,
        s: _Limits,
    ) -> None:
        """``owner`` asked ``count`` never-seen domains in the long window: each cost the detector
        a pair, and enough of them would push other pairs' evidence out (state.KEEP_INFO_BYTES
        slows that, it cannot stop it), so the flood is itself reported."""
        key = (namespace, owner)
        noted = self._churn_noted
        last = noted.get(key)
        if last is not None and now - last < s.suppress_seconds:
            return
        if len(noted) >= self.max_alerts:
            noted.clear()
        noted[key] = now
        if len(self.churned) < MAX_CHURN:
            self.churned.append((namespace, client, owner, qname, qtype, count))

    def _could_alert(
        self, ns_pair: PairWindows, client_pair: PairWindows, client_rare: PairWindows, s: _Limits
    ) -> bool:
        """Could the pair reach ``alert_points`` if its pending names were estimated?

        An upper bound from counters only: information <= estimated + pending
        subdomain octets (a charge never exceeds the text), budgets at their lowest
        (the slow-drip bar; the client-concentration test only takes points away), encoded names
        <= counted + pending new names, distinct names < ``unique_short`` while new
        names and new types stay under half of it. When this says no, so would
        :meth:`_score` after the estimate.
        """
        pending_bytes = ns_pair.pending_bytes
        pending_names = ns_pair.pending_names
        # First a bound over all four windows at once: the namespace pair's long window
        # holds every client's queries over a span that contains the short window, so
        # its counts bound the others'; with the loosest thresholds, most pairs stop here.
        win = ns_pair.long
        rare_types = win.total(Field.RARE_QTYPE)
        points = 0
        if win.total(Field.INFO) + pending_bytes >= s.lowest_budget_bytes:
            points += 4
        encoded_min = min(s.encoded_names_short, s.encoded_names_long)
        if rare_types >= s.rare_qtype_names:
            encoded_min = min(encoded_min, s.rare_qtype_names)
            points += 2
        elif win.total(Field.DATA_QTYPE) >= min(s.data_qtype_names_short, s.data_qtype_names_long):
            points += 1
        if win.total(Field.ENCODED) + pending_names >= encoded_min or win.total(Field.NON_LDH) >= s.non_ldh_names:
            points += 2
        if win.total(Field.LONG_LABEL) >= s.long_label_names:
            points += 1
        if win.total(Field.RESPONSES) >= s.nxdomain_min_responses:
            points += 1
        if win.total(Field.NEW_NAMES) + rare_types + win.total(Field.DATA_QTYPE) >= s.unique_short // 2:
            points += 2
        if not points or points + 1 < s.alert_points:  # +1: the rare_domains support point
            return False
        # Then each pair's two windows: the best of their bounds.
        best = _pair_bound(client_pair, s.client_budget_short_bytes, s.client_budget_long_bytes,
                           pending_bytes, pending_names, s)
        points = _pair_bound(ns_pair, s.namespace_budget_short_bytes, s.namespace_budget_long_bytes,
                             pending_bytes, pending_names, s)
        if points > best:
            best = points
        if best and client_rare.long.total(Field.NEW_NAMES) >= s.rare_domains_per_hour * (
            s.long_window_seconds / 3600.0
        ):
            best += 1
        return best >= s.alert_points

    def _promote(
        self, tag: str, ns_pair: PairWindows, client_pair: PairWindows, client: str, derived: _Derived
    ) -> None:
        """Estimate the pair's pending names in arrival order; from now on, at once."""
        ns_pair.promoted = True
        self.promotions += 1
        pending, ns_pair.pending = ns_pair.pending, []
        ns_pair.pending_bytes = ns_pair.pending_names = 0
        features = self.features
        for entry in pending:
            other = client_pair
            if entry.client != client:
                other = self.state.pair(f"{tag}|{entry.client}", derived.geometry)
            try:
                feats = features.get(entry.qname)
            except ValueError:  # pragma: no cover - it parsed when it was queued
                continue
            self._estimate(tag, ns_pair, other, entry, feats, derived)

    def _estimate(
        self,
        tag: str,
        ns_pair: PairWindows,
        client_pair: PairWindows,
        entry: Pending,
        feats: NameFeatures,
        derived: _Derived,
    ) -> None:
        """The expensive evidence of one query, into the buckets it was counted in."""
        self.estimated += 1
        s = derived.limits
        deltas: list[tuple[int, int]] = []
        member: bytes | None = None
        if entry.new:
            if self.estimated_for is not None:
                self.estimated_for.append(entry.client)
            member = feats.digest
            # Deflate against the domain's recent text, never more than the alphabet allows.
            sub = feats.subdomain
            bound = feats.content_bound(ns_pair.last_new)
            ns_pair.last_new = feats.sub_labels
            deltas.append((Field.INFO, min(ns_pair.estimator.charge(sub), bound) + (entry.case_bits + 7) // 8))
            if feats.encoded_shape(s.encoded_label_min, s.entropy_ratio):
                deltas.append(_ONE[Field.ENCODED])
        frozen = tuple(deltas)
        name_hash = feats.member
        ns_short, ns_long, c_short, c_long = entry.heads
        _apply_at(ns_pair, ns_short, ns_long, frozen, name_hash)
        _apply_at(client_pair, c_short, c_long, frozen, name_hash)
        state = self.state
        if state.shares and (frozen or member is not None):
            state.record(tag, "n", ns_pair, frozen, member)
            state.record(tag, "c|" + entry.client, client_pair, frozen, member)

    def _spread(
        self, namespace: str, client: str, feats: NameFeatures, case: int, free: int, first: bool,
        now: float, geometry: Geometry,
    ) -> list[PairWindows]:
        """Charge a rare domain's new name to the all-domain meters of the client and the
        namespace, each against its own recent text (rotating domains share no context),
        so that rotating over domains does not reset the meter. ``free``: bytes of the
        charge left out. A domain's ``first`` names are also charged to the namespace's
        first-names meter, which remembers the clients that sent them (the third pair
        returned)."""
        state = self.state
        shares = state.shares
        # The meters are shared through the state backend like the pairs (only their
        # counters: each replica prices names against its own recent text), so a
        # client whose queries the Service spreads over replicas fills one meter.
        tag = f"{namespace}||domains" if shares else ""
        client_all = state.pair(f"{namespace}||{client}|domains", geometry, unique=False)
        deltas = _meter_deltas(client_all, feats, case, free)
        _apply(client_all, now, deltas)
        if shares:
            state.record(tag, "c|" + client, client_all, deltas, None)
        namespace_all = state.pair(f"{namespace}||*|domains", geometry, unique=False)
        deltas = _meter_deltas(namespace_all, feats, case, free)
        _apply(namespace_all, now, deltas)
        if shares:
            state.record(tag, "n", namespace_all, deltas, None)
        if not first:
            return [client_all, namespace_all]
        # The charge the namespace meter just took, for a domain's first name: where a
        # rotation over domains puts everything it sends, and a fleet's first names
        # (www, _dmarc, DKIM selectors) nothing.
        first_names = state.pair(f"{namespace}||*|first", geometry, unique=False)
        note_recent_client(first_names, client)
        _apply(first_names, now, deltas)
        if shares:
            state.record(tag, "f", first_names, deltas, None)
        return [client_all, namespace_all, first_names]

    def _score(
        self,
        ns_pair: PairWindows,
        client_pair: PairWindows,
        client_rare: PairWindows,
        s: _Limits,
        _now: float,
        spread_pairs: list[PairWindows] | None = None,
        tag: str = "",
        namespace: str = "",
    ) -> _Score | None:
        best: _Score | None = None
        scopes: list[tuple[str, PairWindows, int, int]] = [
            ("client", client_pair, s.client_budget_short_bytes, s.client_budget_long_bytes),
            ("namespace", ns_pair, s.namespace_budget_short_bytes, s.namespace_budget_long_bytes),
        ]
        few: float | None = None
        if spread_pairs:
            client_all, namespace_all = spread_pairs[0], spread_pairs[1]
            scopes.append(
                ("client_domains", client_all, s.client_budget_short_bytes, s.client_budget_long_bytes)
            )
            scopes.append(
                ("namespace_domains", namespace_all, s.namespace_budget_short_bytes,
                 s.namespace_budget_long_bytes)
            )
            if len(spread_pairs) > 2:
                # The namespace's first-names meter, when few clients carry it, is judged like
                # one client's meter: a rotation split over them is one channel
                # (spread.effective_clients); over a fleet it is left to namespace_domains.
                first_all = spread_pairs[2]
                few = self._few_clients(first_all, namespace, s)
                if few is not None:
                    scopes.append(
                        ("namespace_first_names", first_all,
                         min(s.client_budget_short_bytes, s.namespace_budget_short_bytes),
                         min(s.client_budget_long_bytes, s.namespace_budget_long_bytes))
                    )
        share: float | None = None
        # Many clients' names all asked once (no re-asked names, one type a name): a channel
        # spread over a fleet, not telemetry (spread.all_fresh); the namespace budgets then
        # count whatever the concentration.
        many = len(ns_pair.clients) > s.spread_clients
        fresh = many and all_fresh(ns_pair.long, s.spread_fresh_ratio)
        for scope, pair, short_budget, long_budget in scopes:
            for long in range(2):  # the short window, then the long one (no tuple built per scope)
                if long:
                    scale, window, budget, encoded_min, data_min, seconds = (
                        "long", pair.long, long_budget, s.encoded_names_long, s.data_qtype_names_long,
                        s.long_window_seconds,
                    )
                else:
                    scale, window, budget, encoded_min, data_min, seconds = (
                        "short", pair.short, short_budget, s.encoded_names_short, s.data_qtype_names_short,
                        s.short_window_seconds,
                    )
                points = 0
                reasons: list[str] = []
                info = window.total(Field.INFO)
                crossed = 0
                rule = ""
                if info >= budget:
                    crossed, rule = budget, "window"
                elif (
                    scale == "long"
                    # Over many clients (or many clients' domains) a slow drip is what
                    # telemetry and CDN pools look like.
                    and scope != "namespace_domains"
                    # (typos and stale names from forty clients are fresh for hours too).
                    and (scope != "namespace" or not many)
                    and slow_drip(window, s.slow_budget_bytes, s.slow_min_buckets, s.fresh_ratio)
                ):
                    crossed, rule = s.slow_budget_bytes, "slow"
                if crossed and scope == "namespace" and not fresh:
                    # Many clients each sending a little (telemetry) is not a channel;
                    # a channel split over a few clients is.
                    if share is None:
                        share = self._concentration(ns_pair, tag, s)
                    if share < s.concentration:
                        crossed = 0
                if crossed:
                    points += 4 if info >= 4 * crossed else 3
                    reasons.append("info_budget")
                rare_types = window.total(Field.RARE_QTYPE)
                if rare_types >= s.rare_qtype_names:
                    # Encoded names asking for NULL/KEY/PRIVATE need less corroboration.
                    encoded_min = min(encoded_min, s.rare_qtype_names)
                if window.total(Field.ENCODED) >= encoded_min or window.total(Field.NON_LDH) >= s.non_ldh_names:
                    points += 2
                    reasons.append("encoding")
                if rare_types >= s.rare_qtype_names:
                    points += 2
                    reasons.append("qtype")
                elif window.total(Field.DATA_QTYPE) >= data_min:
                    points += 1
                    reasons.append("qtype")
                if window.total(Field.LONG_LABEL) >= s.long_label_names:
                    points += 1
                    reasons.append("label_length")
                responses = window.total(Field.RESPONSES)
                if (
                    responses >= s.nxdomain_min_responses
                    and window.total(Field.NXDOMAIN) >= s.nxdomain_ratio * responses
                ):
                    points += 1
                    reasons.append("nxdomain_ratio")
                if scale == "short" and window.total(Field.NEW_NAMES) >= s.unique_short // 2:
                    # The HLL union is only worth computing near the threshold.
                    unique = window.unique()
                    if unique >= s.unique_short:
                        points += 2 if unique >= 4 * s.unique_short else 1
                        reasons.append("unique_rate")
                if points == 0:
                    continue
                if best is None or points > best.points:
                    best = _Score(points, reasons, scope, scale, window, seconds, crossed, rule,
                                  share if scope == "namespace" else None, fresh and scope == "namespace",
                                  few if scope == "namespace_first_names" else None)
        if best is None:
            return None
        # Supporting evidence only: a client fanning out to many never-seen domains.
        if client_rare.long.total(Field.NEW_NAMES) >= s.rare_domains_per_hour * (
            s.long_window_seconds / 3600.0
        ):
            best.points += 1
            best.reasons.append("rare_domains")
        if best.points < s.alert_points:
            return None
        return best

    def _few_clients(self, meter: PairWindows, namespace: str, s: _Limits) -> float | None:
        """How many clients' worth carry the namespace's first-names meter, when at most
        ``spread_clients`` (None: more, or nothing the client budgets could flag yet).

        Read from the all-domain meters of the clients that charged it last, asked
        only once the meter holds what the lowest client budget needs (and kept as
        :meth:`_kept_reading` says).
        """
        info = meter.long.total(Field.INFO)
        if info < min(s.client_budget_short_bytes, s.client_budget_long_bytes, s.slow_budget_bytes):
            return None
        clients = self._kept_reading(meter, info)
        if clients is None:
            clients = effective_clients(self._clients_info(meter, f"{namespace}||", "|domains").values())
            meter.share = (meter.long.head, info, clients)
        return clients if 0 < clients <= s.spread_clients else None

    def _concentration(self, ns_pair: PairWindows, tag: str, s: _Limits) -> float:
        """Share of the namespace pair's information sent by its largest clients
        (kept as :meth:`_kept_reading` says)."""
        if len(ns_pair.clients) <= s.spread_clients:
            return 1.0
        info = ns_pair.long.totals[Field.INFO]
        share = self._kept_reading(ns_pair, info)
        if share is None:
            share = concentration(ns_pair, self._clients_info(ns_pair, f"{tag}|", ""), s.spread_clients)
            ns_pair.share = (ns_pair.long.head, info, share)
        return share

    @staticmethod
    def _kept_reading(pair: PairWindows, info: int) -> float | None:
        """What was last read from the client pairs behind ``pair`` (``pair.share``), while
        it holds: reading every client's pair costs, so a reading is kept until the
        pair's information (``info`` now) grew by an eighth or its long window moved on."""
        kept = pair.share
        if kept is not None and kept[0] == pair.long.head and info <= kept[1] * 1.125:
            return kept[2]
        return None

    def _clients_info(self, pair: PairWindows, prefix: str, suffix: str) -> dict[str, int]:
        """Long-window information of the pair ``prefix + client + suffix`` of each client
        ``pair`` lists (those whose pair still exists), in the list's order."""
        find = self.state.find
        info: dict[str, int] = {}
        for client in pair.clients:
            found = find(prefix + client + suffix)
            if found is not None:
                info[client] = found.long.total(Field.INFO)
        return info

    def _verdict(
        self,
        namespace: str,
        client: str,
        qname: bytes,
        qtype: int,
        feats: NameFeatures,
        best: _Score,
        s: _Limits,
        now: float,
    ) -> Verdict:
        reasons = best.reasons
        points = best.points
        shape = feats.encoded_shape(s.encoded_label_min, s.entropy_ratio)
        if shape is not None:
            reasons.append("entropy")
            points += 1
        if feats.max_label >= s.long_label and "label_length" not in reasons:
            reasons.append("label_length")
        severity = SEVERITIES[min(3, 1 + (points - s.alert_points) // 2)]
        reasons_t = tuple(sorted(set(reasons)))
        if not self._should_alert(namespace, feats.domain, reasons_t, severity, s, now):
            # Suppressed repeat: the caller needs the decision, not the figures.
            return Verdict(feats.domain, reasons_t, severity, {}, False)
        w = best.window
        responses = w.total(Field.RESPONSES)
        evidence: dict[str, object] = {
            "scope": best.scope,
            "client": client,
            "qname": name_to_text(qname),
            "qtype": qtype,
            "window": best.scale,
            "window_seconds": best.seconds,
            "points": points,
            "queries": w.total(Field.QUERIES),
            "new_names": w.total(Field.NEW_NAMES),
            "info_bytes": w.total(Field.INFO),
            "budget_bytes": best.budget or (
                s.namespace_budget_short_bytes if best.scope == "namespace" else
                s.client_budget_short_bytes
            ) if best.scale == "short" else best.budget or (
                s.namespace_budget_long_bytes if best.scope == "namespace" else
                s.client_budget_long_bytes
            ),
            "encoded_names": w.total(Field.ENCODED),
            "non_ldh_names": w.total(Field.NON_LDH),
            "long_label_names": w.total(Field.LONG_LABEL),
            "rare_qtype_names": w.total(Field.RARE_QTYPE),
            "data_qtype_names": w.total(Field.DATA_QTYPE),
            "responses": responses,
            "nxdomain_ratio": round(w.total(Field.NXDOMAIN) / responses, 3) if responses else None,
            "max_label": feats.max_label,
            "name_length": feats.total_length,
        }
        if best.scale == "short" and w.sketches is not None:
            evidence["unique_names"] = w.unique()
        if best.rule == "slow":
            evidence["budget_rule"] = "slow"
            evidence["active_buckets"] = sum(1 for row in w.counts.values() if row[Field.NEW_NAMES])
        if best.share is not None:
            evidence["top_clients_share"] = round(best.share, 3)
        if best.clients is not None:
            # The namespace's first-names meter, judged like one client's: few clients carry it.
            evidence["effective_clients"] = round(best.clients, 1)
        if best.fresh:
            # Counted whatever the concentration: the namespace pair's names are nearly all fresh.
            evidence["new_names_per_query"] = round(w.total(Field.NEW_NAMES) / max(1, w.total(Field.QUERIES)), 3)
        if shape is not None:
            evidence.update(
                alphabet=shape.alphabet,
                label_length=shape.length,
                entropy=round(shape.entropy, 3),
                expected_entropy=round(shape.expected, 3),
            )
        return Verdict(feats.domain, reasons_t, severity, evidence, True)

    def _should_alert(
        self,
        namespace: str,
        domain: str,
        reasons: tuple[str, ...],
        severity: str,
        s: _Limits,
        now: float,
    ) -> bool:
        level = SEVERITIES.index(severity)
        alerted = self._alerted
        fresh = False
        for reason in reasons:
            key = (namespace, domain, reason)
            last = alerted.get(key)
            if last is None or now - last[0] >= s.suppress_seconds or level > last[1]:
                fresh = True
        if fresh:
            for reason in reasons:
                alerted[(namespace, domain, reason)] = (now, level)
            if len(alerted) > self.max_alerts:
                # Oldest entries first (dicts keep insertion order).
                for key in list(alerted)[: len(alerted) // 4]:
                    del alerted[key]
        return fresh


def churn_owner(owner: str) -> str:
    """Whom a never-seen domain is counted against for ``churn_domains`` when the caller named
    no owner: a pod's key as it is, an IPv6 address by its /64 (a host may take any address
    of its /64, and would otherwise start a fresh count with each), anything else as it is."""
    return address_owner(owner, 64)


_OWNERS: dict[tuple[str, int], str] = {}
MAX_OWNERS_CACHED: Final = 65_536
_MAPPED: Final = b"\x00" * 10 + b"\xff\xff"  # ::ffff:0:0/96, IPv4-mapped


def address_owner(address: str, ipv6_prefix: int = 128) -> str:
    """The client an address belongs to: an IPv6 address by its network of ``ipv6_prefix``
    bits (``2001:db8:1:2::/64``; a link-local one keeps its scope), an IPv4-mapped one
    (``::ffff:10.0.0.5``) by its IPv4 address, anything else (an IPv4 address, a pod's key,
    an owner already) as it is. At 128 every address is its own client.

    A host given a whole IPv6 prefix (a routed /64, a delegated /80) can source from any
    address of it: counted per address it would be a new client with each, with a fresh
    rate-limit bucket, TCP share, quarantine and detector budget. Two or three
    microseconds when not cached (socket's own parser), a dict lookup when cached.
    """
    if ":" not in address or address.startswith("pod:") or "/" in address:
        return address
    if ipv6_prefix >= 128:
        if address.startswith("::ffff:") and "." in address:
            return address[7:]  # an IPv4 client seen through a dual-stack socket
        return address
    key = (address, ipv6_prefix)
    found = _OWNERS.get(key)
    if found is not None:
        return found
    text, percent, scope = address.partition("%")
    try:
        packed = socket.inet_pton(socket.AF_INET6, text)
    except OSError:
        return address
    if packed[:12] == _MAPPED:
        owner = socket.inet_ntop(socket.AF_INET, packed[12:])
    else:
        whole, bits = divmod(ipv6_prefix, 8)
        network = packed[:whole]
        if bits:
            network += bytes((packed[whole] & (0xFF << (8 - bits)) & 0xFF,))
        text = socket.inet_ntop(socket.AF_INET6, network + bytes(16 - len(network)))
        owner = f"{text}{percent}{scope}/{ipv6_prefix}"
    if len(_OWNERS) >= MAX_OWNERS_CACHED:
        _OWNERS.clear()  # a client cycling addresses costs a parse a query, never memory
    _OWNERS[key] = owner
    return owner


def _apply(pair: PairWindows, now: float, deltas: tuple[tuple[int, int], ...]) -> None:
    # Each window named, not a loop over (short, long): compiled, that loop builds a
    # tuple and an iterator for every pair of every query.
    short = pair.short
    short.advance(now)
    short.add_all(deltas)
    long = pair.long
    long.advance(now)
    long.add_all(deltas)


def _pair_bound(
    pair: PairWindows, short_budget: int, long_budget: int, pending_bytes: int, pending_names: int, s: _Limits,
) -> int:
    """The most points either window of ``pair`` could give (:func:`_bound`); the long
    window's bar is the lower of its budget and the slow-drip rule's."""
    short = _bound(pair.short, short_budget, s.encoded_names_short, s.data_qtype_names_short, True,
                   pending_bytes, pending_names, s)
    long = _bound(pair.long, min(long_budget, s.slow_budget_bytes), s.encoded_names_long,
                  s.data_qtype_names_long, False, pending_bytes, pending_names, s)
    return short if short > long else long


def _bound(
    window: Window, budget: int, encoded_min: int, data_min: int, short: bool, pending_bytes: int,
    pending_names: int, s: _Limits,
) -> int:
    """The most points one window could give once its pair's pending names are estimated
    (:meth:`Detector._could_alert`); ``budget`` is already the lowest bar of its rules."""
    points = 0
    info = window.total(Field.INFO) + pending_bytes
    if info >= budget:
        points += 4 if info >= 4 * budget else 3
    rare_types = window.total(Field.RARE_QTYPE)
    if rare_types >= s.rare_qtype_names:
        encoded_min = min(encoded_min, s.rare_qtype_names)
        points += 2
    elif window.total(Field.DATA_QTYPE) >= data_min:
        points += 1
    if (window.total(Field.ENCODED) + pending_names >= encoded_min
            or window.total(Field.NON_LDH) >= s.non_ldh_names):
        points += 2
    if window.total(Field.LONG_LABEL) >= s.long_label_names:
        points += 1
    responses = window.total(Field.RESPONSES)
    if responses >= s.nxdomain_min_responses and window.total(Field.NXDOMAIN) >= s.nxdomain_ratio * responses:
        points += 1
    if short and window.total(Field.NEW_NAMES) + rare_types + window.total(Field.DATA_QTYPE) >= s.unique_short // 2:
        points += 2
    return points


def _meter_deltas(
    pair: PairWindows, feats: NameFeatures, case: int, free: int
) -> tuple[tuple[int, int], ...]:
    """A never-seen name's counts in an all-domain meter: priced against the meter's own
    recent text (rotating domains share no context), less the ``free`` bytes."""
    cost = min(pair.estimator.charge(feats.subdomain), feats.content_bound(pair.last_new)) + (case + 7) // 8
    pair.last_new = feats.sub_labels
    return (_ONE[Field.QUERIES], _ONE[Field.NEW_NAMES], (Field.INFO, max(0, cost - free)))


def _apply_at(
    pair: PairWindows, short_head: int, long_head: int, deltas: tuple[tuple[int, int], ...], name_hash: int
) -> None:
    """:func:`_apply` into the buckets a query was counted in (see ``Pending.heads``), and its
    name into the short window's sketch."""
    short = pair.short
    long = pair.long
    for field_index, amount in deltas:
        short.add_at(short_head, field_index, amount)
        long.add_at(long_head, field_index, amount)
    short.add_name_at(short_head, name_hash)
