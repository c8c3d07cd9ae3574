"""Forwarder, in-process: failover, TC to TCP, ID and question matching, the whole-query deadline.

The upstreams here are in-process fakes on loopback (an asyncio UDP endpoint
and TCP server per fake) so each behaviour can be chosen per test; the real
Unbound upstream is exercised in tests/integration/.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.rrset
import pytest

from resolver.config import Upstream
from resolver.pipeline.upstream import UNHEALTHY_AFTER, Forwarder
from resolver.wire.message import parse_query

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
        query = dns.message.from_wire(await reader.readexactly(length))
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


def client_query(name: str = "www.example.test") -> tuple[bytes, object]:
    wire = dns.message.make_query(name, "A").to_wire()
    return wire, parse_query(wire)


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
