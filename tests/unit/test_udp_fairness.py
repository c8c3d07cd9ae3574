"""UDP listener: datagrams are answered one client after another, and a flooding client's excess is shed.

Real UDP sockets on loopback; the server behind the listener is a small
in-process stand-in that answers every query at once and records the order
(the full server is exercised in tests/integration/test_fairness.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
from collections.abc import Iterator
from typing import Any

from resolver.config import Listen
from resolver.operations import listeners
from resolver.operations.listeners import UdpListener
from resolver.pipeline.query import Reply


class RecordingServer:
    def __init__(self) -> None:
        self.order: list[str] = []

    def query(self, data: bytes, client: str, _transport: str, _listener_ns: str | None) -> Reply:
        self.order.append(client)
        return Reply(data, 0, "allowed")  # echo: a reply the sender can count

    def track(self, _coro: Any) -> None:  # never called: every reply here is immediate
        raise AssertionError("no upstream in this test")


def sender(source: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.bind((source, 0))
    return s


def wait_readable(sock: socket.socket) -> None:
    ready, _, _ = select.select([sock], [], [], 5.0)
    assert ready, "nothing arrived"


@contextlib.contextmanager
def flooded(flood: int) -> Iterator[tuple[RecordingServer, UdpListener, socket.socket]]:
    """A listener that has read ``flood`` datagrams from 127.0.0.2, then one ("S") from 127.0.0.3,
    in one turn; yields the recording server, the listener and the steady client's socket."""
    server = RecordingServer()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    listener = UdpListener(server, Listen("127.0.0.1", 0), sock)  # type: ignore[arg-type]
    flooder, steady = sender("127.0.0.2"), sender("127.0.0.3")
    try:
        for i in range(flood):
            flooder.sendto(b"F%05d" % i, listener.sockname)
        steady.sendto(b"S", listener.sockname)
        wait_readable(sock)
        listener._readable()  # one turn: every queued datagram read, answered round-robin
        yield server, listener, steady
    finally:
        flooder.close()
        steady.close()
        listener.close()


async def test_other_clients_are_answered_within_one_round() -> None:
    with flooded(600) as (server, listener, steady):
        assert "127.0.0.3" in server.order[:2]  # not behind the 600 that arrived first
        while listener.queues:
            listener._serve()
        assert server.order.count("127.0.0.2") == 600
        wait_readable(steady)
        assert steady.recv(100) == b"S"


async def test_a_flooding_client_beyond_its_queue_is_shed(monkeypatch: Any) -> None:
    monkeypatch.setattr(listeners, "UDP_QUEUE_PER_CLIENT", 10)
    monkeypatch.setattr(listeners, "UDP_ANSWER_PER_TURN", 1)
    with flooded(50) as (server, listener, _steady):
        assert listener.shed == 50 - 10  # ten kept, the rest read and dropped; the steady client's one kept
        while listener.queues:
            listener._serve()
        assert server.order.count("127.0.0.2") == 10
        assert server.order.count("127.0.0.3") == 1
    await asyncio.sleep(0)


class ScriptedSocket:
    """A real UDP socket (its descriptor is what the loop watches) whose ``recvfrom`` hands out
    scripted datagrams from any source address: IPv6 hosts cycling the addresses of their /64,
    which loopback in this namespace cannot send from (tests/integration/test_ipv6_hosts.py
    sends them for real, through the whole server)."""

    def __init__(self, datagrams: list[tuple[bytes, tuple[str, int]]]) -> None:
        self._sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        self._sock.bind(("::1", 0))
        self._script = list(datagrams)

    def recvfrom(self, _size: int) -> tuple[bytes, tuple[str, int]]:
        if not self._script:
            raise BlockingIOError
        return self._script.pop(0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class Config64:
    ipv6_client_prefix = 64  # what the listener reads of the server's config


async def test_a_host_cycling_addresses_of_its_64_is_one_client_in_the_round() -> None:
    """300 datagrams from 300 addresses of one /64, then one from another host: per address the
    other host waited behind all 300; counted by /64 it is answered within the first round."""
    flood = [(b"F%05d" % i, (f"2001:db8:1:2::{i + 1:x}", 5000)) for i in range(300)]
    sock = ScriptedSocket([*flood, (b"S", ("2001:db8:9:9::1", 5000))])
    server = RecordingServer()
    server.config = Config64()  # type: ignore[attr-defined]
    listener = UdpListener(server, Listen("::1", 0), sock)  # type: ignore[arg-type]
    try:
        listener._readable()
        assert set(listener.queues) <= {"2001:db8:1:2::/64", "2001:db8:9:9::/64"}
        assert "2001:db8:9:9::1" in server.order[:2]
        while listener.queues:
            listener._serve()
        assert len(server.order) == 301
    finally:
        listener.close()
