"""Names are label sequences of arbitrary octets: no decision may be taken on joined text.

Property tests (hypothesis) over names whose labels hold '.', '\\', NUL, '|',
spaces and octets >= 0x80, under real public suffixes: the registrable domain
(the domain a query is charged to) is always an ancestor of the name, cut at a
label boundary; its text is unambiguous; a quarantine of D covers every name
below D; exemptions match whole labels only.
"""

from __future__ import annotations

import base64
import random

import dns.name
from hypothesis import given, settings
from hypothesis import strategies as st
from publicsuffixlist import PublicSuffixList

from heuristics import Detector, DetectorSettings, name_to_text, registrable_domain
from heuristics import names as _names
from heuristics.names import (
    ancestors,
    domain_text,
    is_public_suffix,
    is_subdomain,
    label_to_text,
    labels_of,
    registrable_wire,
    wire_of,
)
from heuristics.state import MemoryState

_PSL = PublicSuffixList()

# Octets an attacker reaches for: the separator, the escape, NUL, the pair-key
# separator, space, quote, bytes >= 0x80, and ordinary letters to build near-misses.
_TRICKY = [0x2E, 0x5C, 0x00, 0x7C, 0x20, 0x22, 0x80, 0xFF, 0xBC, 0x61, 0x62, 0x2D, 0x30]

label = st.one_of(
    st.lists(st.sampled_from(_TRICKY), min_size=1, max_size=12).map(bytes),
    st.binary(min_size=1, max_size=63),
    st.sampled_from([b"evil", b"test", b"co", b"uk", b"github", b"io", b"s3", b"com", b"evil.test"]),
)

# Tails that exercise the public suffix list: plain TLDs, multi-label suffixes,
# the private section, wildcard and exception rules, the root.
TAILS = [
    b"\x00",
    b"\x04test\x00",
    b"\x04evil\x04test\x00",
    b"\x03com\x00",
    b"\x02co\x02uk\x00",
    b"\x06github\x02io\x00",
    b"\x02s3\x09amazonaws\x03com\x00",
    b"\x04kobe\x02jp\x00",
    b"\x04city\x04kobe\x02jp\x00",
    b"\x02ck\x00",
    b"\x03www\x02ck\x00",
    b"\x04arpa\x00",
    b"\x07in-addr\x04arpa\x00",
    b"\x011\x07in-addr\x04arpa\x00",
    b"\x03ip6\x04arpa\x00",
    b"\x012\x03ip6\x04arpa\x00",
]


def build(labels: list[bytes], tail: bytes) -> bytes:
    """Wire name of ``labels`` above ``tail``, lowercased as the resolver does; cut to 255 octets."""
    out = b"".join(bytes([len(lb)]) + lb for lb in labels) + tail
    while len(out) > 255:
        labels = labels[1:]
        out = b"".join(bytes([len(lb)]) + lb for lb in labels) + tail
    return out.lower()


names = st.builds(build, st.lists(label, max_size=6), st.sampled_from(TAILS))


def is_ancestor(domain: bytes, name: bytes) -> bool:
    """Reference: ``domain``'s labels are the last labels of ``name`` (the root is everyone's)."""
    want = labels_of(domain)
    have = labels_of(name)
    return len(want) <= len(have) and have[len(have) - len(want) :] == want


@settings(max_examples=400, deadline=None)
@given(names)
def test_registrable_domain_is_a_label_wise_ancestor(qname: bytes) -> None:
    domain = registrable_wire(qname)
    assert is_ancestor(domain, qname)
    assert domain in ancestors(qname) or domain == qname[-1:] == b"\x00"
    assert is_subdomain(qname, domain)
    # The text names exactly that domain: it parses back to the same labels.
    assert wire_of(registrable_domain(qname)) == domain


@settings(max_examples=300, deadline=None)
@given(names, names)
def test_presentation_text_is_unambiguous(a: bytes, b: bytes) -> None:
    assert wire_of(name_to_text(a)) == a
    if a != b:
        assert name_to_text(a) != name_to_text(b)


@settings(max_examples=300, deadline=None)
@given(names, names)
def test_is_subdomain_compares_labels_not_octets(name: bytes, domain: bytes) -> None:
    assert is_subdomain(name, domain) == is_ancestor(domain, name)


