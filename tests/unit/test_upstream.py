"""Forwarder, in-process: failover, TC to TCP, ID and question matching, the whole-query deadline.

The upstreams here are in-process fakes on loopback (an asyncio UDP endpoint
and TCP server per fake) so each behaviour can be chosen per test; the real
Unbound upstream is exercised in tests/integration/.
"""

from __future__ import annotations

import asyncio
import io
import logging
import random
import struct
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resolver.config import Upstream
from resolver.pipeline.upstream import UNHEALTHY_AFTER, Forwarder, SocketBudget, randomize_case
from resolver.wire.message import parse_query, restore_case, upstream_query

Answer = Callable[[dns.message.Message], list[bytes]]


def address_reply(query: dns.message.Message, address: str = "192.0.2.1") -> bytes:
    resp = dns.message.make_response(query)
    resp.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "A", address))
    return resp.to_wire()


def truncated_reply(query: dns.message.Message) -> bytes:
    resp = dns.message.make_response(query)
    resp.flags |= dns.flags.TC
    return resp.to_wire()


@dataclass
class FakeUpstream:
    """Answers each datagram with what ``udp`` returns and each TCP query with what ``tcp`` returns."""

    udp: Answer
    tcp: Answer = field(default=lambda q: [address_reply(q, "192.0.2.53")])
    port: int = 0
    udp_seen: int = 0
    tcp_seen: int = 0
    received: list[tuple[int, bytes]] = field(default_factory=list)  # (source port, datagram) of each UDP query
    tcp_received: list[bytes] = field(default_factory=list)
    transport: asyncio.DatagramTransport | None = None
    server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        fake = self

        class Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                fake.transport = transport  # type: ignore[assignment]

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                fake.udp_seen += 1
                fake.received.append((addr[1], data))
                assert fake.transport is not None
                for out in fake.udp(dns.message.from_wire(data)):
                    fake.transport.sendto(out, addr)

        for _ in range(50):  # the UDP port's TCP twin may be taken by another program: draw again
            await loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", 0))
            assert self.transport is not None
            self.port = self.transport.get_extra_info("sockname")[1]
            try:
                self.server = await asyncio.start_server(self._on_tcp, "127.0.0.1", self.port)
                return
            except OSError:
                self.transport.close()
        raise RuntimeError("no loopback port free for both UDP and TCP")

    async def _on_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        length = int.from_bytes(await reader.readexactly(2), "big")
        data = await reader.readexactly(length)
        self.tcp_received.append(data)
        query = dns.message.from_wire(data)
        self.tcp_seen += 1
        for out in self.tcp(query):
            writer.write(len(out).to_bytes(2, "big") + out)
        await writer.drain()
        writer.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if self.server is not None:
            self.server.close()

    @property
    def upstream(self) -> Upstream:
        return Upstream("127.0.0.1", self.port)

    def without_case(self) -> Upstream:
        return Upstream("127.0.0.1", self.port, randomize_case=False)


@pytest.fixture
async def fakes() -> AsyncIterator[list[FakeUpstream]]:
    made: list[FakeUpstream] = []
    yield made
    for fake in made:
        fake.close()


async def start(fakes: list[FakeUpstream], udp: Answer, tcp: Answer | None = None) -> FakeUpstream:
    fake = FakeUpstream(udp) if tcp is None else FakeUpstream(udp, tcp)
    await fake.start()
    fakes.append(fake)
    return fake


def client_query(name: str = "www.example.test", tail: bytes = b"") -> tuple[bytes, object]:
    wire = dns.message.make_query(name, "A").to_wire() + tail
    return wire, parse_query(wire)


def with_question_case(reply: bytes, change: Callable[[bytes], bytes]) -> bytes:
    """``reply`` with its question name's letters changed by ``change`` (same length)."""
    end = 12
    while reply[end]:
        end += reply[end] + 1
    return reply[:12] + change(reply[12:end]) + reply[end:]


def addresses(raw: bytes) -> list[str]:
    return [rd.address for rrset in dns.message.from_wire(raw).answer for rd in rrset]


async def test_answer_from_the_first_upstream(fakes: list[FakeUpstream]) -> None:
    first = await start(fakes, lambda q: [address_reply(q)])
    forwarder = Forwarder((first.upstream,), timeout=0.5, deadline=2.0)
    wire, q = client_query()
    raw = await forwarder.forward(wire, q)  # type: ignore[arg-type]
    assert raw is not None
    assert addresses(raw) == ["192.0.2.1"]
    forwarder.close()


