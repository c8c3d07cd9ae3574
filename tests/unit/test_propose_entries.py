"""What propose writes is what the config loader reads: exactly the name a client asked.

A client chooses the octets of the names it asks, so nothing in them may make a
proposed entry mean more: a label that is a lone '*' (``\\x01*`` on the wire) is
one literal name, never ``*.domain``; a '.' inside a label never splits it; no
quote, backslash or control octet changes what the YAML line holds. Checked
through the whole path: LearnBook -> from_book -> render -> config.load ->
AllowList.match, for proposed entries and for the "not proposed" lines a person
may move up.
"""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from heuristics.names import labels_of, wire_of
from resolver import config as config_mod
from resolver.offline.propose import Proposal, default_document, entry_text, from_book, render
from resolver.pipeline.learn import LearnBook, Seen
from resolver.pipeline.rpz import AllowList

T0 = 1_800_000_000.0
TAIL = b"\x04evil\x04test\x00"
# Octets the allow syntax or YAML could read specially, and case.
_TRICKY = [0x2A, 0x2E, 0x5C, 0x00, 0x20, 0x22, 0x27, 0x3B, 0x28, 0x40, 0x24, 0x23, 0x3A, 0x80, 0xFF, 0x41, 0x61]
label = st.one_of(
    st.lists(st.sampled_from(_TRICKY), min_size=1, max_size=6).map(bytes),
    st.binary(min_size=1, max_size=20),
)
names = st.builds(lambda labels: (b"".join(bytes([len(lb)]) + lb for lb in labels) + TAIL).lower(),
                  st.lists(label, min_size=1, max_size=3))


def wire(*labels: bytes) -> bytes:
    return b"".join(bytes([len(lb)]) + lb for lb in labels) + b"\x00"


def book_of(*qnames: bytes) -> LearnBook:
    book = LearnBook()
    for i, qname in enumerate(qnames):
        book.merge("default", qname, 1, Seen(1, T0 + i, T0 + i, 0))
    return book


def allow_list(entries: list[str]) -> AllowList:
    """The entries as a person would keep them: through the loader, into the policy."""
    doc = {**default_document(), "namespaces": {"default": {"allow": entries}}}
    loaded = config_mod.load("moved.yaml", text=yaml.safe_dump(doc))
    return AllowList("default.allow", loaded.namespaces["default"].allow)


def proposed(proposal: Proposal) -> tuple[AllowList, list[str]]:
    """The rendered proposal loaded back, and the entries of its "not proposed" lines."""
    text = render(proposal, default_document(), "enforce")
    loaded = config_mod.load("proposed.yaml", text=text)
    moved = [yaml.safe_load(line.split("#   - ", 1)[1].split("  # ", 1)[0])
             for line in text.splitlines() if line.startswith("    #   - ")]
    return AllowList("default.allow", loaded.namespaces["default"].allow), moved


def first_label(name: bytes) -> bytes:
    return labels_of(name)[0]


def sibling(name: bytes) -> bytes:
    """Another name under the same parent: the first label with one octet more."""
    first = first_label(name)
    other = first[:-1] if len(first) == 63 else first + b"x"
    return bytes([len(other)]) + other + name[1 + len(first):]


@settings(max_examples=150, deadline=None)
@given(names)
def test_every_name_loads_back_as_exactly_itself(qname: bytes) -> None:
    proposal = from_book(book_of(qname), {}, config_mod.learn_all(), collapse=0)
    allow, moved = proposed(proposal)
    if allow.match(qname) is None:
        # Left to a person: the line they would move up allows this name and no other.
        assert len(moved) == 1
        allow = allow_list(moved)
    assert len(allow) == 1
    assert not allow.wildcard
    assert allow.match(qname) is not None
    assert allow.match(sibling(qname)) is None
    assert allow.match(b"\x0fexfil-data-here" + qname[1 + qname[0]:]) is None
    assert allow.match(b"\x01a" + qname) is None  # nothing below it either
    assert allow.match(TAIL) is None


@settings(max_examples=300, deadline=None)
@given(names)
def test_entry_text_is_read_back_as_the_same_name(qname: bytes) -> None:
    text = entry_text(qname)
    assert not text.startswith("*.")
    allow = allow_list([text])
    assert set(allow.exact) == {qname}
    assert wire_of(text) == qname


