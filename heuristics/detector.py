"""The detector: name features + pair windows -> Verdict.

Decisions come from window evidence per (namespace, domain) and per (client,
domain), at a short and a long scale. Features of a single name (one long or
random-looking label) only add reasons and severity to a verdict the windows
already support: alone they never reach ``alert_points``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .features import FeatureCache, NameFeatures
from .names import DEFAULT_EXEMPTIONS, name_to_text
from .settings import DetectorSettings
from .state import Geometry, State
from .windows import Field, PairWindows, Window

__all__ = ["Detector", "Verdict", "SEVERITIES"]

SEVERITIES = ("info", "warning", "high", "critical")
_NX = 3  # RCODE NXDOMAIN


@dataclass(frozen=True, slots=True)
class Verdict:
    """Why a domain looks like a tunnel, and how sure the detector is.

    ``alert`` is False when every reason was already alerted for this
    (namespace, domain) within ``suppress_seconds`` and severity did not grow.
    """

    domain: str
    reasons: tuple[str, ...]
    severity: str
    evidence: dict[str, object] = field(hash=False, compare=False)
    alert: bool = True


@dataclass(slots=True)
class _Derived:
    """Per-settings values computed once (exemption set, window geometry)."""

    settings: DetectorSettings
    exempt: frozenset[str]
    geometry: Geometry
    rare_qtypes: frozenset[int]
    data_qtypes: frozenset[int]


@dataclass(slots=True)
class _Score:
    points: int
    reasons: list[str]
    scope: str
    scale: str
    window: Window
    seconds: float


class Detector:
    """Scores queries against per-pair windows held in a :class:`State`.

    ``observe`` is synchronous and cheap (memoised features, incremental window
    totals); shared backends sync in the background.
    """

    def __init__(self, state: State, max_names: int = 65536, max_alerts: int = 100_000) -> None:
        self.state = state
        self.features = FeatureCache(max_names)
        self._derived: dict[int, _Derived] = {}
        self._alerted: dict[tuple[str, str, str], tuple[float, int]] = {}
        self.max_alerts = max_alerts
        self.observed = 0
        self.exempted = 0
        self.malformed = 0

    # --- public API -------------------------------------------------------------
    def observe(
        self,
        namespace: str,
        client: str,
        qname: bytes,
        qtype: int,
        now: float,
        settings: DetectorSettings,
    ) -> Verdict | None:
        """Account one query; return a Verdict when window evidence reaches ``alert_points``."""
        self.observed += 1
        derived = self._settings(settings)
        try:
            feats = self.features.get(qname)
        except ValueError:
            self.malformed += 1
            return None
        if self._exempt(feats, derived):
            self.exempted += 1
            return None
        state = self.state
        domain = feats.domain
        tag = f"{namespace}|{domain}"
        geometry = derived.geometry
        ns_pair = state.pair(tag, geometry)
        client_pair = state.pair(f"{tag}|{client}", geometry)
        rare = state.new_domain(namespace, domain)
        client_rare = state.pair(f"{namespace}||{client}", geometry, unique=False)

        deltas: list[tuple[int, int]] = [(Field.QUERIES, 1)]
        member: bytes | None = None
        if state.first_sight((namespace, feats.digest)):
            member = feats.digest
            deltas.append((Field.NEW_NAMES, 1))
            deltas.append((Field.INFO, ns_pair.estimator.charge(feats.subdomain)))
            if feats.encoded_shape(settings.encoded_label_min, settings.entropy_ratio):
                deltas.append((Field.ENCODED, 1))
            if feats.non_ldh:
                deltas.append((Field.NON_LDH, 1))
            if feats.max_label >= settings.long_label:
                deltas.append((Field.LONG_LABEL, 1))
        # Rare and data qtypes count distinct (name, qtype): retries of one name don't.
        if qtype in derived.rare_qtypes or qtype in derived.data_qtypes:
            if state.first_sight((namespace, feats.digest + qtype.to_bytes(2, "big"))):
                kind = Field.RARE_QTYPE if qtype in derived.rare_qtypes else Field.DATA_QTYPE
                deltas.append((kind, 1))
        frozen = tuple(deltas)
        if len(frozen) == 1:
            # A name already seen, with an ordinary type, carries no new information:
            # count it and stop. Scores change only with new names, rare types and
            # responses, and the next such query re-scores the pair.
            for pair_key, pair in ((tag + "|n", ns_pair), (tag + "|c|" + client, client_pair)):
                _apply(pair, now, frozen, None)
                state.record(tag, pair_key[len(tag) + 1 :], pair, frozen, None)
            return None
        name_hash = int.from_bytes(feats.digest, "little")
        for pair_key, pair in ((tag + "|n", ns_pair), (tag + "|c|" + client, client_pair)):
            _apply(pair, now, frozen, name_hash)
            state.record(tag, pair_key[len(tag) + 1 :], pair, frozen, member)
        client_rare.long.advance(now)
        client_rare.short.advance(now)
        if rare:
            client_rare.long.add(Field.NEW_NAMES)
        note = getattr(state, "note_time", None)
        if note is not None:
            note(now)

        best = self._score(ns_pair, client_pair, client_rare, settings, now)
        if best is None:
            return None
        return self._verdict(namespace, client, qname, qtype, feats, best, settings, now)

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
        try:
            feats = self.features.get(qname)
        except ValueError:
            return
        if self._exempt(feats, derived):
            return
        tag = f"{namespace}|{feats.domain}"
        deltas: tuple[tuple[int, int], ...] = ((Field.RESPONSES, 1),)
        if rcode == _NX:
            deltas = ((Field.RESPONSES, 1), (Field.NXDOMAIN, 1))
        state = self.state
        for pair_key, pair in (
            ("n", state.pair(tag, derived.geometry)),
            ("c|" + client, state.pair(f"{tag}|{client}", derived.geometry)),
        ):
            _apply(pair, now, deltas, None)
            state.record(tag, pair_key, pair, deltas, None)

    def quarantined(self, namespace: str, domain: str, now: float) -> bool:
        """True while ``domain`` is quarantined for ``namespace`` (any replica's decision)."""
        return self.state.quarantine_until(namespace, domain) > now

    def quarantine(self, namespace: str, domain: str, until: float) -> None:
        """Quarantine ``domain`` for ``namespace`` until ``until`` (epoch seconds)."""
        self.state.set_quarantine(namespace, domain, until)

    # --- internals ------------------------------------------------------------------
    def _settings(self, settings: DetectorSettings) -> _Derived:
        derived = self._derived.get(id(settings))
        if derived is not None and derived.settings is settings:
            return derived
        exempt = set(settings.exempt) | set(settings.cluster_domains) | {"arpa"}
        if settings.default_exemptions:
            exempt |= DEFAULT_EXEMPTIONS
        derived = _Derived(
            settings=settings,
            exempt=frozenset(exempt),
            geometry=(
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
        exempt = derived.exempt
        return any(suffix in exempt for suffix in feats.suffixes)

    def _score(
        self,
        ns_pair: PairWindows,
        client_pair: PairWindows,
        client_rare: PairWindows,
        s: DetectorSettings,
        now: float,
    ) -> _Score | None:
        best: _Score | None = None
        for scope, pair, short_budget, long_budget in (
            ("client", client_pair, s.client_budget_short_bytes, s.client_budget_long_bytes),
            ("namespace", ns_pair, s.namespace_budget_short_bytes, s.namespace_budget_long_bytes),
        ):
            for scale, window, budget, encoded_min, data_min, seconds in (
                ("short", pair.short, short_budget, s.encoded_names_short,
                 s.data_qtype_names_short, s.short_window_seconds),
                ("long", pair.long, long_budget, s.encoded_names_long,
                 s.data_qtype_names_long, s.long_window_seconds),
            ):
                points = 0
                reasons: list[str] = []
                total = window.total
                info = total(Field.INFO)
                if info >= budget:
                    points += 4 if info >= 4 * budget else 3
                    reasons.append("info_budget")
                rare_types = total(Field.RARE_QTYPE)
                if rare_types >= s.rare_qtype_names:
                    # Encoded names asking for NULL/KEY/PRIVATE need less corroboration.
                    encoded_min = min(encoded_min, s.rare_qtype_names)
                if total(Field.ENCODED) >= encoded_min or total(Field.NON_LDH) >= s.non_ldh_names:
                    points += 2
                    reasons.append("encoding")
                if rare_types >= s.rare_qtype_names:
                    points += 2
                    reasons.append("qtype")
                elif total(Field.DATA_QTYPE) >= data_min:
                    points += 1
                    reasons.append("qtype")
                if total(Field.LONG_LABEL) >= s.long_label_names:
                    points += 1
                    reasons.append("label_length")
                responses = total(Field.RESPONSES)
                if (
                    responses >= s.nxdomain_min_responses
                    and total(Field.NXDOMAIN) >= s.nxdomain_ratio * responses
                ):
                    points += 1
                    reasons.append("nxdomain_ratio")
                if scale == "short" and total(Field.NEW_NAMES) >= s.unique_short // 2:
                    # The HLL union is only worth computing near the threshold.
                    unique = window.unique()
                    if unique >= s.unique_short:
                        points += 2 if unique >= 4 * s.unique_short else 1
                        reasons.append("unique_rate")
                if points == 0:
                    continue
                if best is None or points > best.points:
                    best = _Score(points, reasons, scope, scale, window, seconds)
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

    def _verdict(
        self,
        namespace: str,
        client: str,
        qname: bytes,
        qtype: int,
        feats: NameFeatures,
        best: _Score,
        s: DetectorSettings,
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
        total = w.total
        responses = total(Field.RESPONSES)
        evidence: dict[str, object] = {
            "scope": best.scope,
            "client": client,
            "qname": name_to_text(qname),
            "qtype": qtype,
            "window": best.scale,
            "window_seconds": best.seconds,
            "points": points,
            "queries": total(Field.QUERIES),
            "new_names": total(Field.NEW_NAMES),
            "info_bytes": total(Field.INFO),
            "budget_bytes": (
                s.client_budget_short_bytes if best.scope == "client" else
                s.namespace_budget_short_bytes
            ) if best.scale == "short" else (
                s.client_budget_long_bytes if best.scope == "client" else
                s.namespace_budget_long_bytes
            ),
            "encoded_names": total(Field.ENCODED),
            "non_ldh_names": total(Field.NON_LDH),
            "long_label_names": total(Field.LONG_LABEL),
            "rare_qtype_names": total(Field.RARE_QTYPE),
            "data_qtype_names": total(Field.DATA_QTYPE),
            "responses": responses,
            "nxdomain_ratio": round(total(Field.NXDOMAIN) / responses, 3) if responses else None,
            "max_label": feats.max_label,
            "name_length": feats.total_length,
        }
        if best.scale == "short" and w.sketches is not None:
            evidence["unique_names"] = w.unique()
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
        s: DetectorSettings,
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


def _apply(
    pair: PairWindows, now: float, deltas: tuple[tuple[int, int], ...], name_hash: int | None
) -> None:
    for window in (pair.short, pair.long):
        window.advance(now)
        for field_index, amount in deltas:
            window.add(field_index, amount)
    if name_hash is not None:
        pair.short.add_name(name_hash)