async def test_silent_upstream_fails_over_to_the_next(fakes: list[FakeUpstream]) -> None:
    silent = await start(fakes, lambda _q: [])
    second = await start(fakes, lambda q: [address_reply(q, "192.0.2.2")])
    forwarder = Forwarder((silent.upstream, second.upstream), timeout=0.2, deadline=2.0)
    wire, q = client_query()
    for _ in range(UNHEALTHY_AFTER):
        raw = await forwarder.forward(wire, q)  # type: ignore[arg-type]
        assert raw is not None
        assert addresses(raw) == ["192.0.2.2"]
    stats = forwarder.stats()
    assert [u["healthy"] for u in stats["upstreams"]] == [False, True]
    # Once marked unhealthy the silent upstream is no longer asked first.
    asked = silent.udp_seen
    raw = await forwarder.forward(wire, q)  # type: ignore[arg-type]
    assert raw is not None
    assert silent.udp_seen == asked
    forwarder.close()


async def test_truncated_udp_reply_is_retried_over_tcp(fakes: list[FakeUpstream]) -> None:
    fake = await start(fakes, lambda q: [truncated_reply(q)], lambda q: [address_reply(q, "192.0.2.53")])
    forwarder = Forwarder((fake.upstream,), timeout=0.5, deadline=2.0)
    wire, q = client_query()
    raw = await forwarder.forward(wire, q)  # type: ignore[arg-type]
    assert raw is not None
    assert addresses(raw) == ["192.0.2.53"]
    assert (fake.udp_seen, fake.tcp_seen) == (1, 1)
    forwarder.close()


async def test_replies_with_another_id_or_question_are_ignored(fakes: list[FakeUpstream]) -> None:
    def spoofs_first(q: dns.message.Message) -> list[bytes]:
        wrong_id = dns.message.from_wire(address_reply(q, "203.0.113.66"))
        wrong_id.id = (q.id + 1) % 65536
        other_name = dns.message.make_query("other.example.test", "A")
        other_name.id = q.id
        return [wrong_id.to_wire(), address_reply(other_name, "203.0.113.67"), address_reply(q)]

    fake = await start(fakes, spoofs_first)
    forwarder = Forwarder((fake.upstream,), timeout=0.5, deadline=2.0)
    wire, q = client_query()
    raw = await forwarder.forward(wire, q)  # type: ignore[arg-type]
    assert raw is not None
    assert addresses(raw) == ["192.0.2.1"]
    assert forwarder.stats()["upstreams"][0]["unexpected"] == 2
    forwarder.close()


async def test_deadline_bounds_the_whole_query(fakes: list[FakeUpstream]) -> None:
    silent = [await start(fakes, lambda _q: []) for _ in range(3)]
    forwarder = Forwarder(tuple(s.upstream for s in silent), timeout=0.4, deadline=0.6)
    wire, q = client_query()
    started = time.monotonic()
    raw = await forwarder.forward(wire, q)  # type: ignore[arg-type]
    elapsed = time.monotonic() - started
    assert raw is None
    assert 0.55 <= elapsed < 1.0
    assert forwarder.stats()["servfails"] == 1
    forwarder.close()


async def test_each_attempt_leaves_from_a_port_of_its_own(fakes: list[FakeUpstream]) -> None:
    """A forger who can spoof the upstream's address must guess the port too: a fresh one per attempt."""
    fake = await start(fakes, lambda q: [address_reply(q)])
    forwarder = Forwarder((fake.upstream,), timeout=0.5, deadline=2.0)
    for i in range(200):
        wire, q = client_query(f"p{i}.example.test")
        assert await forwarder.forward(wire, q) is not None  # type: ignore[arg-type]
    ports = [port for port, _ in fake.received]
    assert len(ports) == 200
    assert len(set(ports)) >= 180  # the kernel draws from ~28,000 ports: a few repeats at most
    ids = {struct.unpack_from("!H", data)[0] for _, data in fake.received}
    assert len(ids) >= 180
    forwarder.close()


async def test_the_name_leaves_in_random_case_and_the_client_gets_its_own_back(fakes: list[FakeUpstream]) -> None:
    fake = await start(fakes, lambda q: [address_reply(q)])
    forwarder = Forwarder((fake.upstream,), timeout=0.5, deadline=2.0)
    wire, q = client_query("Www.Example.TEST")
    sent = set()
    for _ in range(20):
        raw = await forwarder.forward(wire, q)  # type: ignore[arg-type]
        assert raw is not None
        assert raw[12 : q.end] == wire[12 : q.end]  # type: ignore[attr-defined]
        assert addresses(raw) == ["192.0.2.1"]
    for _, data in fake.received:
        name = data[12 : q.end - 4]  # type: ignore[attr-defined]
        assert name.lower() == b"\x03www\x07example\x04test\x00"
        sent.add(name)
    assert len(sent) >= 15  # 14 letters: 20 draws of 2**14 patterns rarely repeat
    forwarder.close()


