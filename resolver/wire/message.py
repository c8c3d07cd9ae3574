"""DNS wire format on the hot path: read the question, patch IDs, build small replies.

A full message decode costs tens of microseconds per query; reading the
question section straight from the wire costs about one. Everything here works
on bytes and never assumes labels are ASCII: tunnels put any octet in a label.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

HEADER: Final = struct.Struct("!HHHHHH")
U16: Final = struct.Struct("!H")
U32: Final = struct.Struct("!I")

# Header flag bits.
QR: Final = 0x8000
AA: Final = 0x0400
TC: Final = 0x0200
RD: Final = 0x0100
RA: Final = 0x0080
AD: Final = 0x0020
CD: Final = 0x0010
OPCODE_MASK: Final = 0x7800

# Response codes.
NOERROR: Final = 0
FORMERR: Final = 1
SERVFAIL: Final = 2
NXDOMAIN: Final = 3
NOTIMP: Final = 4
REFUSED: Final = 5
BADVERS: Final = 16  # extended: the upper bits travel in the OPT record (RFC 6891)

RCODE_NAMES = {
    NOERROR: "NOERROR",
    FORMERR: "FORMERR",
    SERVFAIL: "SERVFAIL",
    NXDOMAIN: "NXDOMAIN",
    NOTIMP: "NOTIMP",
    REFUSED: "REFUSED",
}

TYPE_A: Final = 1
TYPE_NS: Final = 2
TYPE_CNAME: Final = 5
TYPE_SOA: Final = 6
TYPE_TXT: Final = 16
TYPE_AAAA: Final = 28
TYPE_OPT: Final = 41
CLASS_IN: Final = 1

MAX_NAME: Final = 255


class MalformedMessage(ValueError):
    """The bytes are not a DNS message we can answer (say why)."""


@dataclass(slots=True, init=False)
class Question:
    """The one question of a query, read straight from the wire.

    ``qname`` is the uncompressed wire-format name lowercased (ASCII A-Z only;
    other octets are compared as they are), the key for policy, cache and
    detection. ``end`` is the offset just after the question section.
    """

    qname: bytes
    qtype: int
    qclass: int
    end: int
    udp_size: int  # the client's EDNS0 buffer size, 512 without EDNS
    do: bool  # DNSSEC OK bit from the client's OPT record
    has_edns: bool
    edns_version: int  # the OPT record's VERSION (0 without EDNS); only 0 is implemented

    def __init__(
        self, qname: bytes, qtype: int, qclass: int, end: int, udp_size: int, do: bool, has_edns: bool,
        edns_version: int = 0,
    ) -> None:
        self.qname = qname
        self.qtype = qtype
        self.qclass = qclass
        self.end = end
        self.udp_size = udp_size
        self.do = do
        self.has_edns = has_edns
        self.edns_version = edns_version


def read_name(wire: bytes, offset: int) -> tuple[bytes, int]:
    """Read an uncompressed-or-compressed name; return (uncompressed wire name, next offset).

    Compression pointers may only point backwards, which also makes loops impossible.
    """
    labels = bytearray()
    end = -1
    pos = offset
    limit = len(wire)
    while True:
        if pos >= limit:
            raise MalformedMessage("name runs past the end of the message")
        length = wire[pos]
        if length == 0:
            labels.append(0)
            if end < 0:
                end = pos + 1
            break
        if length & 0xC0 == 0xC0:
            if pos + 1 >= limit:
                raise MalformedMessage("truncated compression pointer")
            target = ((length & 0x3F) << 8) | wire[pos + 1]
            if target >= pos:
                raise MalformedMessage("compression pointer does not point backwards")
            if end < 0:
                end = pos + 2
            pos = target
            continue
        if length & 0xC0:
            raise MalformedMessage(f"unknown label type 0x{length:02x}")
        stop = pos + 1 + length
        if stop > limit:
            raise MalformedMessage("label runs past the end of the message")
        labels += wire[pos:stop]
        if len(labels) > MAX_NAME - 1:
            raise MalformedMessage("name longer than 255 octets")
        pos = stop
    return bytes(labels), end


def _u16(wire: bytes, pos: int) -> int:
    """The big-endian 16-bit field at ``pos`` (the caller has checked it is there): two
    octets read where ``struct`` would build a tuple, compiled or not."""
    return (wire[pos] << 8) | wire[pos + 1]


def skip_name(wire: bytes, pos: int) -> int:
    """Return the offset after the name at ``pos`` without building it."""
    limit = len(wire)
    while True:
        if pos >= limit:
            raise MalformedMessage("name runs past the end of the message")
        length = wire[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:
            return pos + 2
        if length & 0xC0:
            raise MalformedMessage(f"unknown label type 0x{length:02x}")
        pos += 1 + length


def question_name(wire: bytes) -> tuple[bytes, int]:
    """The name of a message's question at offset 12 and the offset after it, as
    :func:`read_name` gives them: a straight run of labels is sliced once (a question
    name has no pointer to point back to); anything else takes read_name's path."""
    pos = 12
    try:
        length = wire[pos]
        while length:
            if length > 63:
                return read_name(wire, 12)  # a pointer or bad label type: the slow path says which
            pos += length + 1
            length = wire[pos]
    except IndexError:
        raise MalformedMessage("name runs past the end of the message") from None
    pos += 1
    if pos - 12 > MAX_NAME:
        raise MalformedMessage("name longer than 255 octets")
    return wire[12:pos], pos


