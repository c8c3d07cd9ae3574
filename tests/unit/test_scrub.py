"""The scrubber in-process: chain rules, bailiwick, and no exception but MalformedReply."""

from __future__ import annotations

import dns.edns
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resolver.pipeline.loop import LOOP_OPTION
from resolver.pipeline.scrub import MalformedReply, scrub
from resolver.wire.message import parse_query


def exchange(qname: str, rdtype: str, *answer: str, authority: tuple[str, ...] = (), additional: tuple[str, ...] = (),
             rcode: int = dns.rcode.NOERROR) -> tuple[bytes, bytes]:
    query = dns.message.make_query(qname, rdtype, use_edns=0)
    reply = dns.message.make_response(query)
    reply.set_rcode(rcode)
    for section, lines in ((reply.answer, answer), (reply.authority, authority), (reply.additional, additional)):
        for line in lines:
            name, ttl, rtype, *rdata = line.split()
            section.append(dns.rrset.from_text(name, int(ttl), "IN", rtype, " ".join(rdata)))
    return query.to_wire(), reply.to_wire()


def run(query: bytes, reply: bytes) -> dns.message.Message:
    return scrub(reply, parse_query(query)).message


def kept(msg: dns.message.Message) -> list[tuple[str, str]]:
    return [(r.name.to_text(), dns.rdatatype.to_text(r.rdtype)) for r in msg.answer]


def test_dname_chain_is_followed_and_its_synthesis_checked() -> None:
    q, r = exchange(
        "www.old.test.", "A",
        "old.test. 60 DNAME new.test.",
        "www.old.test. 60 CNAME www.new.test.",
        "www.new.test. 60 A 192.0.2.1",
        "evil.test. 60 A 6.6.6.6",
    )
    assert kept(run(q, r)) == [("old.test.", "DNAME"), ("www.old.test.", "CNAME"), ("www.new.test.", "A")]


def test_a_cname_that_contradicts_its_dname_is_dropped() -> None:
    q, r = exchange(
        "www.old.test.", "A",
        "old.test. 60 DNAME new.test.",
        "www.old.test. 60 CNAME elsewhere.test.",
        "elsewhere.test. 60 A 6.6.6.6",
        "www.new.test. 60 A 192.0.2.1",
    )
    assert kept(run(q, r)) == [("old.test.", "DNAME"), ("www.new.test.", "A")]


def test_cname_loop_ends() -> None:
    q, r = exchange("a.test.", "A", "a.test. 60 CNAME b.test.", "b.test. 60 CNAME a.test.")
    assert kept(run(q, r)) == [("a.test.", "CNAME"), ("b.test.", "CNAME")]


def test_any_keeps_everything_at_the_name_and_nothing_else() -> None:
    q, r = exchange("a.test.", "ANY", "a.test. 60 A 192.0.2.1", "a.test. 60 TXT x", "b.test. 60 A 192.0.2.2")
    assert kept(run(q, r)) == [("a.test.", "A"), ("a.test.", "TXT")]


def test_asking_for_the_cname_itself_does_not_follow_it() -> None:
    q, r = exchange("a.test.", "CNAME", "a.test. 60 CNAME b.test.", "b.test. 60 A 192.0.2.2")
    assert kept(run(q, r)) == [("a.test.", "CNAME")]


def test_untouched_reply_keeps_the_upstream_bytes() -> None:
    q, r = exchange("a.test.", "A", "a.test. 60 A 192.0.2.1")
    assert scrub(r, parse_query(q)).wire == r


def test_opt_is_removed_for_a_client_without_edns() -> None:
    q, r = exchange("a.test.", "A", "a.test. 60 A 192.0.2.1")
    out = scrub(r, parse_query(q), client_edns=False)
    assert dns.message.from_wire(out.wire).opt is None


def test_authority_outside_the_zone_is_dropped() -> None:
    q, r = exchange(
        "x.a.test.", "A",
        authority=("a.test. 60 SOA ns.a.test. h.a.test. 1 2 3 4 5", "b.test. 60 NS ns.b.test.",
                   "zz.a.test. 60 NSEC zzz.a.test. A", "zz.b.test. 60 NSEC zzz.b.test. A"),
        rcode=dns.rcode.NXDOMAIN,
    )
    msg = run(q, r)
    assert [(x.name.to_text(), dns.rdatatype.to_text(x.rdtype)) for x in msg.authority] == [
        ("a.test.", "SOA"), ("zz.a.test.", "NSEC"),
    ]


