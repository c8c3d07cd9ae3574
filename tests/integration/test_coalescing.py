"""Identical questions in flight are asked upstream once.

A client repeating a name that is slow upstream (a lame delegation, a far
authoritative server) made dnsgate send one upstream query per repetition: up
to 256 of them at once, when the loop guard began answering SERVFAIL to
everyone asking that question, other clients included. The upstream's load
was the client's to multiply, and an off-path spoofer had 256 outstanding
queries for one name to aim forged replies at (the birthday attack on a
resolver's cache). Now a query whose upstream query would be the same as one
in flight waits for that one's reply.

The upstream is a dnslib server that takes 1 s to answer names under
``slow.wild.test`` (each a new name, so nothing is cached) and records every
query it gets.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable, Iterator

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import pytest
from dnslib import DNSRecord

from tests.support.harness import free_port
from tests.support.rogue_upstream import RogueUpstream, reply_with, rogue_upstream
from tests.support.upstream_servers import Dnsgate, basic_config, start_dnsgate

pytestmark = pytest.mark.integration

LOOP_OPTION = 65353  # the loop guard's EDNS option (resolver/pipeline/loop.py)
HOLD = 1.0  # seconds the upstream takes for names under slow.wild.test
OTHERS = """
  others:
    clients: [127.0.0.0/8]
    mode: enforce
    allow: ["*.wild.test"]
