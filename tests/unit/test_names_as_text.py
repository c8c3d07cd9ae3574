"""Every place a name becomes text keeps it a label sequence: alerts, learned fields, propose.

A '.' inside a label is written ``\\.``, other non-printables ``\\DDD``; the text
parses back to the same wire name, and decisions (which domain, which entry
covers a name, which names are search-path tries) are taken on wire labels.
"""

from __future__ import annotations

import io
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from heuristics.names import labels_of, wire_of
from resolver import config as config_mod
from resolver.offline.propose import from_book
from resolver.pipeline.alerts import AlertHub, JsonlSink
from resolver.pipeline.learn import LearnBook, Seen, field_of, parse_field

_TRICKY = [0x2E, 0x5C, 0x00, 0x20, 0x22, 0x3B, 0x28, 0x40, 0x24, 0x80, 0xFF, 0x41, 0x61, 0x7C]
label = st.one_of(
    st.lists(st.sampled_from(_TRICKY), min_size=1, max_size=10).map(bytes),
    st.binary(min_size=1, max_size=40),
)


def build(labels: list[bytes], tail: bytes = b"\x04evil\x04test\x00") -> bytes:
    out = b"".join(bytes([len(lb)]) + lb for lb in labels) + tail
    return out[-255:] if len(out) <= 255 else build(labels[1:], tail)


names = st.builds(lambda labels: build(labels).lower(), st.lists(label, max_size=5))


@settings(max_examples=300, deadline=None)
@given(names, st.integers(min_value=0, max_value=65535))
def test_learned_field_round_trips(qname: bytes, qtype: int) -> None:
    field = field_of(qname, qtype)
    assert " " not in field.rpartition(" ")[0]  # a space inside a label is \032
    assert parse_field(field) == (qname, qtype)


@settings(max_examples=200, deadline=None)
@given(names)
def test_policy_alert_text_and_domain(qname: bytes) -> None:
    out = io.StringIO()
    hub = AlertHub([JsonlSink(stream=out)], window=60)
    hub.policy(0.0, "ns", "c", qname, 1, "blocked", ["not_allowed"], {})
    alert = json.loads(out.getvalue())
    assert alert["domain"] == "evil.test"  # every generated name is below evil.test
    assert wire_of(alert["qname"]) == qname
    assert all(0x20 <= ord(c) < 0x7F for c in alert["qname"])


def test_policy_alert_escapes_dot_inside_label() -> None:
    out = io.StringIO()
    hub = AlertHub([JsonlSink(stream=out)], window=60)
    hub.policy(0.0, "ns", "c", build([b"abc."]), 1, "blocked", ["not_allowed"], {})
    hub.policy(0.0, "ns", "c", build([b"x.evil"], b"\x04test\x00"), 1, "blocked", ["not_allowed"], {})
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["qname"] == "abc\\..evil.test"
    assert first["domain"] == "evil.test"
    assert second["qname"] == "x\\.evil.test"
    assert second["domain"] == "x\\.evil.test"


def _book(*entries: tuple[bytes, int]) -> LearnBook:
    book = LearnBook()
    for qname, rcode in entries:
        book.merge("default", qname, 1, Seen(1, 1_800_000_000.0, 1_800_000_000.0, rcode))
    return book


def test_propose_leaves_out_every_name_under_a_flagged_domain_label_wise() -> None:
    cfg = config_mod.learn_all()
    book = _book(
        (build([b".abc"]), 0),                      # \.abc.evil.test: under evil.test
        (build([b"abc."]), 0),                      # abc\..evil.test: under evil.test
        (build([b"x.evil"], b"\x04test\x00"), 0),   # x\.evil.test: NOT under evil.test
        (wire_of("www.fine.test"), 0),
    )
    proposal = from_book(book, {"default": {"evil.test"}}, cfg, collapse=0)
    texts = {e.text for e in proposal.entries["default"]}
    assert texts == {"x\\.evil.test", "www.fine.test"}
    assert proposal.left_out_tunnel["default"] == 2
    # Every proposed entry parses back to a name that was asked.
    asked = {wire_of("www.fine.test"), build([b"x.evil"], b"\x04test\x00")}
    assert {wire_of(t) for t in texts} == asked


def test_propose_existing_wildcard_covers_only_names_below_it() -> None:
    cfg = config_mod.learn_all()
    ns = cfg.namespaces["default"]
    import dataclasses

    cfg = dataclasses.replace(cfg, namespaces={"default": dataclasses.replace(ns, allow=("*.example.org",))})
    lookalike = build([b"a", b"x.example"], b"\x03org\x00")  # a.x\.example.org: under org only
    book = _book((wire_of("h.example.org"), 0), (lookalike, 0))
    proposal = from_book(book, {}, cfg, collapse=0)
    by_text = {e.text: e for e in proposal.entries["default"]}
    assert by_text["*.example.org"].count == 1
    assert "a.x\\.example.org" in by_text


def test_propose_collapses_by_wire_domain() -> None:
    cfg = config_mod.learn_all()
    below = [build([f"h{i}".encode()], b"\x07example\x03org\x00") for i in range(5)]
    dotted = [build([f"h{i}".encode(), b"x.example"], b"\x03org\x00") for i in range(5)]
    book = _book(*[(n, 0) for n in below + dotted])
    proposal = from_book(book, {}, cfg, collapse=5)
    texts = {e.text for e in proposal.entries["default"]}
    assert texts == {"*.example.org", "*.x\\.example.org"}
    for text in texts:
        assert len(labels_of(wire_of(text[2:]))) == 2
