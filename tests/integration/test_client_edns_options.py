"""Nothing a client writes past its question reaches the upstream but its DO bit (and loop marks).

Client Subnet, cookies, padding or a private option code, records in the
additional section, the OPT record's size and spare bits, octets after the last
record: a client could fill any of them with anything; forwarded, they would
leave past the detector, which reads names. dnsgate builds what leaves anew. The upstream is a dnslib server on loopback that keeps every query
it receives (tests/support/rogue_upstream.py); dnsgate is a real process.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Iterator

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest
from dnslib import DNSRecord

from tests.support.harness import free_port
from tests.support.rogue_upstream import RogueUpstream, reply_with, rogue_upstream
from tests.support.upstream_servers import Dnsgate, basic_config, start_dnsgate

LOOP_OPTION = 65353
RECEIVED: list[bytes] = []
LOCK = threading.Lock()


def answer(request: DNSRecord, data: bytes) -> bytes:
    with LOCK:
        RECEIVED.append(data)
    return reply_with(request, f"an {request.q.qname!s} 60 A 192.0.2.7").pack()


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[RogueUpstream, int]]:
    with rogue_upstream(answer) as pair:
        yield pair


@pytest.fixture(scope="module")
def gate(upstream: tuple[RogueUpstream, int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dnsgate]:
    port = free_port()
    server = start_dnsgate(basic_config(port, upstream[1]), tmp_path_factory.mktemp("edns"), port)
    yield server
    assert server.stop() == 0


def _received_for(name: str) -> list[dns.message.Message]:
    with LOCK:
        raw = list(RECEIVED)
    messages = [dns.message.from_wire(data) for data in raw]
    return [m for m in messages if m.question[0].name.to_text().rstrip(".").lower() == name]


@pytest.mark.integration
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_only_the_loop_mark_leaves_with_the_query(gate: Dnsgate, transport: str) -> None:
    name = f"edns-{transport}.wild.test"
    options = [
        dns.edns.ECSOption("2001:db8:7365:6372:6574:2d64:6174:6121", 128),
        dns.edns.CookieOption(os.urandom(8), b""),
        dns.edns.GenericOption(65001, os.urandom(400)),
        dns.edns.GenericOption(12, b"\x00" * 32),  # padding
    ]
    query = dns.message.make_query(name, "A", use_edns=0, want_dnssec=True, payload=1400, options=options)
    ask = dns.query.udp if transport == "udp" else dns.query.tcp
    reply = ask(query, "127.0.0.1", port=gate.port, timeout=3)
    assert reply.rcode() == dns.rcode.NOERROR
    assert [rr.to_text() for rr in reply.answer] == [f"{name}. 60 IN A 192.0.2.7"]
    forwarded = _received_for(name)
    assert len(forwarded) == 1
    sent = forwarded[0]
    assert [option.otype for option in sent.options] == [LOOP_OPTION]  # dnsgate's own mark, nothing else
    assert sent.ednsflags & dns.flags.DO  # the DO bit is carried as the client sent it


def exchange(wire: bytes, port: int, transport: str) -> bytes:
    """Raw octets out, raw reply back: dnspython would not send what these tests send."""
    if transport == "udp":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(3)
            s.sendto(wire, ("127.0.0.1", port))
            return s.recv(65535)
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(struct.pack("!H", len(wire)) + wire)
        length = struct.unpack("!H", s.recv(2, socket.MSG_WAITALL))[0]
        return s.recv(length, socket.MSG_WAITALL)


def _raw_received_for(name: str) -> list[bytes]:
    with LOCK:
        raw = list(RECEIVED)
    return [data for data in raw if dns.message.from_wire(data).question[0].name.to_text().rstrip(".").lower() == name]


def a_query(name: str, **edns: object) -> bytes:
    query = dns.message.make_query(name, "A", **edns)  # type: ignore[arg-type]
    query.id = 0x4242
    return query.to_wire()


SECRET = b"SECRET-AWS-KEY=AKIAEXAMPLE1234567890"
TXT = b"\x01x\x00" + struct.pack("!HHIH", 16, 1, 0, len(SECRET) + 1) + bytes([len(SECRET)]) + SECRET


@pytest.mark.integration
@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("edns", [False, True], ids=["no-edns", "edns"])
def test_octets_after_the_last_record_never_leave(gate: Dnsgate, transport: str, edns: bool) -> None:
    """Accepted, as Unbound and BIND accept them, and dropped: the upstream gets the question,
    dnsgate's UDP size and the client's DO bit, the loop mark, nothing else."""
    name = f"tail-{transport}-{'edns' if edns else 'plain'}.wild.test"
    # The client's OPT: its own size, extended-RCODE and Z bits set, a cookie; then trailing octets.
    sent = a_query(name, use_edns=0, payload=4000, ednsflags=0x8000 | 0x7FFF, want_dnssec=True,
                   options=[dns.edns.CookieOption(SECRET[:8], b"")]) if edns else a_query(name)
    reply = dns.message.from_wire(exchange(sent + b"JUNKJUNKJUNKJUNK" + SECRET, gate.port, transport))
    assert reply.rcode() == dns.rcode.NOERROR
    assert [rr.to_text() for rr in reply.answer] == [f"{name}. 60 IN A 192.0.2.7"]
    forwarded = _raw_received_for(name)
    assert len(forwarded) == 1
    out = forwarded[0]
    question = sent[12 : sent.index(b"\x00\x00\x01\x00\x01", 12) + 5]
    opt_head = b"\x00" + struct.pack("!HHIH", 41, 1232, 0x8000 if edns else 0, 12) + struct.pack("!HH", LOOP_OPTION, 8)
    assert out[2:12] == struct.pack("!HHHHH", 0x0100, 1, 0, 0, 1)  # RD; one question, one OPT
    assert out[12 : 12 + len(question)].lower() == question.lower()  # the name in random case (0x20)
    assert out[12 + len(question) :] == opt_head + out[-8:]  # the mark's 8 octets end it
    assert SECRET[:8] not in out
    assert b"JUNK" not in out


@pytest.mark.integration
@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("layout", ["txt", "opt-then-txt", "txt-then-opt"])
def test_a_record_beside_the_opt_gets_formerr_and_never_leaves(gate: Dnsgate, transport: str, layout: str) -> None:
    name = f"extra-{transport}-{layout}.wild.test"
    plain = a_query(name)
    opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)
    extra = {"txt": TXT, "opt-then-txt": opt + TXT, "txt-then-opt": TXT + opt}[layout]
    wire = plain[:10] + struct.pack("!H", 1 if layout == "txt" else 2) + plain[12:] + extra
    reply = exchange(wire, gate.port, transport)
    assert reply[:2] == b"\x42\x42"
    assert reply[3] & 0x0F == dns.rcode.FORMERR
    assert _raw_received_for(name) == []


@pytest.mark.integration
def test_fresh_loop_marks_on_every_query_do_not_make_a_channel(gate: Dnsgate) -> None:
    """Loop marks of earlier hops are carried on, so a client could write its own: 7 fresh
    8-octet marks a query would be 56 octets a query the detector never reads. A client
    gets 8 distinct marks through (a real chain repeats its few), then none."""
    sent_marks: set[bytes] = set()
    for i in range(40):
        name = f"marks-{i}.wild.test"
        marks = [os.urandom(8) for _ in range(7)]
        sent_marks.update(marks)
        query = dns.message.make_query(
            name, "A", use_edns=0, options=[dns.edns.GenericOption(LOOP_OPTION, m) for m in marks]
        )
        reply = dns.query.udp(query, "127.0.0.1", port=gate.port, timeout=3)
        assert reply.rcode() == dns.rcode.NOERROR
    through: set[bytes] = set()
    for i in range(40):
        (forwarded,) = _received_for(f"marks-{i}.wild.test")
        through.update(o.to_wire() for o in forwarded.options if o.otype == LOOP_OPTION)
    # Of the 280 marks sent, 8 went through, plus dnsgate's own on every query.
    assert len(sent_marks) == 280
    assert len(through & sent_marks) == 8
    assert len(through - sent_marks) == 1