def test_dots_inside_labels_stay_under_their_domain() -> None:
    # \.abc.evil.test, abc\..evil.test, a\.b.evil.test: all under evil.test.
    for labels in ([b".abc"], [b"abc."], [b"a.b"], [b"..", b"x."], [b"\\", b"\x00."]):
        qname = build([*labels, b"evil", b"test"], b"\x00")
        assert registrable_domain(qname) == "evil.test"
    # A one-label name whose octets spell "evil.test" is not under test.
    assert registrable_domain(b"\x09evil.test\x00") == "evil\\.test"
    assert not is_subdomain(b"\x09evil.test\x00", b"\x04test\x00")
    assert not is_subdomain(b"\x06x\x04test\x00", b"\x04test\x00")


def flag_everything() -> DetectorSettings:
    # Any new name with subdomain text overruns a one-byte budget: every such query is a verdict.
    return DetectorSettings(client_budget_short_bytes=1, suppress_seconds=0.0)


@settings(max_examples=300, deadline=None)
@given(names)
def test_detector_charges_an_ancestor(qname: bytes) -> None:
    detector = Detector(MemoryState())
    verdict = detector.observe("ns", "10.0.0.1", qname, 1, 1000.0, flag_everything())
    feats = detector.features.get(qname)
    assert is_ancestor(feats.domain_wire, qname)
    if verdict is not None:
        assert is_ancestor(wire_of(verdict.domain), qname)
        assert verdict.domain == feats.domain


@settings(max_examples=300, deadline=None)
@given(names, st.lists(label, min_size=1, max_size=4))
def test_quarantine_covers_every_name_below(first: bytes, below: list[bytes]) -> None:
    detector = Detector(MemoryState())
    domain = registrable_wire(first)
    detector.quarantine("ns", domain_text(domain), 2000.0)
    under = build(below, domain)
    if not is_ancestor(domain, under):
        return  # the labels above had to be cut to fit 255 octets and nothing was left
    assert detector.quarantined_name("ns", under, 1000.0)
    assert not detector.quarantined_name("other", under, 1000.0)
    assert not detector.quarantined_name("ns", under, 2000.0)  # expired


def test_quarantine_does_not_leak_to_a_look_alike_label() -> None:
    detector = Detector(MemoryState())
    detector.quarantine("ns", "evil.test", 2000.0)
    assert detector.quarantined_name("ns", build([b".abc"], b"\x04evil\x04test\x00"), 1000.0)
    assert detector.quarantined_name("ns", build([b"abc."], b"\x04evil\x04test\x00"), 1000.0)
    assert not detector.quarantined_name("ns", b"\x09evil.test\x00", 1000.0)
    assert not detector.quarantined_name("ns", build([b"evil.test"], b"\x03com\x00"), 1000.0)


def test_exemption_matches_whole_labels() -> None:
    detector = Detector(MemoryState())
    s = DetectorSettings(client_budget_short_bytes=1, exempt=("safe.example",))
    assert detector.observe("ns", "c", wire_of("abc.safe.example"), 1, 1.0, s) is None
    assert detector.exempted == 1
    # "x.safe" is one label of a name under "example": not exempt, and charged to x\.safe.example.
    tricky = build([b"data", b"x.safe"], b"\x07example\x00")
    verdict = detector.observe("ns", "c", tricky, 1, 1.0, s)
    assert detector.exempted == 1
    assert verdict is not None
    assert verdict.domain == "x\\.safe.example"


def test_tunnel_with_dots_in_labels_is_flagged_on_its_domain() -> None:
    rng = random.Random(9)
    detector = Detector(MemoryState())
    s = DetectorSettings()
    flagged = None
    for i in range(400):
        chunk = base64.b32encode(rng.randbytes(25)).decode().rstrip("=").lower().encode()
        # Dots at label edges used to make every name its own "domain".
        labels = [b"." + chunk[:20], chunk[20:] + b".", str(i).encode()]
        qname = build([*labels, b"evil", b"test"], b"\x00")
        verdict = detector.observe("ns", "10.0.0.9", qname, 16, 1000.0 + i, s)
        if verdict is not None and verdict.alert:
            flagged = (i, verdict)
            break
    assert flagged is not None, "a tunnel whose labels carry dots went undetected"
    queries, verdict = flagged
    assert verdict.domain == "evil.test"
    assert queries < 50
    assert "\\." in str(verdict.evidence["qname"])


def test_pair_keys_cannot_be_forged_with_a_bar() -> None:
    # Without escaping, the namespace pair of domain "evil.test|::1" and the client
    # pair of (evil.test, ::1) would share one key.
    detector = Detector(MemoryState())
    s = DetectorSettings()
    forged = build([b"x", b"evil"], b"\x08test|::1\x00")
    assert registrable_domain(forged) == "evil.test|::1"
    detector.observe("ns", "10.0.0.1", forged, 1, 1.0, s)
    detector.observe("ns", "::1", wire_of("y.evil.test"), 1, 1.0, s)
    keys = list(detector.state._pairs)
    assert len(keys) == len(set(keys))
    assert "ns|evil.test|::1" in keys
    assert "ns|evil.test\\124::1" in keys


