"""A client that floods never-seen domains to make the detector forget its channel.

Every never-seen registrable domain costs the detector a pair or two. Before,
the least recently used pair simply went: a client asking enough never-seen
domains between two queries of its own channel pushed the channel's windows
out every time, and the channel was never scored on more than one query.
Caps are scaled down here (a few thousand pairs instead of 100,000) so that
the flood stays small; the rules do not depend on the cap.
"""

from __future__ import annotations

import base64
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from heuristics import Detector
from heuristics.names import wire_of
from heuristics.settings import DetectorSettings
from heuristics.state import KEEP_INFO_BYTES, KEEP_SCAN, MemoryState
from heuristics.windows import Field, Geometry

START = 1_700_000_000.0
GAP = 90.0  # seconds between two queries of the channel
CLIENT = "10.0.0.5"


def channel_name(rng: random.Random) -> bytes:
    """A base32 channel: three 16-character labels a query."""
    labels = [base64.b32encode(rng.randbytes(10)).decode().lower().rstrip("=") for _ in range(3)]
    return wire_of(".".join(labels) + ".exfil-target.net")


def run_channel(
    max_keys: int, flood_per_gap: int, flood_label: str = "", queries: int = 60, churn_domains: int = 20_000,
    flood_client: str = CLIENT, flood_namespace: str = "agents",
) -> tuple[int | None, Detector]:
    """Send the channel with ``flood_per_gap`` never-seen domains between two of its queries;
    the channel query that was first flagged (1-based), or None."""
    rng = random.Random(1)
    detector = Detector(MemoryState(max_keys=max_keys, max_names=4 * max_keys))
    thresholds = DetectorSettings.from_mapping({"churn_domains": churn_domains})
    now = START
    flooded = 0
    flagged: int | None = None
    for i in range(queries):
        name = channel_name(rng)
        verdict = detector.observe("agents", CLIENT, name, 16, now, thresholds)
        detector.observe_response("agents", CLIENT, name, 3, now + 0.01, thresholds)
        if flagged is None and verdict is not None and verdict.alert:
            flagged = i + 1
        for k in range(flood_per_gap):
            flooded += 1
            text = f"{flood_label}.f{flooded}x.com" if flood_label else f"f{flooded}x.com"
            detector.observe(flood_namespace, flood_client, wire_of(text), 1, now + GAP * (k + 1) / (flood_per_gap + 1),
                             thresholds)
        now += GAP
    return flagged, detector


def test_a_flood_of_short_never_seen_domains_does_not_make_the_detector_forget_a_channel() -> None:
    quiet, _ = run_channel(1000, 0)
    assert quiet is not None
    # 600 domains a gap: more than 1,000 pairs, so the channel's pairs came up for eviction every gap.
    flagged, detector = run_channel(1000, 600)
    stats = detector.state.stats()
    assert stats["pair_evictions"] > 30_000
    assert stats["pairs_spared"] > 0
    assert stats["pair_evictions_live"] == 0
    assert flagged == quiet  # the flood changed nothing: same query, same bytes


def test_a_flood_from_another_namespace_does_not_blind_this_one() -> None:
    quiet, _ = run_channel(1000, 0)
    flagged, _ = run_channel(1000, 600, flood_client="10.9.9.9", flood_namespace="elsewhere")
    assert flagged == quiet


def test_a_flood_that_carries_text_under_every_domain_is_reported_as_domain_churn() -> None:
    # Every flood domain carries more than KEEP_INFO_BYTES, so its pairs are spared like the
    # channel's and the oldest goes all the same: the channel is forgotten, and the flood is
    # reported once it passes churn_domains never-seen domains.
    label = "q" * KEEP_INFO_BYTES
    flagged, detector = run_channel(1000, 600, flood_label=label, churn_domains=5000)
    assert flagged is None
    assert detector.state.stats()["pair_evictions_live"] > 0
    churned = detector.churned
    assert churned, "a client past churn_domains is reported"
    namespace, client, owner, qname, qtype, count = churned[0]
    assert (namespace, client, owner, qtype) == ("agents", CLIENT, CLIENT, 1)
    assert count == 5000  # reported at the domain that crossed it, not later
    assert qname.endswith(wire_of("com"))
    # At most once per client and suppress_seconds (300 s): 60 gaps of 90 s after the crossing.
    assert len(churned) <= 60 * GAP / 300 + 1


