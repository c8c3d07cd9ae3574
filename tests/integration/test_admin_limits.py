"""A hostile client of the admin port, against a real dnsgate process under a low RLIMIT_NOFILE.

It must not take the descriptors DNS needs (connection cap, read and idle
timeouts, the soft limit raised to the hard one), nor write a forged line or
an unbounded stream of tracebacks into the log.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
from pathlib import Path

import dns.rcode
import pytest

from tests.support.harness import ask
from tests.support.observability import free_tcp_port, http_get, poll
from tests.support.upstream_servers import Dnsgate, Unbound, basic_config, free_port, start_dnsgate

pytestmark = pytest.mark.integration

NOFILE = 256
# Hard limit = soft limit: raising the soft limit cannot help, the admin caps must.
LOW = (NOFILE, NOFILE)
ADMIN_CAP = 64  # resolver/operations/admin.py ADMIN_MAX_CONNECTIONS
HALF_REQUEST = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n"  # the head never ends
# Any control character but the newline that ends each log line.
RAW_CONTROL = re.compile(rb"[\x00-\x09\x0b-\x1f\x7f]")


def start(unbound: Unbound, workdir: Path, nofile: tuple[int, int] | None, extra: str = "",
          env: dict[str, str] | None = None) -> tuple[Dnsgate, int]:
    port, admin_port = free_port(), free_tcp_port()
    text = basic_config(port, unbound.port) + f"admin: {{address: 127.0.0.1, port: {admin_port}}}\n" + extra
    server = start_dnsgate(text, workdir, port, env=env, nofile=nofile)
    poll(lambda: up(admin_port), what="admin HTTP up")
    return server, admin_port


def up(port: int) -> bool:
    try:
        return http_get(f"http://127.0.0.1:{port}/healthz", timeout=0.5)[0] == 200
    except OSError:
        return False


def stderr(server: Dnsgate) -> bytes:
    return (server.config_path.parent / "dnsgate.stderr").read_bytes()


def connect(port: int, first: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=2)
    if first:
        sock.sendall(first)
    sock.setblocking(False)
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(65536) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True  # reset


def open_slow(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that each send half a request head, or as many as the server takes."""
    held = []
    for _ in range(count):
        try:
            held.append(connect(port, HALF_REQUEST))
        except OSError:
            break  # the server no longer accepts (no descriptor left) and its backlog is full
    return held


def open_descriptors(server: Dnsgate) -> int:
    return len(os.listdir(f"/proc/{server.proc.pid}/fd"))


def test_slow_admin_connections_leave_dns_and_healthz_working(unbound_upstream: Unbound, tmp_path: Path) -> None:
    # tcp_max_connections fits the limit: what is left is for the admin side to keep to its share.
    server, admin_port = start(unbound_upstream, tmp_path, LOW, "tcp_max_connections: 32\n")
    slow: list[socket.socket] = []
    try:
        baseline = open_descriptors(server)
        slow = open_slow(admin_port, NOFILE + 1)
        # DNS over TCP, and over UDP on names not cached (each goes upstream, on pooled sockets
        # opened on first use), from another client; and the liveness probe.
        assert ask(server.port, "www.allowed.test", tcp=True).rcode() == dns.rcode.NOERROR
        for i in range(6):
            assert ask(server.port, f"n{i}.wild.test").rcode() == dns.rcode.NXDOMAIN
        assert http_get(f"http://127.0.0.1:{admin_port}/healthz") == (200, b"ok\n")
        assert len(slow) == NOFILE + 1  # every one was accepted: the server never ran out
        # All of that while the slow connections held the admin cap (the read timeout had not run out).
        held = [sock for sock in slow if not closed_by_server(sock)]
        assert 0 < len(held) <= ADMIN_CAP
        assert open_descriptors(server) <= baseline + ADMIN_CAP + 8
        assert b"Too many open files" not in stderr(server)
    finally:
        for sock in slow:
            sock.close()
        assert server.stop() == 0