"""


def answer(request: DNSRecord, _data: bytes) -> bytes:
    if str(request.q.qname).lower().endswith("slow.wild.test."):
        time.sleep(HOLD)  # the upstream's own pace (dnslib answers each query on its own thread)
    return reply_with(request, f"an {request.q.qname!s} 60 A 192.0.2.9").pack()


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[RogueUpstream, int]]:
    with rogue_upstream(answer) as pair:
        yield pair


@pytest.fixture(scope="module")
def gate(upstream: tuple[RogueUpstream, int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dnsgate]:
    port = free_port()
    config = basic_config(port, upstream[1], OTHERS, upstream_timeout="3", servfail_after="4")
    server = start_dnsgate(config, tmp_path_factory.mktemp("coalesce"), port)
    yield server
    assert server.stop() == 0


def send_all(port: int, batches: list[tuple[str, list[bytes]]], wait: float = 8.0,
             between: Callable[[], None] | None = None) -> dict[str, list[dns.message.Message]]:
    """Send every query of every (source address, queries) batch at once, then read replies until
    each source has all of its own or ``wait`` seconds passed. ``between``, when given, runs after
    the first batch is sent and before the others are."""
    socks = {}
    expected = {}
    for source, wires in batches:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind((source, 0))
        socks[source] = s
        expected[source] = len(wires)
    for n, (source, wires) in enumerate(batches):
        if n == 1 and between is not None:
            between()
        for wire in wires:
            socks[source].sendto(wire, ("127.0.0.1", port))
    got: dict[str, list[dns.message.Message]] = {source: [] for source in socks}
    deadline = time.monotonic() + wait
    try:
        while any(len(got[s]) < expected[s] for s in socks) and time.monotonic() < deadline:
            ready, _, _ = select.select(list(socks.values()), [], [], max(0.0, deadline - time.monotonic()))
            for s in ready:
                source = s.getsockname()[0]
                got[source].append(dns.message.from_wire(s.recv(65535)))
    finally:
        for s in socks.values():
            s.close()
    return got


def test_a_client_repeating_a_slow_name_gets_it_asked_upstream_once(
    gate: Dnsgate, upstream: tuple[RogueUpstream, int]
) -> None:
    rogue, _ = upstream
    name = "n1.slow.wild.test"
    flood = [dns.message.make_query(name, "A").to_wire() for _ in range(300)]
    victim = dns.message.make_query("N1.Slow.WILD.test", "A")  # another client, its own letter case

    def flood_reached_upstream() -> None:
        deadline = time.monotonic() + 5
        while name not in rogue.names() and time.monotonic() < deadline:
            time.sleep(0.01)  # polls what the upstream has seen: a condition, not a fixed wait
        assert name in rogue.names()

    got = send_all(gate.port, [("127.0.0.2", flood), ("127.0.0.3", [victim.to_wire()])], between=flood_reached_upstream)
    # Before: 256 went upstream and the next 44 of the flood got SERVFAIL at once; so did the
    # victim, asking while the flood's 256 were in flight.
    assert rogue.names().count(name) == 1
    assert [dns.rcode.to_text(m.rcode()) for m in got["127.0.0.3"]] == ["NOERROR"]
    [reply] = got["127.0.0.3"]
    assert reply.id == victim.id
    assert reply.question[0].name.to_text() == "N1.Slow.WILD.test."  # its own case, not the flood's
    assert [rr.to_text() for rr in reply.answer] == ["N1.Slow.WILD.test. 60 IN A 192.0.2.9"]
    assert sorted(dns.rcode.to_text(m.rcode()) for m in got["127.0.0.2"]) == ["NOERROR"] * 300
    assert {m.id for m in got["127.0.0.2"]} == {dns.message.from_wire(w).id for w in flood}


def test_queries_that_would_leave_differently_are_not_merged(
    gate: Dnsgate, upstream: tuple[RogueUpstream, int]
) -> None:
    """Another type, the CD bit, the DO bit, or an earlier hop's loop mark carried on: another
    upstream query, each asked (a client's marks must not decide what another's query waits on)."""
    rogue, _ = upstream
    name = "n2.slow.wild.test"
    plain = dns.message.make_query(name, "A")
    checking_disabled = dns.message.make_query(name, "A")
    checking_disabled.flags |= dns.flags.CD
    aaaa = dns.message.make_query(name, "AAAA")
    dnssec = dns.message.make_query(name, "A", want_dnssec=True)
    marked = dns.message.make_query(name, "A", use_edns=0, options=[dns.edns.GenericOption(LOOP_OPTION, b"\x01" * 8)])
    queries = [plain, checking_disabled, aaaa, dnssec, marked]
    got = send_all(gate.port, [("127.0.0.4", [m.to_wire() for m in queries])])
    assert sorted(dns.rcode.to_text(m.rcode()) for m in got["127.0.0.4"]) == ["NOERROR"] * 5
    assert rogue.names().count(name) == 5


def test_many_slow_names_at_once_are_each_answered(gate: Dnsgate, upstream: tuple[RogueUpstream, int]) -> None:
    """Coalescing is per question: 50 different slow names from 5 clients each, all at once."""
    rogue, _ = upstream
    names = [f"m{i}.slow.wild.test" for i in range(50)]
    batches = [(f"127.0.0.{10 + c}", [dns.message.make_query(n, "A").to_wire() for n in names]) for c in range(5)]
    got = send_all(gate.port, batches)
    for source, _ in batches:
        assert sorted(dns.rcode.to_text(m.rcode()) for m in got[source]) == ["NOERROR"] * 50, source
    asked = rogue.names()
    assert all(asked.count(n) == 1 for n in names)


def test_one_client_gets_at_most_8_variants_of_a_question_in_flight(
    gate: Dnsgate, upstream: tuple[RogueUpstream, int]
) -> None:
    """RD, AD, CD and DO make 16 different upstream queries for one name (loop marks make more):
    a client could put hundreds in flight and fill the loop guard's 256, after which everyone
    asking the name got SERVFAIL. Now a client has at most 8 waiting per question; its others are
    SERVFAIL at once, and another client asking the name is answered."""
    rogue, _ = upstream
    name = "n3.slow.wild.test"
    variants = []
    for bits in range(16):
        query = dns.message.make_query(name, "A", want_dnssec=bool(bits & 8))
        query.flags = (dns.flags.RD if bits & 1 else 0) | (dns.flags.AD if bits & 2 else 0) | (
            dns.flags.CD if bits & 4 else 0)
        variants.append(query.to_wire())
    victim = dns.message.make_query(name, "A", use_edns=0)
    victim.flags = dns.flags.RD | dns.flags.CD | dns.flags.AD  # a variant the flood also sent, or not: answered either way

    def variants_reached_upstream() -> None:
        deadline = time.monotonic() + 5
        while rogue.names().count(name) < 8 and time.monotonic() < deadline:
            time.sleep(0.01)  # polls what the upstream has seen: a condition, not a fixed wait
        assert rogue.names().count(name) == 8

    got = send_all(gate.port, [("127.0.0.5", variants), ("127.0.0.6", [victim.to_wire()])],
                   between=variants_reached_upstream)
    assert sorted(dns.rcode.to_text(m.rcode()) for m in got["127.0.0.5"]) == ["NOERROR"] * 8 + ["SERVFAIL"] * 8
    assert [dns.rcode.to_text(m.rcode()) for m in got["127.0.0.6"]] == ["NOERROR"]
    assert rogue.names().count(name) in (8, 9)  # the victim's own, when it was not among the 8