async def test_a_reply_must_carry_the_case_sent(fakes: list[FakeUpstream], caplog: pytest.LogCaptureFixture) -> None:
    """Right port and ID but the question in another case: a forger's guess, dropped."""
    def forged_first(q: dns.message.Message) -> list[bytes]:
        forged = with_question_case(address_reply(q, "203.0.113.66"), bytes.swapcase)
        return [forged, address_reply(q)]

    fake = await start(fakes, forged_first)
    forwarder = Forwarder((fake.upstream,), timeout=0.5, deadline=2.0)
    wire, q = client_query("case.example.test")
    caplog.set_level(logging.WARNING, logger="dnsgate.upstream")
    raw = await forwarder.forward(wire, q)  # type: ignore[arg-type]
    assert raw is not None
    assert addresses(raw) == ["192.0.2.1"]
    assert forwarder.clients[0].health.case_changed == 1
    assert forwarder.stats()["upstreams"][0]["unexpected"] == 1  # dnsgate_upstream_unexpected_replies
    assert "randomize_case: false" in caplog.text
    forwarder.close()


async def test_an_upstream_that_does_not_echo_case_needs_randomize_case_off(fakes: list[FakeUpstream]) -> None:
    fake = await start(fakes, lambda q: [with_question_case(address_reply(q), bytes.lower)])
    wire, q = client_query("Lower.Example.Test")
    strict = Forwarder((fake.upstream,), timeout=0.2, deadline=0.5)
    assert await strict.forward(wire, q) is None  # type: ignore[arg-type]
    loose = Forwarder((fake.without_case(),), timeout=0.2, deadline=0.5)
    raw = await loose.forward(wire, q)  # type: ignore[arg-type]
    assert raw is not None
    assert raw[12 : q.end] == wire[12 : q.end]  # type: ignore[attr-defined]
    _, data = fake.received[-1]
    assert data[12 : q.end] == wire[12 : q.end].lower()  # type: ignore[attr-defined]  # no client case bits leave
    strict.close()
    loose.close()


async def test_only_the_rebuilt_query_leaves(fakes: list[FakeUpstream]) -> None:
    """Octets after the last record are accepted (as Unbound and BIND do) and go nowhere."""
    fake = await start(fakes, lambda q: [address_reply(q)], lambda q: [address_reply(q, "192.0.2.53")])
    forwarder = Forwarder((fake.without_case(),), timeout=0.5, deadline=2.0)
    wire, q = client_query("tail.example.test", tail=b"SECRET-AWS-KEY=AKIAEXAMPLE")
    for tcp in (False, True):
        assert await forwarder.forward(wire, q, tcp=tcp) is not None  # type: ignore[arg-type]
    expected = upstream_query(wire, q, b"")[2:]  # type: ignore[arg-type]
    assert [data[2:] for _, data in fake.received] == [expected]
    assert [data[2:] for data in fake.tcp_received] == [expected]
    forwarder.close()


def test_randomize_case_flips_letters_only() -> None:
    name = b"\x05a-z09\x03xn-\x00"
    assert randomize_case(name, 0) == name
    assert randomize_case(name, (1 << 8 * len(name)) - 1) == b"\x05A-Z09\x03XN-\x00"
    seen = {randomize_case(name, random.getrandbits(8 * len(name))) for _ in range(400)}
    assert {n.lower() for n in seen} == {name}
    assert len(seen) == 2 ** 4  # a, z, x, n: every pattern shows up in 400 draws


async def test_attempts_beyond_the_socket_budget_wait_their_turn(fakes: list[FakeUpstream]) -> None:
    fake = await start(fakes, lambda q: [address_reply(q)])
    forwarder = Forwarder((fake.upstream,), timeout=0.5, deadline=2.0)
    assert forwarder.sockets is not None
    forwarder.sockets.limit = 3
    queries = [client_query(f"b{i}.example.test") for i in range(20)]
    replies = await asyncio.gather(*(forwarder.forward(w, q) for w, q in queries))  # type: ignore[arg-type]
    assert all(r is not None for r in replies)
    assert forwarder.sockets.open == 0
    assert forwarder.sockets.waited == 17
    forwarder.close()