def test_admin_connections_without_a_request_are_closed(unbound_upstream: Unbound, tmp_path: Path) -> None:
    server, admin_port = start(unbound_upstream, tmp_path, LOW, "tcp_max_connections: 32\n")
    socks: list[socket.socket] = []
    try:
        started = time.monotonic()
        idle = connect(admin_port)
        partial = connect(admin_port, HALF_REQUEST)
        drip = connect(admin_port, b"GET /metrics HTTP/1.1\r\n")
        # A client that keeps its connection after two answered requests, and then sends nothing.
        keepalive = connect(admin_port)
        socks = [idle, partial, drip, keepalive]
        request = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{admin_port}\r\n\r\n".encode()
        keepalive.sendall(request * 2)
        answered = bytearray()

        def both_answered() -> bool:
            with contextlib.suppress(BlockingIOError):
                answered.extend(keepalive.recv(65536))
            return answered.count(b"HTTP/1.1 200 OK") == 2 and answered.endswith(b"ok\n")

        poll(both_answered, timeout=5, what="two answers on one connection")
        dripped = [time.monotonic()]

        def all_closed() -> bool:
            if time.monotonic() - dripped[0] >= 0.5 and not closed_by_server(drip):
                drip.sendall(b"X-%d: a\r\n" % len(dripped))  # a header now and then: the head never ends
                dripped[0] = time.monotonic()
                dripped.append(dripped[0])
            return all(closed_by_server(sock) for sock in socks)

        poll(all_closed, timeout=20, what="the server closing idle, partial, dripping and kept-alive connections")
        assert time.monotonic() - started < 15
        assert up(admin_port)
    finally:
        for sock in socks:
            sock.close()
        assert server.stop() == 0


def test_the_soft_fd_limit_is_raised_to_the_hard_limit(unbound_upstream: Unbound, tmp_path: Path) -> None:
    server, _ = start(unbound_upstream, tmp_path, (NOFILE, 4096))
    try:
        limits = Path(f"/proc/{server.proc.pid}/limits").read_text()
        line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        assert line.split()[3:5] == ["4096", "4096"]
        log = stderr(server).decode()
        assert log.count("open files: soft limit 256 raised to the hard limit 4096") == 1
        assert "tcp_max_connections" not in log  # 256 and the admin cap fit in 4096
    finally:
        assert server.stop() == 0


def test_a_tcp_cap_beyond_the_fd_limit_is_warned_of(unbound_upstream: Unbound, tmp_path: Path) -> None:
    server, _ = start(unbound_upstream, tmp_path, LOW)  # tcp_max_connections 256 by default
    try:
        lines = [line for line in stderr(server).decode().splitlines() if "tcp_max_connections" in line]
        assert len(lines) == 1
        assert " WARNING " in lines[0]
        assert "256" in lines[0]
    finally:
        assert server.stop() == 0


def raw_request(port: int, head: bytes) -> bytes:
    """Send ``head``; everything the server answers until it closes (or 2 s pass)."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(head)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
        return answer


def test_a_refused_path_is_logged_escaped(unbound_upstream: Unbound, tmp_path: Path) -> None:
    # No token: the refusal's reason names the path too.
    server, admin_port = start(unbound_upstream, tmp_path, None, env={"DNSGATE_ADMIN_TOKEN": ""})
    try:
        # A carriage return, then a line of the log's own format, then ANSI escapes (erase line, set title).
        forged = "x%0D2026-01-01%2000:00:00,000%20dnsgate.admin%20WARNING%20all%20fine%1B%5B2K%1B%5D0;t%07"
        head = (f"DELETE /quarantines/clients/agents/{forged} HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{admin_port}\r\nConnection: close\r\n\r\n").encode()
        assert raw_request(admin_port, head).startswith(b"HTTP/1.1 403 ")
        log = stderr(server)
        refused = [line for line in log.split(b"\n") if b"refused from" in line]
        assert len(refused) == 1
        assert RAW_CONTROL.search(log) is None, refused
        assert b"x\\r2026-01-01 00:00:00,000 dnsgate.admin WARNING all fine\\x1b[2K\\x1b]0;t\\x07" in refused[0]
    finally:
        assert server.stop() == 0


def test_malformed_requests_do_not_flood_the_log(unbound_upstream: Unbound, tmp_path: Path) -> None:
    server, admin_port = start(unbound_upstream, tmp_path, None)
    try:
        before = stderr(server).count(b"\n")
        malformed = [
            b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(200)) + b"\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: a\r\nBad\x1b[2K\rHeader\r\n\r\n",
            b"\x16\x03\x01 not http \r\n\r\n",
        ]
        for i in range(200):
            status_line = raw_request(admin_port, malformed[i % len(malformed)]).split(b"\r\n")[0]
            assert re.fullmatch(rb"HTTP/1\.[01] 400 Bad Request", status_line), status_line
        log = stderr(server)
        assert log.count(b"\n") - before <= 2, log.decode(errors="replace")[-3000:]
        assert b"Traceback" not in log
        assert RAW_CONTROL.search(log) is None
        assert b"malformed" in log  # a summary line says what happened
        assert up(admin_port)
    finally:
        assert server.stop() == 0