def _check_options(wire: bytes, start: int, end: int) -> None:
    """Raise MalformedMessage unless the OPT data ``wire[start:end]`` is a run of whole
    options (code, length, data), as RFC 6891 section 6.1.2 lays them out."""
    if end > len(wire):
        return  # the record itself runs past the message: the caller says so
    pos = start
    while pos < end:
        if pos + 4 > end:
            raise MalformedMessage("EDNS option header runs past the OPT record")
        pos += 4 + _u16(wire, pos + 2)
        if pos > end:
            raise MalformedMessage("EDNS option runs past the OPT record")


def parse_query(wire: bytes) -> Question:
    """Read the question of a query; raise MalformedMessage when it cannot be answered.

    Exactly one question is required (RFC 9619), its name without compression
    pointers. The additional section may hold one record, an OPT (EDNS0 size, DO
    bit), whose options must fill its data exactly; any other record there is
    refused, as Unbound refuses it. Octets after the last record are ignored, as
    Unbound and BIND ignore them: none of it is forwarded (:func:`upstream_query`).
    """
    if len(wire) < 12:
        raise MalformedMessage("shorter than a DNS header")
    flags = _u16(wire, 2)
    qdcount = _u16(wire, 4)
    ancount = _u16(wire, 6)
    nscount = _u16(wire, 8)
    arcount = _u16(wire, 10)
    if flags & QR:
        raise MalformedMessage("a response, not a query")
    if qdcount != 1:
        raise MalformedMessage(f"QDCOUNT is {qdcount}, expected 1")
    if (ancount or nscount) and not flags & OPCODE_MASK:
        # A lookup carries nothing but its question and EDNS; other opcodes get NOTIMP later.
        raise MalformedMessage(f"ANCOUNT {ancount}, NSCOUNT {nscount} in a query, expected 0")
    qname, pos = question_name(wire)
    if pos - 12 != len(qname):
        # The question holds the message's first name: a pointer in it can only point into
        # the header or into the name itself, never at an earlier name. Refused as Unbound
        # refuses it: the header is rewritten before forwarding (ID, ARCOUNT with the loop
        # mark's OPT), so the upstream could read another name than the one policy allowed.
        raise MalformedMessage("compression pointer in the question name")
    if pos + 4 > len(wire):
        raise MalformedMessage("question truncated")
    qtype = _u16(wire, pos)
    qclass = _u16(wire, pos + 2)
    end = pos + 4
    udp_size, do, has_edns, version = 512, False, False, 0
    if arcount > 1:
        # A query's additional section has room for its OPT record and nothing else
        # (a second OPT is refused by RFC 6891 section 6.1.1; TSIG is not served here).
        raise MalformedMessage(f"ARCOUNT {arcount} in a query, expected 0 or 1 (an OPT record)")
    if arcount and not (ancount or nscount):
        p = skip_name(wire, end)
        if p + 10 > len(wire):
            raise MalformedMessage("additional record truncated")
        if _u16(wire, p) != TYPE_OPT:
            raise MalformedMessage(f"a type {_u16(wire, p)} record in a query's additional section, expected OPT")
        if wire[end] != 0:
            raise MalformedMessage("OPT record not owned by the root")
        has_edns = True
        udp_size = max(512, _u16(wire, p + 2))  # the OPT record's class
        do = bool(wire[p + 6] & 0x80)  # the DO bit, at the top of the TTL's third octet
        version = wire[p + 5]  # the TTL's second octet
        _check_options(wire, p + 10, p + 10 + _u16(wire, p + 8))
        if p + 10 + _u16(wire, p + 8) > len(wire):
            raise MalformedMessage("additional record truncated")
    return Question(qname.lower(), qtype, qclass, end, udp_size, do, has_edns, version)


