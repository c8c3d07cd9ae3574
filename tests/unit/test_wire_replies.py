"""Replies dnsgate makes itself (denials, REFUSED, NOTIMP, BADVERS, TC) carry the
client's question and, when the query had EDNS, an OPT record (RFC 6891 section 7),
with an extended rcode's upper bits in it; dnspython reads each one back."""

from __future__ import annotations

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from hypothesis import given, settings
from hypothesis import strategies as st

from resolver.wire.message import (
    BADVERS,
    EDNS_PAYLOAD,
    answer_reply,
    header_reply,
    parse_query,
    truncated,
)

RCODES = [0, 1, 2, 3, 4, 5, BADVERS]


def _query(labels: list[bytes], qtype: int, edns: int | None, do: bool, msg_id: int) -> bytes:
    msg = dns.message.Message(id=msg_id)
    msg.flags = dns.flags.RD
    name = dns.name.Name([*labels, b""])
    msg.question.append(dns.rrset.RRset(name, dns.rdataclass.IN, dns.rdatatype.RdataType(qtype)))
    if edns is not None:
        msg.use_edns(0, dns.flags.DO if do else 0, edns)
    return msg.to_wire()


@settings(max_examples=200)
@given(
    st.lists(st.binary(min_size=1, max_size=20), min_size=1, max_size=4),
    st.integers(1, 0xFFFF),
    st.one_of(st.none(), st.integers(512, 0xFFFF)),
    st.booleans(),
    st.integers(0, 0xFFFF),
    st.sampled_from(RCODES),
)
def test_own_replies_carry_opt_when_the_query_did(
    labels: list[bytes], qtype: int, edns: int | None, do: bool, msg_id: int, rcode: int
) -> None:
    wire = _query(labels, qtype, edns, do, msg_id)
    q = parse_query(wire)
    if rcode > 15 and not q.has_edns:
        return  # an extended rcode needs an OPT record to travel in: only sent with EDNS
    reply = dns.message.from_wire(header_reply(wire, q, rcode))
    asked = dns.message.from_wire(wire)
    assert reply.id == msg_id
    assert reply.flags & dns.flags.QR
    assert reply.rcode() == rcode
    assert reply.question == asked.question
    if edns is None:
        assert reply.edns == -1
    else:
        assert reply.edns == 0
        assert reply.payload == EDNS_PAYLOAD
        assert bool(reply.ednsflags & dns.flags.DO) is do
        assert not reply.options


@given(st.booleans(), st.booleans())
def test_answers_and_truncated_replies_put_opt_last(edns: bool, do: bool) -> None:
    wire = _query([b"www", b"example"], 1, 1232 if edns else None, do, 7)
    q = parse_query(wire)
    record = b"\xc0\x0c" + bytes.fromhex("0001 0001 0000012c 0004 c0000201".replace(" ", ""))
    reply = dns.message.from_wire(answer_reply(wire, q, [record]))
    assert [rr.to_text() for rr in reply.answer] == ["www.example. 300 IN A 192.0.2.1"]
    assert reply.edns == (0 if edns else -1)
    tc = dns.message.from_wire(truncated(wire, q))
    assert tc.flags & dns.flags.TC
    assert tc.edns == (0 if edns else -1)


def test_badvers_is_answered_with_version_zero() -> None:
    msg = dns.message.make_query("www.example.", "A", use_edns=1)
    wire = msg.to_wire()
    q = parse_query(wire)
    assert q.edns_version == 1
    reply = dns.message.from_wire(header_reply(wire, q, BADVERS))
    assert reply.rcode() == dns.rcode.BADVERS
    assert reply.edns == 0
