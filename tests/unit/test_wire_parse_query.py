"""parse_query reads a query's header, question and OPT record as dnspython does, and
refuses anything else with MalformedMessage; cache_key packs the fields it keys on.

The header and record fields are read octet by octet (resolver/wire/message.py,
``_u16``); these properties hold that to dnspython's reading of the same octets,
for queries built with any name, type, class, EDNS size and DO bit, and to
"MalformedMessage or a Question" for any octets at all.
"""

from __future__ import annotations

import struct

import dns.flags
import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resolver.pipeline.cache import cache_key
from resolver.wire.message import MalformedMessage, Question, only_edns_option, parse_query

labels = st.lists(st.binary(min_size=1, max_size=20), min_size=1, max_size=5)


@settings(max_examples=300)
@given(
    labels,
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.one_of(st.none(), st.integers(0, 0xFFFF)),
    st.booleans(),
    st.integers(0, 0xFFFF),
)
def test_parse_query_reads_what_dnspython_reads(
    name_labels: list[bytes], qtype: int, qclass: int, payload: int | None, do: bool, msg_id: int
) -> None:
    msg = dns.message.Message(id=msg_id)
    msg.flags = dns.flags.RD
    name = dns.name.Name([*name_labels, b""])
    msg.question.append(dns.rrset.RRset(name, dns.rdataclass.RdataClass(qclass), dns.rdatatype.RdataType(qtype)))
    if payload is not None:
        msg.use_edns(0, dns.flags.DO if do else 0, payload)
    wire = msg.to_wire()
    name_wire = name.to_wire()
    assert name_wire is not None
    q = parse_query(wire)
    assert q.qname == name_wire.lower()
    assert (q.qtype, q.qclass) == (qtype, qclass)
    assert q.end == 12 + len(name_wire) + 4
    assert q.has_edns is (payload is not None)
    assert q.udp_size == (max(512, payload) if payload is not None else 512)
    assert q.do is (payload is not None and do)
    extra = (2 if q.do else 0) | (4 if q.has_edns else 0)
    assert cache_key(q, 0) == q.qname + struct.pack("!HHB", qtype, qclass, extra)
    assert cache_key(q, 0x0010) == q.qname + struct.pack("!HHB", qtype, qclass, extra | 8)


@settings(max_examples=500)
@given(st.binary(min_size=0, max_size=120), st.integers(0, 3), st.integers(0, 3))
def test_any_octets_give_a_question_or_malformed(body: bytes, ancount: int, arcount: int) -> None:
    wire = struct.pack("!HHHHHH", 7, 0x0100, 1, ancount, 0, arcount) + body
    try:
        q = parse_query(wire)
    except MalformedMessage:
        return
    assert isinstance(q, Question)
    assert 12 < q.end <= len(wire)


@settings(max_examples=300)
@given(labels, st.integers(0, 0x3FFF), st.integers(0, 3))
def test_a_compression_pointer_in_the_question_is_refused(name_labels: list[bytes], target: int, arcount: int) -> None:
    # A pointer can only point into the header or into the name itself: whatever it
    # reads now, the forwarded header differs (ID, ARCOUNT), so no pointer is accepted.
    prefix = b"".join(bytes([len(label)]) + label for label in name_labels)
    wire = (
        struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, arcount)
        + prefix
        + struct.pack("!H", 0xC000 | target)
        + struct.pack("!HH", 1, 1)
    )
    with pytest.raises(MalformedMessage):
        parse_query(wire)


options = st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=40)), max_size=4)


@settings(max_examples=300)
@given(options, st.integers(1, 200))
def test_edns_options_must_fill_the_opt_record(opts: list[tuple[int, bytes]], extra: int) -> None:
    data = b"".join(struct.pack("!HH", code, len(value)) + value for code, value in opts)
    question = b"\x03www\x07example\x03com\x00" + struct.pack("!HH", 1, 1)

    def query(rdata: bytes) -> bytes:
        opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, len(rdata)) + rdata
        return struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 1) + question + opt

    q = parse_query(query(data))
    assert q.has_edns
    if opts:
        # The last option claims more octets than the record holds: refused.
        at = sum(4 + len(value) for _, value in opts[:-1]) + 2
        bad = bytearray(data)
        struct.pack_into("!H", bad, at, len(opts[-1][1]) + extra)
        with pytest.raises(MalformedMessage):
            parse_query(query(bytes(bad)))
    # Octets after the last whole option that are not a whole option header: refused.
    with pytest.raises(MalformedMessage):
        parse_query(query(data + b"\x00\x0a"))


@settings(max_examples=300)
@given(options, st.integers(0, 0xFFFF))
def test_only_the_kept_option_code_survives(opts: list[tuple[int, bytes]], keep: int) -> None:
    data = b"".join(struct.pack("!HH", code, len(value)) + value for code, value in opts)
    question = b"\x03www\x07example\x03com\x00" + struct.pack("!HH", 1, 1)
    opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 0x8000, len(data)) + data
    wire = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 1) + question + opt
    out = only_edns_option(wire, parse_query(wire), keep)
    kept = b"".join(struct.pack("!HH", code, len(value)) + value for code, value in opts if code == keep)
    assert out == struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 1) + question + b"\x00" + struct.pack(
        "!HHIH", 41, 1232, 0x8000, len(kept)) + kept
    again = parse_query(out)
    assert (again.qname, again.has_edns, again.do, again.udp_size) == (b"\x03www\x07example\x03com\x00", True, True, 1232)
