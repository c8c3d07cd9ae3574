"""Malformed datagrams are answered FORMERR or dropped, and never stop a listener."""

from __future__ import annotations

import random
import socket
import struct
from collections.abc import Iterator

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from resolver.wire.message import MalformedMessage, parse_query, read_name
from tests.support.upstream_servers import Dnsgate, Unbound, basic_config, free_port, start_dnsgate

HEADER = struct.Struct("!HHHHHH")


def question(name: bytes = b"\x03www\x07allowed\x04test\x00") -> bytes:
    return name + struct.pack("!HH", 1, 1)


OPT = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)
TXT = b"\x01x\x00" + struct.pack("!HHIH", 16, 1, 0, 37) + b"\x24SECRET-AWS-KEY=AKIAEXAMPLE1234567890"

CASES = {
    "truncated header": b"\x12\x34\x01",
    "header only, qdcount 1": HEADER.pack(0x1234, 0x0100, 1, 0, 0, 0),
    "qdcount 0": HEADER.pack(0x1234, 0x0100, 0, 0, 0, 0),
    "qdcount 2": HEADER.pack(0x1234, 0x0100, 2, 0, 0, 0) + question() + question(),
    "pointer loop": HEADER.pack(0x1234, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c" + struct.pack("!HH", 1, 1),
    "pointer forward": HEADER.pack(0x1234, 0x0100, 1, 0, 0, 0) + b"\xc0\x20" + b"\x00" * 40,
    "two-pointer loop": HEADER.pack(0x1234, 0x0100, 1, 0, 0, 0) + b"\x01a\xc0\x0e" + struct.pack("!HH", 1, 1),
    "label past end": HEADER.pack(0x1234, 0x0100, 1, 0, 0, 0) + b"\x3fabc",
    "name over 255": HEADER.pack(0x1234, 0x0100, 1, 0, 0, 0) + b"\x3f" + b"a" * 63 + (b"\x3f" + b"b" * 63) * 4 + b"\x00" + struct.pack("!HH", 1, 1),
    "question truncated": HEADER.pack(0x1234, 0x0100, 1, 0, 0, 0) + b"\x01a\x00\x00",
    "bad label type": HEADER.pack(0x1234, 0x0100, 1, 0, 0, 0) + b"\x41abc\x00" + struct.pack("!HH", 1, 1),
    "a response": HEADER.pack(0x1234, 0x8180, 1, 0, 0, 0) + question(),
    "opt record truncated": HEADER.pack(0x1234, 0x0100, 1, 0, 0, 1) + question() + b"\x00\x00\x29",
    # The name ends with a pointer to the header's last octet (ARCOUNT, 0 here): read with
    # this header it is an allowed name; forwarded with the loop mark's OPT (ARCOUNT 1) an
    # upstream that follows any pointer reads a longer name under evil.test.
    "pointer into the header": HEADER.pack(0x1234, 0x0100, 1, 0, 0, 0)
    + b"\x0b\x04evil\x04test\x00\x03raw\x04wild\x04test\xc0\x0b" + struct.pack("!HH", 1, 1),
    "edns option past the opt record": HEADER.pack(0x1234, 0x0100, 1, 0, 0, 1) + question()
    + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x04" + struct.pack("!HH", 10, 200),
    "edns option header cut": HEADER.pack(0x1234, 0x0100, 1, 0, 0, 1) + question()
    + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x02\x00\x0a",
    # The additional section of a query holds its OPT record and nothing else (as Unbound
    # requires): a record there is octets the client chose that the detector never reads.
    "txt record in the additional section": HEADER.pack(0x1234, 0x0100, 1, 0, 0, 1) + question() + TXT,
    "txt record after the opt record": HEADER.pack(0x1234, 0x0100, 1, 0, 0, 2) + question() + OPT + TXT,
    "txt record before the opt record": HEADER.pack(0x1234, 0x0100, 1, 0, 0, 2) + question() + TXT + OPT,
    "two opt records": HEADER.pack(0x1234, 0x0100, 1, 0, 0, 2) + question() + OPT + OPT,
    "records in the answer section": HEADER.pack(0x1234, 0x0100, 1, 1, 0, 0) + question() + TXT,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_parser_rejects_with_a_reason(case: str) -> None:
    with pytest.raises(MalformedMessage):
        parse_query(CASES[case])


def test_parser_carries_any_octet_in_labels() -> None:
    name = b"\x05\xbc\xfd\x00A\x7f\x03NET\x00"
    q = parse_query(HEADER.pack(1, 0x0100, 1, 0, 0, 0) + question(name))
    assert q.qname == b"\x05\xbc\xfd\x00a\x7f\x03net\x00"
    assert read_name(b"\x00" * 12 + name, 12)[0] == name


@pytest.fixture(scope="module")
def gate(unbound_upstream: Unbound, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dnsgate]:
    port = free_port()
    server = start_dnsgate(basic_config(port, unbound_upstream.port), tmp_path_factory.mktemp("malformed"), port)
    yield server
    assert server.stop() == 0


def send(port: int, payload: bytes) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.3)
        s.sendto(payload, ("127.0.0.1", port))
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


def still_answers(port: int) -> None:
    """Ask as a stub resolver would: a few tries, over UDP then TCP."""
    query = dns.message.make_query("www.allowed.test", "A")
    for _ in range(3):
        try:
            reply = dns.query.udp(query, "127.0.0.1", port=port, timeout=1)
            break
        except dns.exception.Timeout:
            continue
    else:
        reply = dns.query.tcp(query, "127.0.0.1", port=port, timeout=2)
    assert reply.rcode() == dns.rcode.NOERROR


@pytest.mark.integration
def test_listener_answers_formerr_or_drops(gate: Dnsgate) -> None:
    for name, payload in CASES.items():
        reply = send(gate.port, payload)
        if name in ("truncated header", "a response"):
            assert reply is None, name  # unreadable header or a response: never answered
        else:
            assert reply is not None, name
            assert reply[:2] == b"\x12\x34", name
            assert reply[3] & 0x0F == 1, name  # FORMERR
            assert reply[2] & 0x80, name  # QR set
        still_answers(gate.port)


@pytest.mark.integration
def test_random_bytes_never_crash_the_listener(gate: Dnsgate) -> None:
    rng = random.Random(53)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(2000):
            s.sendto(rng.randbytes(rng.randrange(0, 600)), ("127.0.0.1", gate.port))
        # Mutations of a valid query reach deeper into the parser.
        valid = dns.message.make_query("www.allowed.test", "A", use_edns=0).to_wire()
        for _ in range(2000):
            data = bytearray(valid)
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            s.sendto(bytes(data[: rng.randrange(1, len(data) + 1)]), ("127.0.0.1", gate.port))
    still_answers(gate.port)
    assert gate.proc.poll() is None


@pytest.mark.integration
def test_tcp_garbage_and_framing(gate: Dnsgate) -> None:
    with socket.create_connection(("127.0.0.1", gate.port), timeout=2) as s:
        s.sendall(struct.pack("!H", 3) + b"\x00\x01\x02")  # too short to be a header: dropped
        good = dns.message.make_query("www.allowed.test", "A")
        good.id = 0x4242
        wire = good.to_wire()
        s.sendall(struct.pack("!H", len(wire)) + wire + struct.pack("!H", len(wire)) + wire)
        for _ in range(2):
            length = struct.unpack("!H", s.recv(2, socket.MSG_WAITALL))[0]
            reply = dns.message.from_wire(s.recv(length, socket.MSG_WAITALL))
            assert reply.id == 0x4242
            assert reply.rcode() == dns.rcode.NOERROR
    still_answers(gate.port)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("case", "payload"),
    [
        # DSO (RFC 8490) has no question at all; IQUERY with none; NOTIFY with two.
        ("dso", HEADER.pack(0x1234, 6 << 11, 0, 0, 0, 0)),
        ("iquery, qdcount 0", HEADER.pack(0x1234, 1 << 11, 0, 0, 0, 0)),
        ("notify, qdcount 2", HEADER.pack(0x1234, 4 << 11, 2, 0, 0, 0) + question() + question()),
    ],
)
def test_other_opcodes_get_notimp_whatever_their_sections(gate: Dnsgate, case: str, payload: bytes) -> None:
    reply = send(gate.port, payload)
    assert reply is not None, case
    assert reply[:2] == b"\x12\x34", case
    assert reply[3] & 0x0F == 4, case  # NOTIMP
    assert (reply[2] >> 3) & 0x0F == payload[2] >> 3, case  # the opcode echoed


