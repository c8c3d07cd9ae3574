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
from resolver.pipeline.loop import LoopGuard
from resolver.wire.message import MalformedMessage, Question, parse_query

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


MARK = b"\xd5gate-01"
LOOP_MARKS = st.lists(st.binary(min_size=8, max_size=8), max_size=3)


def opt_record(payload: int, ttl: int, opts: list[tuple[int, bytes]]) -> bytes:
    data = b"".join(struct.pack("!HH", code, len(value)) + value for code, value in opts)
    return b"\x00" + struct.pack("!HHIH", 41, payload, ttl, len(data)) + data


# After the question: an OPT record with any fields and options (loop marks among them),
# then any octets; or any octets at all. Header counts and flags are any too.
after_question = st.one_of(
    st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF), options, LOOP_MARKS, st.binary(max_size=60)).map(
        lambda t: (opt_record(t[0], t[1], [*t[2], *((65353, m) for m in t[3])]), t[4])),
    st.binary(max_size=120).map(lambda tail: (b"", tail)),
)


@settings(max_examples=1000)
@given(labels, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 0x7FFF), st.integers(0, 0xFFFF),
       st.integers(0, 2), after_question)
def test_the_upstream_sees_only_the_question_and_dnsgates_opt(
    name_labels: list[bytes], qtype: int, qclass: int, flags: int, msg_id: int, arcount: int,
    after: tuple[bytes, bytes],
) -> None:
    """Whatever follows the question (records, options, OPT fields, octets past the last
    record), what leaves is a fresh header, the question lowercased, and dnsgate's OPT:
    its own size, the client's DO bit, distinct 8-octet loop marks, then its own."""
    name = b"".join(bytes([len(label)]) + label for label in name_labels) + b"\x00"
    opt, tail = after
    question = name + struct.pack("!HH", qtype, qclass)
    wire = struct.pack("!HHHHHH", msg_id, flags & ~0x7800, 1, 0, 0, arcount) + question + opt + tail
    try:
        q = parse_query(wire)
    except MalformedMessage:
        return
    sent = LoopGuard(MARK).marked(wire, q)
    head = struct.pack("!HHHHHH", 0, flags & 0x0130, 1, 0, 0, 1) + name.lower() + question[-4:]
    assert sent[: len(head)] == head  # ID 0 until the forwarder draws one; RD, AD, CD only
    rdata = sent[len(head) + 11 :]
    assert sent[len(head) : len(head) + 11] == b"\x00" + struct.pack("!HHIH", 41, 1232, 0x8000 if q.do else 0, len(rdata))
    marks = [rdata[i + 4 : i + 12] for i in range(0, len(rdata), 12)]
    assert rdata == b"".join(struct.pack("!HH", 65353, 8) + m for m in marks)  # loop marks, nothing else
    assert marks[-1] == MARK
    assert len(set(marks)) == len(marks) <= 8
    assert all(m in wire for m in marks[:-1])  # each an octet string the client sent
    if arcount == 1 and opt:
        # The client's OPT was read: its loop marks of 8 octets go on, once each, in order.
        client = [value for code, value in parse_options(opt) if code == 65353 and len(value) == 8]
        assert marks[:-1] == list(dict.fromkeys(client))[:7]
    again = dns.message.from_wire(sent)  # a message any upstream can read
    assert (len(again.answer), len(again.authority), len(again.additional)) == (0, 0, 0)


def parse_options(opt: bytes) -> list[tuple[int, bytes]]:
    found, pos = [], 11
    while pos + 4 <= len(opt):
        code, length = struct.unpack_from("!HH", opt, pos)
        found.append((code, opt[pos + 4 : pos + 4 + length]))
        pos += 4 + length
    return found