def test_the_client_case_comes_back_where_the_upstream_copied_the_name() -> None:
    """A CNAME an upstream synthesized from a DNAME, or an owner name written out, carries the
    case the query was sent in: the client's is put back (as a resolver synthesizing it would)."""
    client = dns.message.make_query("Nx.Dn.Test", "A")
    sent = dns.message.make_query("nX.dN.tEsT", "A")
    reply = dns.message.make_response(sent)
    reply.answer.append(dns.rrset.from_text("dn.test.", 60, "IN", "DNAME", "plain.test."))
    reply.answer.append(dns.rrset.from_text("nX.dN.tEsT.", 60, "IN", "CNAME", "nX.plain.test."))
    reply.answer.append(dns.rrset.from_text("nX.plain.test.", 60, "IN", "A", "192.0.2.1"))
    wire = reply.to_wire()
    name = client.to_wire()[12:-4]
    back = dns.message.from_wire(restore_case(wire, name))
    assert back.question[0].name.to_text() == "Nx.Dn.Test."
    # (pointers into the question, as dnspython writes them here, read the client's case anyway)
    assert [rr.to_text().lower() for rr in back.answer] == [rr.to_text().lower() for rr in reply.answer]
    assert [rr[0].target.labels[0] for rr in back.answer if rr.rdtype == dns.rdatatype.CNAME] == [b"Nx"]
    records = io.BytesIO()  # the same records with every name written out
    for rrset in reply.answer:
        rrset.to_wire(records)
    uncompressed = wire[:12] + sent.to_wire()[12:] + records.getvalue()
    back = dns.message.from_wire(restore_case(uncompressed, name))
    assert [rr.to_text() for rr in back.answer] == [
        "dn.test. 60 IN DNAME plain.test.", "Nx.Dn.Test. 60 IN CNAME Nx.plain.test.", "Nx.plain.test. 60 IN A 192.0.2.1"]


@settings(max_examples=500)
@given(st.binary(min_size=12, max_size=200), st.lists(st.binary(min_size=1, max_size=8), min_size=1, max_size=4),
       st.integers(0, 2**64))
def test_restoring_case_changes_only_the_case_of_letters(
    body: bytes, labels: list[bytes], flips: int
) -> None:
    name = b"".join(bytes([len(label)]) + label for label in labels) + b"\x00"
    sent = bytes(b ^ 0x20 if chr(b).isalpha() and b < 128 and (flips >> (i % 64)) & 1 else b
                 for i, b in enumerate(name))
    reply = body[:12] + sent + body[12:]
    out = restore_case(reply, name)
    assert out[12 : 12 + len(name)] == name
    assert out.lower() == reply.lower()


@pytest.mark.parametrize("randomize", [True, False])
@pytest.mark.parametrize("rdtype", [65, 0x4141, 0x5A00])  # HTTPS; octets in the range of letters
async def test_types_and_classes_leave_as_asked(fakes: list[FakeUpstream], randomize: bool, rdtype: int) -> None:
    fake = await start(fakes, lambda q: [dns.message.make_response(q).to_wire()])
    upstream = fake.upstream if randomize else fake.without_case()
    forwarder = Forwarder((upstream,), timeout=0.5, deadline=1.0)
    wire = dns.message.make_query("Type.Example.Test", rdtype).to_wire()
    q = parse_query(wire)
    for tcp in (False, True):
        raw = await forwarder.forward(wire, q, tcp=tcp)
        assert raw is not None
        assert raw[12 : q.end] == wire[12 : q.end]
    (_, data), = fake.received
    assert data[q.end - 4 : q.end] == wire[q.end - 4 : q.end]
    assert fake.tcp_received[0][q.end - 4 : q.end] == wire[q.end - 4 : q.end]
    forwarder.close()


async def test_a_freed_socket_goes_to_the_next_client_in_turn_not_to_the_longest_queue() -> None:
    """One client keeping many slow names in flight holds every socket and has hundreds of
    attempts waiting; another client's attempt gets a socket in its turn, after at most one
    of each other waiting client's. First come first served, it waited behind all of them
    (live: 1.6-2.4 s for a name the upstream answers at once, docs/operations.md)."""
    budget = SocketBudget(2)
    await budget.acquire("flooder")
    await budget.acquire("flooder")
    order: list[str] = []

    async def attempt(client: str) -> None:
        await budget.acquire(client)
        order.append(client)

    flood = [asyncio.ensure_future(attempt("flooder")) for _ in range(300)]
    await asyncio.sleep(0)  # every waiter queued (one turn of the loop: no time passes)
    victim = asyncio.ensure_future(attempt("victim"))
    await asyncio.sleep(0)
    budget.release()  # a flooder's attempt ends: the flooder's turn came first
    budget.release()  # the next socket freed: the victim's turn, not the flooder's 299 others
    await asyncio.sleep(0)
    assert order == ["flooder", "victim"]
    budget.release()
    await asyncio.sleep(0)
    assert order == ["flooder", "victim", "flooder"]
    # A waiter cancelled while waiting gives up its place; the others keep theirs.
    flood[5].cancel()
    for _ in range(297):
        budget.release()
    await asyncio.sleep(0)
    assert order.count("flooder") == 299
    assert victim.done()
    assert budget.open == 2
    budget.release()
    budget.release()
    assert budget.open == 0
