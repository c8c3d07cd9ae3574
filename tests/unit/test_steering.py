"""``workers: N`` steering on the real kernel: one client address, one socket, whatever its source port.

These bind real SO_REUSEPORT groups on loopback (no fakes): 127.0.0.0/8 gives
many source addresses, and every datagram or connection comes from a fresh
source port, which is what a client trying to reach every worker would do.
"""

from __future__ import annotations

import collections
import select
import socket

import pytest

from resolver.config import Listen
from resolver.operations import steering
from resolver.operations.listeners import bind_socket
from tests.support.observability import free_tcp_port

SOURCES = [f"127.0.{i // 200}.{i % 200 + 2}" for i in range(40)]


def group(kind: socket.SocketKind, workers: int, address: str = "127.0.0.1") -> list[socket.socket]:
    """``workers`` sockets bound as dnsgate's workers bind them, in order (index = order)."""
    # A fixed free port: a TCP socket bound to port 0 joins no reuseport group.
    port = free_tcp_port() if kind == socket.SOCK_STREAM else 0
    first = bind_socket(Listen(address, port), kind, workers)
    port = first.getsockname()[1]
    socks = [first] + [bind_socket(Listen(address, port), kind, workers) for _ in range(workers - 1)]
    return socks  # a TCP group is already listening: the program needs that


def drain_udp(socks: list[socket.socket], expected: int) -> dict[str, collections.Counter[int]]:
    """Which socket each datagram reached, per source address, until ``expected`` arrived."""
    seen: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    got = 0
    while got < expected:
        ready, _, _ = select.select(socks, [], [], 5.0)
        assert ready, f"only {got} of {expected} datagrams arrived"
        for s in ready:
            _, peer = s.recvfrom(64)
            seen[peer[0]][socks.index(s)] += 1
            got += 1
    return seen


@pytest.mark.parametrize("workers", [2, 3])
def test_udp_datagrams_of_one_address_reach_one_worker(workers: int) -> None:
    socks = group(socket.SOCK_DGRAM, workers)
    port = socks[0].getsockname()[1]
    try:
        for src in SOURCES:
            for _ in range(8):  # a fresh source port each time
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
                    c.bind((src, 0))
                    c.sendto(b"q", ("127.0.0.1", port))
        seen = drain_udp(socks, len(SOURCES) * 8)
    finally:
        for s in socks:
            s.close()
    assert set(seen) == set(SOURCES)
    for src, where in seen.items():
        assert list(where) == [steering.worker_of(src, workers)], (src, where)
    used = {w for where in seen.values() for w in where}
    assert used == set(range(workers)), "every worker gets clients"


def test_tcp_connections_of_one_address_reach_one_worker() -> None:
    socks = group(socket.SOCK_STREAM, 2)
    port = socks[0].getsockname()[1]
    clients = []
    try:
        for src in SOURCES:
            for _ in range(3):
                c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                c.bind((src, 0))
                c.connect(("127.0.0.1", port))
                clients.append(c)
        seen: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
        for _ in range(len(clients)):
            ready, _, _ = select.select(socks, [], [], 5.0)
            assert ready
            conn, peer = ready[0].accept()
            conn.close()
            seen[peer[0]][socks.index(ready[0])] += 1
    finally:
        for c in clients:
            c.close()
        for s in socks:
            s.close()
    for src, where in seen.items():
        assert list(where) == [steering.worker_of(src, 2)], (src, where)
    assert sum(sum(w.values()) for w in seen.values()) == len(SOURCES) * 3


def test_ipv6_group_steers_by_address() -> None:
    socks = group(socket.SOCK_DGRAM, 2, "::1")
    port = socks[0].getsockname()[1]
    try:
        for _ in range(16):
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as c:
                c.sendto(b"q", ("::1", port))
        seen = drain_udp(socks, 16)
    finally:
        for s in socks:
            s.close()
    assert dict(seen) == {"::1": collections.Counter({steering.worker_of("::1", 2): 16})}


def test_one_worker_means_no_reuseport_group() -> None:
    sock = bind_socket(Listen("127.0.0.1", 0), socket.SOCK_DGRAM, 1)
    try:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
        with pytest.raises(OSError, match="in use"):  # a second bind on the port is refused
            bind_socket(Listen("127.0.0.1", sock.getsockname()[1]), socket.SOCK_DGRAM, 1)
    finally:
        sock.close()


def test_the_program_is_refused_for_other_families_and_counts() -> None:
    with pytest.raises(ValueError, match="family"):
        steering.program(socket.AF_UNIX, 2)
    with pytest.raises(ValueError, match="at least 1"):
        steering.program(socket.AF_INET, 0)
