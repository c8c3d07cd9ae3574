"""The adaptive channel generator (tests/tunnels/adaptive.py) and its scorer."""

from __future__ import annotations

from dataclasses import replace

import dns.name
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.benign_corpus import cloud_shapes
from tests.tunnels.adaptive import ENCODINGS, FAMILIES, MANY_CLIENTS, ROTATION, START, draw, percentile, score


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), family=st.sampled_from((*FAMILIES, ROTATION)))
def test_every_draw_is_valid_dns_and_carries_what_it_says(seed: int, family: str) -> None:
    channel = draw(seed, family)
    assert channel == draw(seed, family)  # seeded: the same draw every time
    assert channel.encoding in ENCODINGS
    assert 1 <= len(channel.clients) <= 8
    names = set()
    total = 0
    for i, lookup in zip(range(40), channel.lookups(), strict=False):
        name = dns.name.from_wire(lookup.qname, 0)[0]  # raises on a malformed name
        assert len(lookup.qname) <= 255
        assert all(len(label) <= 63 for label in name.labels)
        assert lookup.domain in channel.domains
        assert lookup.client in channel.clients
        assert lookup.qname.endswith(dns.name.from_text(lookup.domain).to_wire())
        names.add(lookup.qname.lower())
        total += lookup.payload
        assert i == 0 or lookup.ts > START
    # Every name is new (a repeated name would be answered from a cache), and the
    # payload accounted is what the encoding can carry.
    count = min(40, len(channel.domains) * channel.names_per_domain) if channel.names_per_domain else 40
    assert len(names) == count
    assert total >= count * min(1.0, channel.payload_per_query * 0.3)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_a_rotation_gives_each_domain_its_names_then_moves_on(seed: int) -> None:
    channel = draw(seed, ROTATION)
    assert 10 <= len(channel.domains) == len(set(channel.domains)) <= 60
    assert 1 <= len(channel.clients) <= 3
    per_domain: dict[str, int] = {}
    order: list[str] = []
    for lookup in channel.lookups():
        per_domain[lookup.domain] = per_domain.get(lookup.domain, 0) + 1
        if not order or order[-1] != lookup.domain:
            assert lookup.domain not in order  # never comes back to a domain
            order.append(lookup.domain)
    assert max(per_domain.values()) <= channel.names_per_domain <= 2
    assert channel.capacity() == sum(lookup.payload for lookup in channel.lookups())


def test_words_look_like_words() -> None:
    channel = next(draw(s, "words") for s in range(50) if draw(s, "words").encoding == "words256")
    label = dns.name.from_wire(next(channel.lookups()).qname, 0)[0].labels[0].decode()
    assert all(part.isalpha() for part in label.split("-"))


def test_scorer_stops_at_the_first_alert_on_the_channel() -> None:
    bulk = next(c for c in (draw(s, "bulk") for s in range(50))
                if c.encoding == "base32" and len(c.domains) == 1 and c.labels >= 2)
    outcome = score(bulk)
    assert outcome.detected
    assert outcome.reasons
    assert 0 < outcome.bytes_sent <= 4096
    assert outcome.queries < 500
    assert outcome.other_flagged == []


def test_percentile_is_nearest_rank() -> None:
    assert percentile([5, 1, 3, 2, 4], 0.5) == 3
    assert percentile([5, 1, 3, 2, 4], 0.9) == 5
    assert percentile(list(range(1, 101)), 0.9) == 90


def test_cloud_shapes_are_many_clients_few_names_each() -> None:
    shapes = cloud_shapes()
    telemetry = shapes["sdk telemetry 0"]
    clients = {row[1] for row in telemetry}
    assert len(clients) == 40
    assert max(row[0] for row in telemetry) - min(row[0] for row in telemetry) <= 2 * 3600
    per_client = max(sum(1 for r in telemetry if r[1] == c) for c in clients)
    assert per_client <= 2 * 90  # A and AAAA of at most 90 names
    assert all(row[4] == 0 for rows in shapes.values() for row in rows)


def test_a_handful_of_draws_per_family_is_caught_within_4kb_and_a_day() -> None:
    """The benchmark's targets on a few draws (the full distribution: benchmarks/adaptive_table.py)."""
    for family in FAMILIES:
        for seed in range(4):
            channel = draw(seed, family)
            outcome = score(channel)
            assert outcome.detected, f"{family}#{seed} missed: {channel.describe()}"
            assert outcome.bytes_sent <= 4096, f"{family}#{seed}: {outcome.bytes_sent} B: {channel.describe()}"
            assert outcome.seconds <= 86400, f"{family}#{seed}: {outcome.seconds / 3600:.1f} h"
            assert outcome.other_flagged == []


def test_a_rotation_split_over_clients_is_caught_as_from_one() -> None:
    """rotation#15: 24 domains x 2 names over 2 clients of the namespace; each client's meter
    sees half of it, the namespace's all-domain meter all of it (heuristics/spread.py,
    effective_clients)."""
    channel = draw(15, ROTATION)
    assert len(channel.clients) == 2
    outcome = score(channel)
    assert outcome.detected, channel.describe()
    assert "info_budget" in outcome.reasons
    assert outcome.bytes_sent <= 4096
    assert outcome.other_flagged == []


def test_dual_stack_draws_ask_a_then_aaaa_of_each_name_with_the_payload_counted_once() -> None:
    channel = replace(draw(3, MANY_CLIENTS), dual_stack=True)
    lookups = list(zip(range(40), channel.lookups(), strict=False))
    pairs = [lk for _, lk in lookups]
    assert [lk.qtype for lk in pairs[:4]] == [1, 28, 1, 28]
    assert all(a.qname == b.qname and a.client == b.client and b.payload == 0 for a, b in zip(pairs[::2], pairs[1::2], strict=True))
    assert sum(lk.payload for lk in pairs) == sum(lk.payload for lk in draw(3, MANY_CLIENTS).lookups() if lk.qname in {p.qname for p in pairs})


def test_a_telemetry_shaped_channel_from_the_addresses_of_one_ipv6_64_is_one_host() -> None:
    """A clients draw asking A and AAAA of each name looks like a fleet's telemetry when its clients
    are many hosts (docs/detection.md, what still gets through); when they are addresses of one /64
    and ipv6_client_prefix says a /64 is a host, dnsgate counts one host and its budget catches it
    within 4 KB."""
    for seed in (5, 10, 26):  # draws the telemetry shape lets through from IPv4 clients
        dual = replace(draw(seed, MANY_CLIENTS), dual_stack=True)
        assert not score(dual).detected, dual.describe()
        host = replace(dual, clients=tuple(f"2001:db8:64:1::{k + 1:x}" for k in range(len(dual.clients))))
        assert not score(host).detected  # by default each address is a client of its own
        outcome = score(host, ipv6_client_prefix=64)
        assert outcome.detected, host.describe()
        assert outcome.bytes_sent <= 4096