def header_reply(query: bytes, q: Question | None, rcode: int, *, aa: bool = False) -> bytes:
    """A reply carrying only the header and the client's own question section, and an OPT
    record when the query had one (RFC 6891 section 7)."""
    return _reply(query, q, rcode, aa, [])


def _reply(query: bytes, q: Question | None, rcode: int, aa: bool, records: list[bytes]) -> bytes:
    """Header, the client's question, ``records`` (encoded) as the answer, then OPT if the
    query had EDNS. An extended rcode (BADVERS) keeps its upper bits in the OPT record."""
    msg_id, flags = struct.unpack_from("!HH", query, 0)
    out_flags = QR | (flags & (OPCODE_MASK | RD | CD)) | RA | (rcode & 0xF)
    if aa:
        out_flags |= AA
    if q is None:
        return HEADER.pack(msg_id, out_flags, 0, 0, 0, 0)
    if not q.has_edns:
        return HEADER.pack(msg_id, out_flags, 1, len(records), 0, 0) + query[12 : q.end] + b"".join(records)
    # OPT: root owner, our UDP size, extended rcode and version 0 in the TTL, the DO bit
    # echoed (RFC 3225), no options.
    ttl = ((rcode >> 4) << 24) | (0x8000 if q.do else 0)
    opt = b"\x00" + struct.pack("!HHIH", TYPE_OPT, EDNS_PAYLOAD, ttl, 0)
    return HEADER.pack(msg_id, out_flags, 1, len(records), 0, 1) + query[12 : q.end] + b"".join(records) + opt


def formerr(query: bytes) -> bytes | None:
    """FORMERR for a message whose header at least is readable, else None (drop)."""
    if len(query) < 12:
        return None
    msg_id, flags = struct.unpack_from("!HH", query, 0)
    if flags & QR:
        return None  # never answer a response: that is how reflection loops start
    return HEADER.pack(msg_id, QR | (flags & (OPCODE_MASK | RD)) | FORMERR, 0, 0, 0, 0)


def truncated(query: bytes, q: Question) -> bytes:
    """An empty reply with TC set, asking the client to retry over TCP."""
    reply = bytearray(header_reply(query, q, NOERROR))
    reply[2] |= TC >> 8
    return bytes(reply)


def rr(name_ptr: bytes, rtype: int, ttl: int, rdata: bytes) -> bytes:
    """One resource record; ``name_ptr`` is a wire name or compression pointer."""
    return name_ptr + struct.pack("!HHIH", rtype, CLASS_IN, ttl, len(rdata)) + rdata


QNAME_POINTER: Final = b"\xc0\x0c"


def answer_reply(query: bytes, q: Question, records: list[bytes], *, aa: bool = True) -> bytes:
    """A NOERROR reply with ``records`` (already encoded) in the answer section."""
    return _reply(query, q, NOERROR, aa, records)


def fit_udp(reply: bytes, query: bytes, q: Question) -> bytes:
    """Make a reply fit the client's UDP buffer: too large becomes TC=1."""
    if len(reply) <= q.udp_size:
        return reply
    return truncated(query, q)


@dataclass(slots=True, init=False)
class ReplyInfo:
    """What the cache needs to know of an upstream reply."""

    rcode: int
    ttl: int  # seconds this reply may be cached (RFC 2308 for negative answers)
    ttl_offsets: tuple[int, ...]  # offsets of every TTL field but OPT's
    over_max_ttl: bool  # some TTL is above max_ttl or has its top bit set: clamp_ttls before anyone sees it
    truncated: bool

    # Written out: compiled, a dataclass's generated __init__ runs in the interpreter.
    def __init__(
        self, rcode: int, ttl: int, ttl_offsets: tuple[int, ...], over_max_ttl: bool, truncated: bool
    ) -> None:
        self.rcode = rcode
        self.ttl = ttl
        self.ttl_offsets = ttl_offsets
        self.over_max_ttl = over_max_ttl
        self.truncated = truncated


MAX_TTL: Final = 0x7FFFFFFF  # RFC 2181 section 8: a TTL with the top bit set is read as 0


def ttl_limit(max_ttl: int) -> int:
    """The largest TTL a client may be handed: ``max_ttl``, within 0 and 2**31 - 1."""
    return 0 if max_ttl < 0 else min(max_ttl, MAX_TTL)


