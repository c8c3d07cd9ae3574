"""A TCP client that half-closes after its queries still gets their replies (RFC 7766).

The upstream is a dnslib server on loopback (tests/support/rogue_upstream.py)
that waits before answering names starting with ``slow``, so the reply is
still pending when the client's EOF arrives; dnsgate is a real process.
"""

from __future__ import annotations

import socket
import struct
import time
import uuid
from collections.abc import Iterator

import dns.message
import dns.rcode
import pytest
from dnslib import DNSRecord

from tests.support.harness import free_port
from tests.support.rogue_upstream import RogueUpstream, reply_with, rogue_upstream
from tests.support.upstream_servers import Dnsgate, start_dnsgate

pytestmark = pytest.mark.integration

SLOW = 0.6  # seconds the upstream waits before answering a slow name
UPSTREAM_TIMEOUT = 1.5
SERVFAIL_AFTER = 2.0
IDLE_TIMEOUT = 30.0  # far above everything here: a close seen by the test is never the idle timeout


def answer_slowly(request: DNSRecord, _data: bytes) -> bytes:
    name = str(request.q.qname).rstrip(".").lower()
    if name.startswith("slow"):
        time.sleep(SLOW)
    elif name.startswith("never"):
        time.sleep(SERVFAIL_AFTER + 2)  # past dnsgate's deadline: the client gets SERVFAIL
    return reply_with(request, f"an {name}. 60 A 192.0.2.1").pack()


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[RogueUpstream, int]]:
    with rogue_upstream(answer_slowly) as pair:
        yield pair


@pytest.fixture(scope="module")
def gate(upstream: tuple[RogueUpstream, int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dnsgate]:
    port = free_port()
    config = f"""
listen: [{{address: 127.0.0.1, port: {port}}}]
upstreams: [{{address: 127.0.0.1, port: {upstream[1]}}}]
upstream_timeout: {UPSTREAM_TIMEOUT}
servfail_after: {SERVFAIL_AFTER}
tcp_idle_timeout: {IDLE_TIMEOUT}
namespaces:
  agents:
    clients: [127.0.0.1/32]
    allow: ["*.allowed.test"]
"""
    server = start_dnsgate(config, tmp_path_factory.mktemp("tcp"), port)
    yield server
    assert server.stop() == 0
    assert "Traceback" not in (server.config_path.parent / "dnsgate.stderr").read_text()


def fresh(label: str) -> str:
    """A name no earlier test asked, so dnsgate has to ask the upstream."""
    return f"{label}-{uuid.uuid4().hex[:12]}.allowed.test"


def framed(name: str, qid: int) -> bytes:
    query = dns.message.make_query(name, "A")
    query.id = qid
    wire = query.to_wire()
    return struct.pack("!H", len(wire)) + wire


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[list[dns.message.Message], float]:
    """Every reply the server sends, and the seconds until it closed the connection."""
    started = time.monotonic()
    sock.settimeout(timeout)
    data = b""
    while True:
        chunk = sock.recv(65_536)  # a timeout raises: the server never closed
        if not chunk:
            break
        data += chunk
    elapsed = time.monotonic() - started
    replies = []
    while data:
        length = struct.unpack("!H", data[:2])[0]
        replies.append(dns.message.from_wire(data[2 : 2 + length]))
        data = data[2 + length :]
    return replies, elapsed


def half_closed_connection(gate: Dnsgate, *names: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gate.port), timeout=5)
    sock.sendall(b"".join(framed(name, i) for i, name in enumerate(names)))
    sock.shutdown(socket.SHUT_WR)
    return sock


def test_a_reply_pending_at_eof_is_sent_before_the_close(gate: Dnsgate, upstream: tuple[RogueUpstream, int]) -> None:
    name = fresh("slow")
    with half_closed_connection(gate, name) as sock:
        replies, elapsed = read_until_closed(sock, timeout=SERVFAIL_AFTER + 3)
    assert [(r.rcode(), r.answer[0][0].address) for r in replies] == [(dns.rcode.NOERROR, "192.0.2.1")]
    assert elapsed >= SLOW * 0.8  # the reply really was pending when the EOF came
    assert elapsed < SERVFAIL_AFTER + 1  # and the connection closed once it was sent, not at the idle timeout
    assert name in upstream[0].names()


def test_pipelined_queries_then_eof_are_all_answered(gate: Dnsgate) -> None:
    names = [fresh("slow"), fresh("quick"), fresh("slow")]
    with half_closed_connection(gate, *names) as sock:
        replies, _ = read_until_closed(sock, timeout=SERVFAIL_AFTER + 3)
    assert sorted(r.id for r in replies) == [0, 1, 2]
    assert all(r.rcode() == dns.rcode.NOERROR for r in replies)
    assert {r.question[0].name.to_text().rstrip(".") for r in replies} == set(names)


def test_a_cached_reply_then_eof(gate: Dnsgate) -> None:
    name = fresh("quick")
    for _ in range(2):  # the second time from the cache: answered before the EOF is read
        with half_closed_connection(gate, name) as sock:
            replies, _ = read_until_closed(sock, timeout=5)
        assert [r.rcode() for r in replies] == [dns.rcode.NOERROR]


def test_a_half_closed_connection_with_nothing_in_flight_is_closed_at_once(gate: Dnsgate) -> None:
    with socket.create_connection(("127.0.0.1", gate.port), timeout=5) as sock:
        sock.shutdown(socket.SHUT_WR)
        replies, elapsed = read_until_closed(sock, timeout=5)
    assert replies == []
    assert elapsed < 0.5


def test_half_closing_holds_a_connection_no_longer_than_the_query_deadline(gate: Dnsgate) -> None:
    """An upstream that never answers in time: SERVFAIL (its one attempt timed out), then the close."""
    with half_closed_connection(gate, fresh("never")) as sock:
        replies, elapsed = read_until_closed(sock, timeout=IDLE_TIMEOUT)
    assert [r.rcode() for r in replies] == [dns.rcode.SERVFAIL]
    assert UPSTREAM_TIMEOUT * 0.8 <= elapsed < SERVFAIL_AFTER + 1
