"""Detection that costs a counter once it has decided, and nothing expensive before it must.

The tiered detector (cheap counters first, the information estimate only for
pairs that could reach a verdict, a counter for decided pairs) must decide
exactly what the eager one decides: same alerts, same reasons, same figures.
"""

from __future__ import annotations

import base64
import random

from heuristics import Detector, DetectorSettings
from heuristics.state import MemoryState
from tests.benign_corpus import benign_day, rcode_for, wire

Event = tuple[float, str, bytes, int]


def tunnels(start: float) -> list[Event]:
    """A bulk base32 tunnel, a slow hex channel and a word channel, from three clients."""
    rng = random.Random(11)
    words = [f"w{w}" for w in ("apple", "river", "stone", "cloud", "tiger", "maple", "ocean", "piano")]
    out: list[Event] = []
    for i in range(300):
        chunk = base64.b32encode(rng.randbytes(25)).decode().rstrip("=").lower()
        out.append((start + 600 + i * 0.5, "10.66.0.1", wire(f"{chunk}.t.bulk-tunnel.example"), 16))
    for i in range(600):
        out.append((start + 30 * i, "10.66.0.2", wire(f"{rng.randbytes(8).hex()}.h.hexchan.example"), 1))
    for i in range(600):
        name = ".".join(rng.choice(words) + rng.choice(words) for _ in range(4))
        out.append((start + 20 * i, "10.66.0.3", wire(f"{name}.words-channel.example"), 1))
    return out


def feed(detector: Detector, events: list[Event], settings: DetectorSettings) -> list[tuple[int, str, tuple[str, ...], str, dict[str, object]]]:
    alerts = []
    for n, (ts, client, qname, qtype) in enumerate(events):
        verdict = detector.observe("default", client, qname, qtype, ts, settings)
        if verdict is not None and verdict.alert:
            alerts.append((n, verdict.domain, verdict.reasons, verdict.severity, verdict.evidence))
        detector.observe_response("default", client, qname, rcode_for(qname), ts, settings)
    return alerts


def test_tiers_decide_exactly_what_the_eager_detector_decides() -> None:
    start = 1_795_300_000.0
    events = sorted(
        [(ts, client, qname, qtype) for ts, client, qname, qtype in benign_day(queries=20_000, start=start)]
        + tunnels(start)
    )
    settings = DetectorSettings()
    eager = Detector(MemoryState(), pending_bytes=0)  # every pair promoted at its first name
    tiered = Detector(MemoryState())
    expected = feed(eager, events, settings)
    found = feed(tiered, events, settings)
    assert {a[1] for a in expected} >= {"bulk-tunnel.example", "hexchan.example", "words-channel.example"}
    assert found == expected
    assert tiered.estimated < eager.estimated
    assert tiered.deferred > 0
    assert tiered.promotions < eager.promotions


def test_benign_names_mostly_never_pay_for_the_estimate() -> None:
    events = sorted(benign_day(queries=10_000, start=1_795_300_000.0))
    settings = DetectorSettings()
    eager = Detector(MemoryState(), pending_bytes=0)
    tiered = Detector(MemoryState())
    assert feed(eager, events, settings) == feed(tiered, events, settings) == []
    assert tiered.estimated < eager.estimated / 2, (tiered.estimated, eager.estimated)
    assert tiered.promotions < eager.promotions / 10


def test_flagged_pair_is_a_counter_under_a_flood() -> None:
    detector = Detector(MemoryState())
    settings = DetectorSettings()
    rng = random.Random(2)
    for i in range(5_000):
        name = wire(f"{rng.getrandbits(80):x}.flood.evil.example")
        detector.observe("ns", f"10.0.0.{i % 4}", name, 1, 100.0 + i / 100, settings)
    assert detector.decided_queries > 4_800
    assert detector.estimated < 200  # the names before the verdict
    stats = detector.stats()
    assert stats["decided_queries"] == detector.decided_queries
    assert stats["decisions"] == 1


def test_quarantine_is_a_decision_for_every_name_below() -> None:
    detector = Detector(MemoryState())
    settings = DetectorSettings()
    detector.quarantine("ns", "evil.example", 1_000.0)
    before = detector.estimated
    for i in range(200):
        assert detector.quarantined_name("ns", wire(f"n{i}.x.evil.example"), 500.0)
        verdict = detector.observe("ns", "10.0.0.1", wire(f"m{i}.evil.example"), 1, 500.0, settings)
        assert verdict is not None
        assert verdict.repeat
        assert not verdict.alert
    assert detector.estimated == before
    assert detector.decided_queries == 400
    assert not detector.quarantined_name("ns", wire("n1.x.evil.example"), 1_000.0)  # expired


def test_shared_quarantine_from_another_replica_is_remembered_locally() -> None:
    state = MemoryState()
    detector = Detector(state)
    state.set_quarantine("ns", "evil.example", 1_000.0)  # as a Redis pull would
    assert detector.quarantined_name("ns", wire("a.evil.example"), 10.0)
    assert detector.quarantined_name("ns", wire("b.evil.example"), 10.0)
    assert detector.decided_queries == 1  # the second lookup was the local decision


def test_a_flag_covers_its_domain_only_a_quarantine_covers_descendants() -> None:
    detector = Detector(MemoryState())
    settings = DetectorSettings(client_budget_short_bytes=1)  # any new subdomain text flags
    flagged = detector.observe("ns", "10.0.0.1", wire("data12345.abc.github.io"), 1, 10.0, settings)
    assert flagged is not None
    assert flagged.domain == "abc.github.io"
    # github.io is a public suffix: its own name is its own domain; flag it, not its children.
    detector._decide("ns", wire("github.io"), 100.0, flagged, False)
    other = detector.observe("ns", "10.0.0.1", wire("data67890.other.github.io"), 1, 11.0, settings)
    assert other is not None
    assert not other.repeat
    assert other.domain == "other.github.io"
    detector.quarantine("ns", "github.io", 100.0)
    assert detector.quarantined_name("ns", wire("www.third.github.io"), 12.0)


def test_estimated_names_are_reported_per_client_for_the_rate_limit() -> None:
    """With ``estimated_for`` set, every never-seen name estimated names its own client,
    including deferred names of other clients estimated when their pair is promoted;
    a repeated name costs nothing; with it unset (replay), nothing is kept."""
    settings = DetectorSettings()
    rng = random.Random(5)
    detector = Detector(MemoryState())
    charged: list[str] = []
    detector.estimated_for = charged
    start = 1_795_300_000.0
    names = [wire(f"{rng.randbytes(12).hex()}.x.tunnel.example") for _ in range(200)]
    for i, qname in enumerate(names):
        detector.observe("default", f"10.0.0.{i % 2}", qname, 16, start + i * 0.1, settings)
    assert detector.estimated > 0
    assert len(charged) == detector.estimated  # each estimated (new) name once
    assert set(charged) == {"10.0.0.0", "10.0.0.1"}
    before = len(charged)
    detector.observe("default", "10.0.0.0", names[-1], 16, start + 30, settings)
    assert len(charged) == before
    detector.estimated_for = None
    detector.observe("default", "10.0.0.0", wire("fresh123456.x.tunnel.example"), 16, start + 31, settings)
    assert len(charged) == before