def inspect_reply(wire: bytes, qd_end: int, *, max_ttl: int, neg_ttl: int) -> ReplyInfo:
    """Walk a reply's records once: TTLs, their offsets, SOA minimum.

    The CNAME/DNAME chain is the scrubber's to read (``UpstreamAnswer.targets``),
    DNAME-synthesised names included. A TTL above ``max_ttl`` counts as ``max_ttl``, one with the top bit set as 0
    (RFC 2181 section 8); ``over_max_ttl`` says the wire still holds such a TTL.
    """
    _, flags, _qdcount, ancount, nscount, arcount = HEADER.unpack_from(wire, 0)
    rcode = flags & 0xF
    limit = ttl_limit(max_ttl)
    over = False
    pos = qd_end
    offsets: list[int] = []
    ttls: list[int] = []
    negative_ttl: int | None = None
    for section, count in ((1, ancount), (2, nscount), (3, arcount)):
        for _ in range(count):
            pos = skip_name(wire, pos)
            if pos + 10 > len(wire):
                raise MalformedMessage("record truncated")
            rtype, _rclass, ttl, rdlen = struct.unpack_from("!HHIH", wire, pos)
            if pos + 10 + rdlen > len(wire):
                raise MalformedMessage("record data runs past the end of the message")
            if rtype != TYPE_OPT:
                offsets.append(pos + 4)
                if ttl > limit:
                    over = True
                    ttl = 0 if ttl > MAX_TTL else limit
                if section == 1:
                    ttls.append(ttl)
                if rtype == TYPE_SOA and section == 2:
                    if rdlen < 22:  # two names of at least one octet and five 32-bit fields
                        raise MalformedMessage("SOA record cut short")
                    rdata_end = pos + 10 + rdlen
                    minimum = U32.unpack_from(wire, rdata_end - 4)[0]
                    negative_ttl = min(ttl, minimum)
            pos += 10 + rdlen
    if rcode == NOERROR and ttls:
        ttl = min(ttls)
    elif rcode in (NOERROR, NXDOMAIN):
        ttl = negative_ttl if negative_ttl is not None else 0
        ttl = min(ttl, neg_ttl)
    else:
        ttl = 0
    return ReplyInfo(rcode, min(ttl, limit), tuple(offsets), over, bool(flags & TC))


def clamp_ttls(wire: bytes, offsets: tuple[int, ...], max_ttl: int) -> bytes:
    """Every TTL at ``offsets`` lowered to ``max_ttl``, and one with the top bit set to 0
    (RFC 2181 section 8). Called only for a reply :func:`inspect_reply` found one in."""
    limit = ttl_limit(max_ttl)
    out = bytearray(wire)
    for off in offsets:
        ttl = U32.unpack_from(out, off)[0]
        if ttl > limit:
            U32.pack_into(out, off, 0 if ttl > MAX_TTL else limit)
    return bytes(out)


def patch_ttls(wire: bytes, offsets: tuple[int, ...], elapsed: int) -> bytes:
    """Lower every TTL by ``elapsed`` seconds (never below zero)."""
    if not elapsed or not offsets:
        return wire
    out = bytearray(wire)
    for off in offsets:
        ttl = U32.unpack_from(out, off)[0]
        U32.pack_into(out, off, ttl - elapsed if ttl > elapsed else 0)
    return bytes(out)


def name_from_text(text: str) -> bytes:
    """Wire form of a presentation-format name (lowercased), via dnspython."""
    import dns.name

    return dns.name.from_text(text).to_wire().lower()  # type: ignore[union-attr]


def parent(wire_name: bytes) -> bytes:
    """The wire name one label up (the root stays the root)."""
    if wire_name == b"\x00":
        return wire_name
    return wire_name[1 + wire_name[0] :]


EDNS_PAYLOAD: Final = 1232  # the size a forwarder offers when it adds EDNS itself (DNS flag day 2020)


def _additional_records(wire: bytes, start: int) -> list[tuple[int, int, int]]:
    """(record start, rdata start, record end) of each additional record of a query."""
    arcount = _u16(wire, 10)
    records = []
    pos = start
    for _ in range(arcount):
        begin = pos
        pos = skip_name(wire, pos)
        if pos + 10 > len(wire):
            raise MalformedMessage("additional record truncated")
        rdlen = _u16(wire, pos + 8)
        records.append((begin, pos + 10, pos + 10 + rdlen))
        pos += 10 + rdlen
    return records


