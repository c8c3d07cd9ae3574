"""Names under ``arpa``: only a well-formed reverse lookup is left unscored.

A client chooses every octet of the names it asks, and a reverse zone can be
delegated to anyone (a free IPv6 /48 with its reverse zone): a payload under
``<nibbles>.ip6.arpa`` reaches the zone's owner like one under any domain. So
the detector skips exactly the names that are reverse lookups, at most 4
canonical decimal octets under ``in-addr.arpa`` or 32 hex nibbles under
``ip6.arpa``, and scores every other name under ``arpa``, charged to the
reverse zone of one site (a /24, a /48) whatever is put below it.
"""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from heuristics import Detector, DetectorSettings
from heuristics.features import features_of
from heuristics.names import is_reverse_lookup, labels_of, registrable_wire
from heuristics.state import MemoryState

IN_ADDR = b"\x07in-addr\x04arpa\x00"
IP6 = b"\x03ip6\x04arpa\x00"
TAILS = [
    IN_ADDR,
    IP6,
    b"\x04arpa\x00",
    b"\x04home\x04arpa\x00",
    b"\x04e164\x04arpa\x00",
    b"\x0cin-addr.arpa\x00",  # one label holding a '.': not in-addr.arpa
    b"\x03ip6\x04arpa\x04evil\x04test\x00",
]
_OCTET = re.compile(rb"0|[1-9][0-9]?|1[0-9][0-9]|2[0-4][0-9]|25[0-5]")
_NIBBLE = re.compile(rb"[0-9a-f]")


def reference(qname: bytes) -> bool:
    """The rule, written from the text of it: a regular expression per label."""
    labels = labels_of(qname)
    if len(labels) < 2 or labels[-1] != b"arpa":
        return False
    above = labels[:-2]
    if labels[-2] == b"in-addr":
        return len(above) <= 4 and all(_OCTET.fullmatch(label) for label in above)
    if labels[-2] == b"ip6":
        return len(above) <= 32 and all(_NIBBLE.fullmatch(label) for label in above)
    return False


def build(labels: list[bytes], tail: bytes) -> bytes:
    """Wire name of ``labels`` above ``tail``, lowercased as the resolver does; cut to 255 octets."""
    out = b"".join(bytes([len(lb)]) + lb for lb in labels) + tail
    while len(out) > 255:
        labels = labels[1:]
        out = b"".join(bytes([len(lb)]) + lb for lb in labels) + tail
    return out.lower()


# Labels near the rule's edges: octets and near-octets, nibbles and near-nibbles, anything.
label = st.one_of(
    st.integers(0, 999).map(lambda n: str(n).encode()),
    st.sampled_from([b"00", b"01", b"007", b"+1", b" 1", b"1 ", b"256", b"-0", b"0x1", b"\xb9", b"1.2"]),
    st.sampled_from(list(b"0123456789abcdefABCDEFgz*-_")).map(lambda b: bytes([b])),
    st.binary(min_size=1, max_size=63),
    st.from_regex(rb"[a-z2-7]{16,50}", fullmatch=True),  # a base32 payload
)
names = st.builds(build, st.lists(label, max_size=34), st.sampled_from(TAILS))
octets = st.lists(st.integers(0, 255).map(lambda n: str(n).encode()), max_size=4)
nibbles = st.lists(st.sampled_from(list(b"0123456789abcdef")).map(lambda b: bytes([b])), max_size=32)
well_formed = st.one_of(st.builds(build, octets, st.just(IN_ADDR)), st.builds(build, nibbles, st.just(IP6)))


def exempted(qname: bytes) -> bool:
    """Whether the detector left the query unscored (its ``exempted`` counter)."""
    detector = Detector(MemoryState())
    detector.observe("default", "10.0.0.2", qname, 12, 1_800_000_000.0, DetectorSettings())
    return detector.exempted == 1


@settings(max_examples=400, deadline=None)
@given(names)
def test_a_name_under_arpa_is_exempt_only_when_it_is_a_well_formed_reverse_lookup(qname: bytes) -> None:
    assert is_reverse_lookup(qname) == reference(qname)
    assert exempted(qname) == reference(qname)


@settings(max_examples=200, deadline=None)
@given(well_formed)
def test_every_well_formed_reverse_lookup_is_exempt(qname: bytes) -> None:
    assert reference(qname)
    assert exempted(qname)


zone48 = st.lists(st.sampled_from(list(b"0123456789abcdef")).map(lambda b: bytes([b])), min_size=12, max_size=12)
zone24 = st.lists(st.integers(0, 255).map(lambda n: str(n).encode()), min_size=3, max_size=3)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.tuples(zone48, st.just(IP6)), st.tuples(zone24, st.just(IN_ADDR))),
       st.lists(label, min_size=1, max_size=8))
def test_every_name_under_one_delegated_reverse_zone_is_charged_to_that_zone(
    zone: tuple[list[bytes], bytes], above: list[bytes],
) -> None:
    """A channel under a /48 (or /24) reverse zone is one (namespace, domain) pair,
    whatever labels (payload, more nibbles, counters) it puts below the zone."""
    zone_labels, tail = zone
    zone_wire = build(zone_labels, tail)
    qname = build([*above, *zone_labels], tail)
    if len(labels_of(qname)) == len(labels_of(zone_wire)):
        return  # cut to 255 octets down to the zone itself
    assert registrable_wire(qname) == zone_wire
    assert features_of(qname).domain_wire == zone_wire


def test_reverse_zones_of_examples() -> None:
    from heuristics.names import registrable_domain, wire_of

    for name, domain in [
        ("4.3.2.1.in-addr.arpa", "3.2.1.in-addr.arpa"),
        ("x.4.3.2.1.in-addr.arpa", "3.2.1.in-addr.arpa"),
        ("payload.1.in-addr.arpa", "1.in-addr.arpa"),
        ("payload.in-addr.arpa", "in-addr.arpa"),
        ("payload.12.b.0.f.1.0.7.4.0.1.0.0.2.ip6.arpa", "b.0.f.1.0.7.4.0.1.0.0.2.ip6.arpa"),
        ("payload.5.b.0.f.1.0.7.4.0.1.0.0.2.ip6.arpa", "b.0.f.1.0.7.4.0.1.0.0.2.ip6.arpa"),
        ("x.home.arpa", "x.home.arpa"),
    ]:
        assert registrable_domain(wire_of(name)) == domain, name