@pytest.mark.integration
def test_edns_version_1_gets_badvers_and_never_a_cached_answer(gate: Dnsgate) -> None:
    plain = dns.query.udp(dns.message.make_query("api.allowed.test", "A", use_edns=0), "127.0.0.1",
                          port=gate.port, timeout=2)
    assert plain.rcode() == dns.rcode.NOERROR  # now cached under version 0
    reply = dns.query.udp(dns.message.make_query("api.allowed.test", "A", use_edns=1), "127.0.0.1",
                          port=gate.port, timeout=2)
    assert reply.rcode() == dns.rcode.BADVERS
    assert reply.edns == 0
    assert not reply.answer


@pytest.mark.integration
def test_replies_dnsgate_makes_carry_opt_when_the_query_did(gate: Dnsgate) -> None:
    denied = dns.query.udp(dns.message.make_query("www.denied.test", "A", use_edns=0, want_dnssec=True),
                           "127.0.0.1", port=gate.port, timeout=2)
    assert denied.rcode() == dns.rcode.NXDOMAIN
    assert denied.edns == 0
    assert denied.ednsflags & dns.flags.DO
    without = dns.query.udp(dns.message.make_query("www.denied.test", "A"), "127.0.0.1", port=gate.port, timeout=2)
    assert without.rcode() == dns.rcode.NXDOMAIN
    assert without.edns == -1