def test_a_lone_star_label_is_one_name_left_to_a_person() -> None:
    star = wire(b"*", b"evil", b"test")
    proposal = from_book(book_of(star), {}, config_mod.learn_all(), collapse=5)
    assert proposal.entries["default"] == []
    (line,) = proposal.not_proposed["default"]
    assert line.text == "\\042.evil.test"
    assert "lone '*'" in line.note
    allow, moved = proposed(proposal)
    assert allow.match(wire(b"exfil-data-here", b"evil", b"test")) is None
    assert moved == ["\\042.evil.test"]
    kept = allow_list(moved)
    assert kept.match(star) is not None
    assert kept.match(wire(b"exfil-data-here", b"evil", b"test")) is None


def test_a_lone_star_label_never_counts_toward_a_wildcard() -> None:
    ordinary = [wire(w, b"evil", b"test") for w in (b"www", b"api", b"mail", b"cdn")]
    stars = [wire(b"*", b"evil", b"test"), wire(b"a", b"*", b"evil", b"test")]
    proposal = from_book(book_of(*ordinary, *stars), {}, config_mod.learn_all(), collapse=5)
    texts = {e.text for e in proposal.entries["default"]}
    assert texts == {"www.evil.test", "api.evil.test", "mail.evil.test", "cdn.evil.test"}
    assert {e.text for e in proposal.not_proposed["default"]} == {"\\042.evil.test", "a.\\042.evil.test"}


def test_a_star_inside_a_label_is_written_escaped_and_loads() -> None:
    odd = wire(b"a*b", b"x", b"evil", b"test")
    proposal = from_book(book_of(odd), {}, config_mod.learn_all(), collapse=0)
    (line,) = proposal.not_proposed["default"]  # no hostname: left to a person, as o'brien is
    assert line.text == "a\\042b.x.evil.test"
    _, moved = proposed(proposal)  # before, the line said 'a*b.x.evil.test': the loader refused it
    assert allow_list(moved).match(odd) is not None


def test_collapse_never_reaches_above_the_registrable_domain() -> None:
    # Names below a public suffix each have their own registrable domain, so many
    # of them never make "*.co.uk"; names under one domain make that domain's wildcard.
    under_suffix = [wire(f"shop{i}".encode(), b"co", b"uk") for i in range(6)]
    under_domain = [wire(f"h{i}".encode(), b"evil", b"test") for i in range(5)]
    proposal = from_book(book_of(*under_suffix, *under_domain), {}, config_mod.learn_all(), collapse=5)
    texts = {e.text for e in proposal.entries["default"]}
    assert "*.evil.test" in texts
    assert not any(t.startswith("*.") and t != "*.evil.test" for t in texts)
    assert {f"shop{i}.co.uk" for i in range(6)} <= texts


# --- the loader: only a leading "*." makes a wildcard ------------------------------------


def test_an_escaped_star_in_config_is_one_literal_name() -> None:
    allow = allow_list(["\\042.evil.test", "*.good.test"])
    assert allow.match(wire(b"*", b"evil", b"test")) is not None
    assert allow.match(wire(b"exfil", b"evil", b"test")) is None
    assert allow.match(wire(b"www", b"good", b"test")) is not None
    assert allow.match(wire(b"good", b"test")) is None


@pytest.mark.parametrize(("entry", "name"), [
    ("a\\.", wire(b"a.")),                 # the trailing dot is the label's octet
    ("a\\..", wire(b"a.")),                # ... and then the root
    ("x.a\\\\.", wire(b"x", b"a\\")),     # an escaped backslash, then the root's dot
    ("Www.Example.ORG.", wire(b"www", b"example", b"org")),
])
def test_entries_ending_in_a_dot_keep_escaped_dots(entry: str, name: bytes) -> None:
    allow = allow_list([entry])
    assert set(allow.exact) == {name}


def test_a_star_elsewhere_is_still_refused() -> None:
    with pytest.raises(config_mod.ConfigError, match="a wildcard may only be the first label"):
        allow_list(["x.*.test"])


def test_kept_config_entries_still_match() -> None:
    cfg = config_mod.learn_all()
    ns = cfg.namespaces["default"]
    cfg = dataclasses.replace(cfg, namespaces={"default": dataclasses.replace(ns, allow=("\\042.evil.test",))})
    star = wire(b"*", b"evil", b"test")
    proposal = from_book(book_of(star, wire(b"www", b"evil", b"test")), {}, cfg, collapse=0)
    by_text = {e.text: e for e in proposal.entries["default"]}
    assert by_text["\\042.evil.test"].count == 1  # the config already allows it: kept, counted
    assert "www.evil.test" in by_text
