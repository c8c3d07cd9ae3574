"""The upstream failure log: the reason on the first failure, one line per interval after, and the switch to unhealthy."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket

import dns.message
import pytest

from resolver.config import Upstream
from resolver.pipeline.upstream import UNHEALTHY_AFTER, Forwarder, failure_reason
from resolver.wire.message import parse_query


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def forward_once(forwarder: Forwarder) -> bytes | None:
    wire = dns.message.make_query("www.example.", "A").to_wire()
    return await forwarder.forward(wire, parse_query(wire))


def failure_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "dnsgate.upstream"]


async def test_timeout_is_named_on_the_first_failure_then_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    # A bound socket that never answers: every attempt times out.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        upstream = Upstream("127.0.0.1", silent.getsockname()[1])
        forwarder = Forwarder((upstream,), timeout=0.05, deadline=0.2)
        with caplog.at_level(logging.WARNING, logger="dnsgate.upstream"):
            for _ in range(UNHEALTHY_AFTER + 2):
                assert await forward_once(forwarder) is None
        forwarder.close()
    lines = failure_lines(caplog)
    assert lines[0] == f"upstream {upstream.label} failed: timeout (no reply within 0.05 s)"
    assert lines[1] == (f"upstream {upstream.label} marked unhealthy after {UNHEALTHY_AFTER} failures in a row: "
                        "timeout (no reply within 0.05 s)")
    assert len(lines) == 2  # the failures after it fall inside the interval


async def test_refused_is_named(caplog: pytest.LogCaptureFixture) -> None:
    upstream = Upstream("127.0.0.1", free_udp_port())  # nothing listens: ICMP port unreachable
    forwarder = Forwarder((upstream,), timeout=0.5, deadline=1.0)
    with caplog.at_level(logging.WARNING, logger="dnsgate.upstream"):
        assert await forward_once(forwarder) is None
    forwarder.close()
    assert failure_lines(caplog)[0] == f"upstream {upstream.label} failed: refused (nothing listens on that port)"


def test_reasons() -> None:
    assert failure_reason(OSError(errno.ENETUNREACH, "x"), 1.0) == "unreachable (Network is unreachable)"
    assert failure_reason(OSError(errno.EHOSTUNREACH, "x"), 1.0).startswith("unreachable")
    assert failure_reason(asyncio.IncompleteReadError(b"", 2), 1.0) == "truncated reply over TCP"
    assert failure_reason(ConnectionError(), 1.0) == "ConnectionError"