@pytest.mark.parametrize("flags", [0x0100, 0x8000 | 0x2800])  # QR clear; opcode UPDATE
def test_not_a_query_response(flags: int) -> None:
    q, r = exchange("a.test.", "A", "a.test. 60 A 192.0.2.1")
    bad = r[:2] + flags.to_bytes(2, "big") + r[4:]
    with pytest.raises(MalformedReply):
        scrub(bad, parse_query(q))


def test_other_question_is_refused() -> None:
    q, _ = exchange("a.test.", "A")
    _, r = exchange("b.test.", "A", "b.test. 60 A 192.0.2.1")
    with pytest.raises(MalformedReply):
        scrub(r, parse_query(q))


QUERY, REPLY = exchange(
    "www.a.test.", "A", "www.a.test. 60 CNAME b.a.test.", "b.a.test. 60 A 192.0.2.1",
    authority=("a.test. 60 NS ns.a.test.",), additional=("ns.a.test. 60 A 192.0.2.53",),
)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mangled_replies_raise_only_malformed_reply(data: st.DataObject) -> None:
    """Flip, cut and splice octets after the question: a clean reply or MalformedReply, nothing else."""
    wire = bytearray(REPLY)
    start = len(QUERY) - 11  # after the question (the query ends with its 11-octet OPT)
    for _ in range(data.draw(st.integers(1, 6))):
        pos = data.draw(st.integers(start, len(wire) - 1))
        wire[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(start, len(wire)))
    try:
        out = scrub(bytes(wire[:cut]), parse_query(QUERY))
    except MalformedReply:
        return
    dns.message.from_wire(out.wire)  # what goes on decodes


# Option codes dnspython decodes as GenericOption (any octets are valid data), the loop guard's among them.
generic_codes = st.integers(0, 65535).filter(lambda c: dns.edns.get_option_class(c) is dns.edns.GenericOption)
reply_options = st.lists(
    st.tuples(st.one_of(st.just(LOOP_OPTION), generic_codes), st.binary(max_size=12)), max_size=8
)


def options_of(msg: dns.message.Message) -> list[tuple[int, bytes]]:
    return [(int(o.otype), o.to_wire()) for o in msg.options]


@settings(max_examples=200, deadline=None)
@given(reply_options, st.booleans(), st.booleans())
def test_the_loop_mark_never_leaves_the_scrubber_and_other_options_stay_in_order(
    options: list[tuple[int, bytes]], off_chain_record: bool, client_edns: bool
) -> None:
    """Whatever options an upstream's reply carries (an echo of the query's, say), none with
    the loop guard's code comes out, and the others are kept in their order."""
    answers = ["www.a.test. 60 A 192.0.2.1"] + (["evil.test. 60 A 6.6.6.6"] if off_chain_record else [])
    query, _ = exchange("www.a.test.", "A")
    reply = dns.message.from_wire(exchange("www.a.test.", "A", *answers, rcode=dns.rcode.FORMERR)[1])
    reply.use_edns(0, reply.ednsflags, 1232, options=[dns.edns.GenericOption(c, d) for c, d in options])
    out = scrub(reply.to_wire(), parse_query(query), client_edns=client_edns)
    sent = dns.message.from_wire(out.wire)
    expected = [(c, d) for c, d in options if c != LOOP_OPTION] if client_edns else []
    for msg in (sent, out.message):
        assert options_of(msg) == expected
        assert msg.rcode() == dns.rcode.FORMERR
        assert kept(msg) == [("www.a.test.", "A")]
    if not off_chain_record and LOOP_OPTION not in [c for c, _ in options] and client_edns:
        assert out.wire == reply.to_wire()  # nothing to take out: the upstream's own bytes


def test_the_loop_mark_is_stripped_from_an_extended_rcode_reply() -> None:
    query, _ = exchange("www.a.test.", "A")
    reply = dns.message.from_wire(exchange("www.a.test.", "A")[1])
    reply.set_rcode(dns.rcode.BADVERS)  # the rcode's upper bits live in the OPT record's TTL
    reply.use_edns(0, reply.ednsflags, 1232, options=[dns.edns.GenericOption(LOOP_OPTION, b"12345678")])
    sent = dns.message.from_wire(scrub(reply.to_wire(), parse_query(query)).wire)
    assert sent.options == ()
    assert sent.rcode() == dns.rcode.BADVERS
    assert sent.payload == 1232