def edns_options(wire: bytes, q: Question, code: int) -> list[bytes]:
    """The data of every EDNS option ``code`` in a query's OPT record."""
    found: list[bytes] = []
    if not q.has_edns:
        return found
    for begin, rdata, end in _additional_records(wire, q.end):
        if _u16(wire, skip_name(wire, begin)) != TYPE_OPT:
            continue
        pos = rdata
        while pos + 4 <= end:
            option = _u16(wire, pos)
            length = _u16(wire, pos + 2)
            if option == code:
                found.append(wire[pos + 4 : min(pos + 4 + length, end)])
            pos += 4 + length
    return found


# Header bits a forwarded query keeps from the client's: recursion desired, checking
# disabled, and AD (RFC 6840 section 5.7: the client understands it). Opcode, Z, TC and
# RCODE are written by dnsgate.
FORWARDED_FLAGS: Final = RD | AD | CD


def upstream_query(wire: bytes, q: Question, options: bytes) -> bytes:
    """The query as it leaves for an upstream, built anew from what was checked.

    Header (ID 0: the forwarder draws one per attempt; the flags of
    ``FORWARDED_FLAGS`` the client set; one question, one additional record),
    the question with its name as policy and the detector read it (lowercased),
    and dnsgate's own OPT: its UDP size (``EDNS_PAYLOAD``), the client's DO bit,
    version 0, and ``options`` (encoded options, the loop guard's). Nothing else
    the client sent goes on: not its other records, its EDNS options, its OPT
    record's size, extended RCODE or Z bits, nor octets after its last record.
    The question keeps its offset and length, so ``q.end`` holds for the result.
    """
    flags = _u16(wire, 2) & FORWARDED_FLAGS
    ttl = 0x8000 if q.do else 0
    opt = b"\x00" + struct.pack("!HHIH", TYPE_OPT, EDNS_PAYLOAD, ttl, len(options)) + options
    return HEADER.pack(0, flags, 1, 0, 0, 1) + q.qname + wire[q.end - 4 : q.end] + opt


def restore_case(reply: bytes, name: bytes) -> bytes:
    """The upstream's ``reply`` with the client's letter case put back where the upstream copied
    the query name: the question, and names that begin with the query name's first labels,
    written out, as owner names or CNAME targets (a CNAME synthesized from a DNAME keeps the
    query name's labels before the DNAME's target).

    ``name`` is the client's question name; the reply's question holds the same octets but for
    case (the forwarder checked). Only the case of letters changes, so a name matched by chance
    keeps its meaning. A reply that cannot be walked is left to the scrubber to refuse.
    """
    size = len(name)
    sent = reply[12 : 12 + size]
    if sent == name:
        return reply
    out = bytearray(reply)
    out[12 : 12 + size] = name
    start = 12 + size + 4
    if sent[: sent[0] + 1] not in reply[start:]:
        return bytes(out)  # the usual reply: every later name is a pointer or another name
    try:
        pos = start
        for _ in range(_u16(reply, 6) + _u16(reply, 8) + _u16(reply, 10)):
            _put_case(out, pos, sent, name)
            pos = skip_name(reply, pos)
            if pos + 10 > len(reply):
                break
            if _u16(reply, pos) == TYPE_CNAME:
                _put_case(out, pos + 10, sent, name)
            pos += 10 + _u16(reply, pos + 8)
    except (MalformedMessage, IndexError):
        pass
    return bytes(out)


def _put_case(out: bytearray, pos: int, sent: bytes, name: bytes) -> None:
    """Where the labels written at ``pos`` begin as ``sent``'s do, octet for octet, write ``name``'s."""
    matched = 0
    while sent[matched]:
        stop = matched + 1 + sent[matched]
        if out[pos + matched : pos + stop] != sent[matched:stop]:
            break
        matched = stop
    if matched:
        out[pos : pos + matched] = name[:matched]


def without_trailing_opt(wire: bytes) -> bytes | None:
    """The message with its OPT record cut off, when OPT is its last record; else None."""
    _, _, qdcount, ancount, nscount, arcount = HEADER.unpack_from(wire, 0)
    if not arcount:
        return None
    pos = 12
    for _ in range(qdcount):
        pos = skip_name(wire, pos) + 4
    last = pos
    for _ in range(ancount + nscount + arcount):
        last = pos
        pos = skip_name(wire, pos)
        if pos + 10 > len(wire):
            raise MalformedMessage("record truncated")
        pos += 10 + U16.unpack_from(wire, pos + 8)[0]
    if pos != len(wire) or U16.unpack_from(wire, skip_name(wire, last))[0] != TYPE_OPT:
        return None
    out = bytearray(wire[:last])
    U16.pack_into(out, 10, arcount - 1)
    return bytes(out)
