"""An off-path forger must guess source port, ID and letter case together; real upstreams echo case.

A pod that can spoof the upstream's address could poison the cache of its whole
namespace with one accepted reply. dnsgate (a real process here) sends each
attempt from a socket of its own (a fresh random port), with a random ID and the
query name in random case (DNS 0x20, ``randomize_case``), and accepts only a
reply from the upstream's address and port whose ID and question, case included,
are the ones sent. The upstream is a UDP server on loopback written here that
records the source port and the octets of every query; for ``forge*`` names it
plays the forger first, from the upstream's own address and port and from
another port, knowing the port dnsgate used (the strongest forger), and only
then answers. The last test runs dnsgate in front of Unbound, NSD and BIND, the
servers the default ``randomize_case: true`` was checked against.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dns.message
import dns.rcode
import dns.rrset
import pytest

from benchmarks.servers import Nsd, allowed_names
from tests.support.harness import free_port
from tests.support.rpz_references import Bind
from tests.support.upstream_servers import Dnsgate, Unbound, basic_config, start_dnsgate

pytestmark = pytest.mark.integration

GENUINE = "192.0.2.7"
FORGED = {"other ids": "203.0.113.66", "swapped case": "203.0.113.67", "other name": "203.0.113.68",
          "other port": "203.0.113.69"}


def answer(query: dns.message.Message, address: str) -> bytes:
    """A reply to ``query``: its question as received (dnspython keeps the case), one A record."""
    reply = dns.message.make_response(query)
    reply.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "A", address))
    return reply.to_wire()


@dataclass
class RecordingUpstream:
    """A UDP upstream on loopback: records (source port, query octets), answers, and forges for ``forge*``."""

    sock: socket.socket
    port: int
    received: list[tuple[int, bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopped: bool = False

    def serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stopped:
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:  # ICMP unreachable from a socket dnsgate already closed
                continue
            with self.lock:
                self.received.append((addr[1], data))
            query = dns.message.from_wire(data)
            if query.question[0].name.labels[0].lower().startswith(b"forge"):
                self.forge(query, data, addr)
                for _ in range(3):  # the genuine reply, again in case the flood filled dnsgate's buffer
                    self.sock.sendto(answer(query, GENUINE), addr)
                    time.sleep(0.2)
            else:
                self.sock.sendto(answer(query, GENUINE), addr)

    def forge(self, query: dns.message.Message, data: bytes, addr: tuple[str, int]) -> None:
        msg_id = query.id
        end = 12
        while data[end]:
            end += data[end] + 1
        # The right port and ID, the question in the other case: only the case check stops it.
        swapped = answer(query, FORGED["swapped case"])
        self.sock.sendto(swapped[:12] + swapped[12:end].swapcase() + swapped[end:], addr)
        # The right port and ID, another question of the same size.
        other = dns.message.make_query("forgf" + query.question[0].name.to_text()[5:], "A")
        other.id = msg_id
        self.sock.sendto(answer(other, FORGED["other name"]), addr)
        # Everything right but the source port: the connected socket never sees it.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as elsewhere:
            elsewhere.sendto(answer(query, FORGED["other port"]), addr)
        # Every other ID, with the question exactly as sent.
        forged = answer(query, FORGED["other ids"])
        for guess in range(65536):
            if guess != msg_id:
                self.sock.sendto(struct.pack("!H", guess) + forged[2:], addr)
            if guess % 256 == 0:
                time.sleep(0.001)  # paced, so dnsgate's buffer is not simply full

    def sent(self) -> list[tuple[int, bytes]]:
        with self.lock:
            return list(self.received)


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", free_port()))
    rec = RecordingUpstream(sock, sock.getsockname()[1])
    thread = threading.Thread(target=rec.serve, daemon=True)
    thread.start()
    yield rec
    rec.stopped = True
    thread.join(2)
    sock.close()


@pytest.fixture(scope="module")
def gate(upstream: RecordingUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dnsgate]:
    port = free_port()
    config = basic_config(port, upstream.port, upstream_timeout="3.0", servfail_after="4.0")
    server = start_dnsgate(config, tmp_path_factory.mktemp("spoofing"), port)
    yield server
    assert server.stop() == 0


def ask_raw(port: int, name: bytes, timeout: float = 5.0) -> tuple[bytes, bytes]:
    """(query, reply) octets of one A query for the wire name ``name``, over UDP."""
    query = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + name + struct.pack("!HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(query, ("127.0.0.1", port))
        return query, s.recv(65535)


def wire_name(text: str) -> bytes:
    return b"".join(bytes([len(label)]) + label.encode() for label in text.split(".")) + b"\x00"


def test_every_query_leaves_from_a_port_of_its_own(gate: Dnsgate, upstream: RecordingUpstream) -> None:
    before = len(upstream.sent())
    n = 200
    for i in range(n):
        _, reply = ask_raw(gate.port, wire_name(f"port{i}.wild.test"))
        assert dns.message.from_wire(reply).rcode() == dns.rcode.NOERROR
    seen = upstream.sent()[before:]
    assert len(seen) == n
    ports = {port for port, _ in seen}
    assert len(ports) >= 0.9 * n, f"{len(ports)} source ports for {n} queries"
    ids = {struct.unpack_from("!H", data)[0] for _, data in seen}
    assert len(ids) >= 0.9 * n


def test_the_name_leaves_in_random_case_and_the_client_gets_its_own(gate: Dnsgate, upstream: RecordingUpstream) -> None:
    before = len(upstream.sent())
    n = 100
    for i in range(n):
        name = wire_name(f"CaseCheck{i}.Wild.Test")
        _, reply = ask_raw(gate.port, name)
        assert reply[12 : 12 + len(name)] == name  # the client's own case back
        assert next(rr.to_text() for rr in dns.message.from_wire(reply).answer).endswith(f"A {GENUINE}")
    asked = [wire_name(f"CaseCheck{i}.Wild.Test") for i in range(n)]
    sent = [data[12 : 12 + len(name)] for (_, data), name in zip(upstream.sent()[before:], asked, strict=True)]
    assert [s.lower() for s in sent] == [name.lower() for name in asked]
    lower = [s for s in sent if s == s.lower()]
    as_asked = [s for s, name in zip(sent, asked, strict=True) if s == name]
    # 17 letters a name: all-lowercase or the client's pattern turn up 1 in 2**17 each
    assert len(lower) <= 2, lower
    assert len(as_asked) <= 2, as_asked
    assert len(set(sent)) == n


def test_forged_replies_are_not_accepted(gate: Dnsgate, upstream: RecordingUpstream) -> None:
    """The forger knows the port: every other ID, the right ID in the wrong case or for another
    name, everything right from another port; none gets through, the genuine reply does."""
    before = len(upstream.sent())
    for i in range(3):
        name = wire_name(f"forge{i}.wild.test")
        _, reply = ask_raw(gate.port, name, timeout=8.0)
        answers = [rr.to_text() for rr in dns.message.from_wire(reply).answer]
        assert answers == [f"forge{i}.wild.test. 60 IN A {GENUINE}"], answers
        # and the cache holds the genuine answer
        _, again = ask_raw(gate.port, name)
        assert next(rr.to_text() for rr in dns.message.from_wire(again).answer).endswith(f"A {GENUINE}")
    assert len(upstream.sent()) - before == 3  # one query each, the forger answered each first


# -- real upstreams echo the case they were asked in ------------------------------------------


@pytest.fixture(scope="module")
def nsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nsd]:
    server = Nsd(tmp_path_factory.mktemp("nsd"), allowed_names(100))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def bind(nsd: Nsd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bind]:
    server = Bind(free_port(), tmp_path_factory.mktemp("bind"))
    server.start(nsd.port, [], "host0000.bench.example")
    yield server
    server.stop()


def gate_config(port: int, upstream_port: int) -> str:
    return f"""
