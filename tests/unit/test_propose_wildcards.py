"""``*.domain`` is proposed only where the domain is one owner's.

A client chooses the names it asks: five names under ``amazonaws.com`` (or under
an attacker's delegated reverse zone) must not make propose allow everything
below it. Checked against the public suffix list read here from its file, not
through the code under test: no proposed wildcard spans a rule of the list (at
or below its base), sits right under a rule of the list's private section, or
lies under ``arpa``; and no name seen is lost: each is allowed or listed under
"not proposed".
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from publicsuffixlist import PSLFILE

from heuristics.names import labels_of, wire_of
from resolver import config as config_mod
from resolver.offline.propose import from_book, wildcard_refusal
from tests.unit.test_propose_entries import book_of, proposed


def _rules() -> tuple[set[str], set[str]]:
    """Every rule's name (``*.`` and ``!`` taken off), and those of the private section."""
    every: set[str] = set()
    private: set[str] = set()
    section = False
    with open(PSLFILE, encoding="utf-8") as handle:
        for line in handle:
            text = line.strip()
            if "===BEGIN PRIVATE DOMAINS===" in text:
                section = True
            if not text or text.startswith("//") or not text.isascii():
                continue
            rule = text.split()[0].lower().removeprefix("!").removeprefix("*.")
            every.add(rule)
            if section:
                private.add(rule)
    return every, private


RULES, PRIVATE = _rules()
TAILS = [
    "amazonaws.com", "s3.amazonaws.com", "us-east-1.amazonaws.com", "googleapis.com",
    "storage.googleapis.com", "github.io", "co.uk", "example.co.uk", "cdn.example.com",
    "r.appspot.com", "in-addr.arpa", "10.in-addr.arpa", "b.0.f.1.0.7.4.0.1.0.0.2.ip6.arpa", "arpa",
    "home.arpa", "evil.test",
]
label = st.one_of(
    st.sampled_from([b"www", b"api", b"s3", b"storage", b"elb", b"compute", b"x", b"1", b"a", b"*", b"cdn"]),
    st.from_regex(rb"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True),
)
names = st.builds(
    lambda labels, tail: wire_of(".".join(lb.decode() for lb in labels) + "." + tail),
    st.lists(label, min_size=1, max_size=3),
    st.sampled_from(TAILS),
)


def wildcard_problem(base: str) -> str:
    if base == "arpa" or base.endswith(".arpa"):
        return "under arpa"
    for rule in RULES:
        if rule == base or rule.endswith("." + base):
            return f"spans {rule}"
    parent = base.split(".", 1)[1] if "." in base else ""
    if parent in PRIVATE:
        return f"right under {parent}"
    return ""


@settings(max_examples=300, deadline=None)
@given(st.lists(names, min_size=1, max_size=12, unique=True))
def test_no_proposed_wildcard_reaches_names_of_other_owners(qnames: list[bytes]) -> None:
    proposal = from_book(book_of(*qnames), {}, config_mod.learn_all(), collapse=2)
    for entry in proposal.entries.get("default", []):
        if entry.text.startswith("*."):
            assert not wildcard_problem(entry.text[2:]), entry.text
    allowed, moved = proposed(proposal)
    for qname in qnames:
        text = ".".join(lb.decode() for lb in labels_of(qname))
        listed = text.replace("*", "\\042") in moved
        assert allowed.match(qname) is not None or listed, text


def test_refusals_name_their_reason() -> None:
    assert "spans the public suffix" in wildcard_refusal(wire_of("amazonaws.com"))
    assert "googleapis.com" in wildcard_refusal(wire_of("storage.googleapis.com"))
    assert "arpa" in wildcard_refusal(wire_of("b.0.f.1.0.7.4.0.1.0.0.2.ip6.arpa"))
    assert "tunnel" in wildcard_refusal(wire_of("example.com"), [wire_of("t.example.com")])
    assert wildcard_refusal(wire_of("example.com")) == ""
    assert wildcard_refusal(wire_of("example.co.uk")) == ""