def test_wire_of_understands_escapes() -> None:
    assert wire_of("abc\\..evil.test") == b"\x04abc.\x04evil\x04test\x00"
    assert wire_of("\\000\\255.x") == dns.name.from_text("\\000\\255.x").to_wire().lower()


# Every ASCII rule of the bundled list, in label form: names built from them hit
# exact, wildcard and exception rules at every depth.
_PSL_RULES = sorted(
    rule
    for rule in (*_names._EXACT, *_names._WILD, *_names._EXCEPTION)
    if all(part.isascii() and part.replace(b"-", b"").isalnum() for part in rule)
)


@settings(max_examples=2000)
@given(
    st.sampled_from(_PSL_RULES),
    st.integers(min_value=0, max_value=4),
    st.lists(st.sampled_from([b"www", b"a1", b"x", b"s3", b"city", b"kobe", b"jp", b"uk"]), max_size=3),
)
def test_registrable_domain_agrees_with_the_psl_library(rule: tuple[bytes, ...], cut: int, front: list[bytes]) -> None:
    """The label-trie walk gives the publicsuffixlist package's private suffix for names
    made of real rules' labels (a rule, a suffix of it, labels in front)."""
    labels = [*front, *rule[min(cut, len(rule) - 1) :]]
    text = ".".join(part.decode() for part in labels)
    expected = _PSL.privatesuffix(text) or text  # a public suffix is its own domain
    if len(labels) > 2 and labels[-1] == b"arpa" and labels[-2] in (b"in-addr", b"ip6"):
        # Reverse trees are charged to one site's reverse zone, not to the list's
        # suffix + one label (tests/unit/test_reverse_names.py); no front label here is
        # an octet or a nibble, so that zone is the tree's root.
        expected = ".".join(part.decode() for part in labels[-2:])
    assert registrable_domain(wire_of(text)) == expected


@settings(max_examples=2000)
@given(
    st.sampled_from(_PSL_RULES),
    st.integers(min_value=0, max_value=4),
    st.lists(st.sampled_from([b"www", b"a1", b"x", b"s3", b"city", b"kobe", b"jp", b"uk"]), max_size=2),
)
def test_is_public_suffix_agrees_with_the_psl_library(rule: tuple[bytes, ...], cut: int, front: list[bytes]) -> None:
    """``is_public_suffix`` (what `dnsgate import` refuses wildcards over) says what the
    publicsuffixlist package's is_public says, for rules, their suffixes, and names below them."""
    labels = [*front, *rule[min(cut, len(rule) - 1) :]]
    text = ".".join(part.decode() for part in labels)
    assert is_public_suffix(wire_of(text)) == _PSL.is_public(text)


def test_is_public_suffix_examples() -> None:
    for public in ("com", "co.uk", "github.io", "s3.amazonaws.com", "anything.ck", "internal", "."):
        assert is_public_suffix(wire_of(public)), public
    for owned in ("example.com", "amazonaws.com", "www.ck", "user.github.io", "cluster.local"):
        assert not is_public_suffix(wire_of(owned)), owned


def _text_octet_by_octet(qname: bytes) -> str:
    """name_to_text as RFC 1035 5.1 writes it, one octet at a time (no shortcut)."""
    labels = labels_of(qname)
    if not labels:
        return "."
    out = []
    for label in labels:
        chars = []
        for b in label:
            if b < 0x21 or b > 0x7E:
                chars.append(f"\\{b:03d}")
            elif b in b'."();\\@$':
                chars.append("\\" + chr(b))
            else:
                chars.append(chr(b))
        out.append("".join(chars))
    return ".".join(out)


@given(st.lists(st.lists(st.one_of(st.sampled_from(b'.\\"();@$az09-_\x00\x20\x21\x7e\x7f\xff'),
                                   st.integers(0, 255)), min_size=1, max_size=20).map(bytes),
                max_size=6))
def test_the_text_of_a_name_is_its_octets_escaped_one_by_one(labels: list[bytes]) -> None:
    """The shortcut for names with nothing to escape gives what escaping every octet gives,
    whatever the labels hold (dots inside labels included)."""
    qname = b"".join(bytes([len(label)]) + label for label in labels) + b"\x00"
    assert name_to_text(qname) == _text_octet_by_octet(qname)
    for label in labels:
        assert label_to_text(label) == _text_octet_by_octet(bytes([len(label)]) + label + b"\x00")