listen:
  - {{address: 127.0.0.1, port: {port}}}
upstreams:
  - {{address: 127.0.0.1, port: {upstream_port}}}
upstream_timeout: 1.0
servfail_after: 2.0
unknown_clients: refuse
namespaces:
  agents:
    clients: [127.0.0.1/32]
    mode: enforce
    allow: ["*.bench.example", "*.wild.test", www.allowed.test]
"""


@pytest.mark.parametrize("server", ["unbound", "nsd", "bind"])
def test_unbound_nsd_and_bind_echo_the_case_sent(
    server: str, request: pytest.FixtureRequest, tmp_path: Path,
) -> None:
    """With randomize_case on (the default) an upstream that changed the case would get every
    reply dropped: SERVFAIL. Debian 12's Unbound 1.17, NSD 4.6 and BIND 9.18 keep it."""
    if server == "unbound":
        upstream: Unbound = request.getfixturevalue("unbound_upstream")
        port, names, rcode = upstream.port, [f"Echo{i}.Wild.Test" for i in range(30)], dns.rcode.NXDOMAIN
    else:
        port = request.getfixturevalue(server).port
        names, rcode = [f"HoSt{i:04d}.Bench.Example" for i in range(30)], dns.rcode.NOERROR
    listen = free_port()
    gate = start_dnsgate(gate_config(listen, port), tmp_path, listen, probe="www.allowed.test")
    try:
        for name in names:
            wire = wire_name(name)
            _, reply = ask_raw(listen, wire)
            assert reply[12 : 12 + len(wire)] == wire
            assert dns.message.from_wire(reply).rcode() == rcode, name
    finally:
        assert gate.stop() == 0
