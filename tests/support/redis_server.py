"""Fixture: a real redis-server on a free loopback port.

``redis_server`` (session scope) yields its URL ``redis://127.0.0.1:PORT/0``
as a :class:`RedisServer`, a ``str`` subclass, so it can be passed anywhere a
URL is expected. ``stop()``/``start()`` kill and
restart the same server on the same port, for fallback tests. Readiness is a
real PING, never a sleep.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

from tests.support.harness import ensure_packages, free_port


def _redis_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        ensure_packages("redis-server")
        found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("redis-server not found and could not be installed")
    return found


def _ping(port: int) -> bool:
    """One RESP PING; True when the server answers +PONG."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer(str):
    """The URL of a redis-server child process bound to 127.0.0.1 only."""

    port: int
    url: str

    def __new__(cls, port: int | None = None) -> RedisServer:
        port = port or free_port()
        url = f"redis://127.0.0.1:{port}/0"
        self = super().__new__(cls, url)
        self.port = port
        self.url = url
        return self

    def __init__(self, _port: int | None = None) -> None:
        self._dir = tempfile.mkdtemp(prefix="dnsgate-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start (or restart) the server and wait until it answers PING."""
        if self.running:
            return
        self._proc = subprocess.Popen(
            [
                _redis_binary(),
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--save", "",
                "--appendonly", "no",
                "--dir", self._dir,
                "--protected-mode", "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._proc.returncode}")
            if _ping(self.port):
                return
            time.sleep(0.02)  # poll interval between readiness probes
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} not ready after {timeout}s")

    def stop(self) -> None:
        """Kill the server and wait for it to exit (connections drop at once)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    def flushall(self) -> None:
        """Empty every database (between tests sharing the session server)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(b"*1\r\n$8\r\nFLUSHALL\r\n")
            sock.recv(16)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server for the whole session; killed at the end."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()