def test_a_client_under_churn_domains_is_not_reported() -> None:
    _, detector = run_channel(1000, 50, queries=40, churn_domains=2002)  # 2,000 domains and the channel's: 2,001
    assert detector.churned == []
    _, detector = run_channel(1000, 50, queries=40, churn_domains=0)  # 0: off
    assert detector.churned == []


def test_churn_reports_wait_for_the_caller_in_bounded_memory() -> None:
    # A caller that never reads them (propose, a test) cannot make the list grow without bound:
    # one entry per client and suppress window, at most MAX_CHURN.
    from heuristics.detector import MAX_CHURN

    detector = Detector(MemoryState(max_keys=100_000))
    thresholds = DetectorSettings.from_mapping({"churn_domains": 1, "suppress_seconds": 1})
    for i in range(MAX_CHURN + 500):
        detector.observe("agents", f"10.1.{i // 250}.{i % 250}", wire_of(f"d{i}.example"), 1, START + i, thresholds)
    assert len(detector.churned) == MAX_CHURN


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 400), st.integers(0, 120), st.integers(0, 3)),  # (pair, new text, hours later)
        min_size=1, max_size=300,
    ),
    st.integers(2, 40),
)
def test_pairs_stay_within_max_keys_whatever_they_carry(steps: list[tuple[int, int, int]], max_keys: int) -> None:
    state = MemoryState(max_keys=max_keys)
    geometry = Geometry(60.0, 6, 86400.0, 24, 1024)
    now = START
    for key, text, later in steps:
        now += 3600.0 * later
        state.clock = now
        windows = state.pair(f"ns|d{key}.test", geometry)
        windows.long.advance(now)
        windows.long.add(Field.INFO, text)
        assert len(state._pairs) <= max_keys
    stats = state.stats()
    # Each eviction passes over at most KEEP_SCAN pairs.
    assert stats["pairs_spared"] <= KEEP_SCAN * stats["pair_evictions"]


def flood_in_turns(clients: list[tuple[str, str]], burst: int, rounds: int, churn_domains: int,
                   max_keys: int = 500) -> Detector:
    """Each (client, owner) in turn asks ``burst`` never-seen domains, ``rounds`` times over."""
    detector = Detector(MemoryState(max_keys=max_keys, max_names=4 * max_keys))
    thresholds = DetectorSettings.from_mapping({"churn_domains": churn_domains})
    now = START
    n = 0
    for _ in range(rounds):
        for client, owner in clients:
            for _ in range(burst):
                n += 1
                now += 0.01
                detector.observe("agents", client, wire_of(f"t{n}x.com"), 1, now, thresholds, None, owner)
    return detector


def test_taking_turns_with_other_addresses_does_not_reset_the_count() -> None:
    # Each burst evicts the other clients' pairs (a cap of 500 against 600 domains a burst):
    # the count behind churn_domains lived in one of them, and started again from zero.
    clients = [("10.0.0.1", ""), ("10.0.0.2", ""), ("10.0.0.3", "")]
    detector = flood_in_turns(clients, burst=600, rounds=3, churn_domains=1500)
    assert detector.state.stats()["pair_evictions"] > 4000
    reported = {(client, owner, count) for _, client, owner, _, _, count in detector.churned}
    assert reported == {("10.0.0.1", "10.0.0.1", 1500), ("10.0.0.2", "10.0.0.2", 1500), ("10.0.0.3", "10.0.0.3", 1500)}


def test_the_addresses_of_one_ipv6_64_are_counted_together() -> None:
    clients = [(f"fd00:0:0:7::{i:x}", "") for i in range(1, 7)]  # six addresses, one /64
    detector = flood_in_turns(clients, burst=300, rounds=1, churn_domains=1500)
    assert [(owner, count) for _, _, owner, _, _, count in detector.churned] == [("fd00:0:0:7::/64", 1500)]
    assert detector.churned[0][1] == "fd00:0:0:7::5"  # the address that crossed it


def test_a_pods_addresses_are_counted_as_the_pod() -> None:
    pod = "pod:agents/runner-0"
    clients = [("10.244.1.7", pod), ("fd00:0:0:9::7", pod)]
    detector = flood_in_turns(clients, burst=500, rounds=2, churn_domains=1500)
    assert [(owner, count) for _, _, owner, _, _, count in detector.churned] == [(pod, 1500)]
