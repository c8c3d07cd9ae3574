"""Forwarding to upstream resolvers: failover, TCP fallback, health, a hard deadline.

What leaves is built anew from the checked question (``upstream_query``, via
the loop guard's ``marked``): nothing else a client wrote reaches an upstream.

Queries leave from a small pool of UDP sockets per upstream, each bound to a
kernel-chosen random port and replaced after a number of uses, with a fresh
random ID per query. A reply is accepted only when its ID and question match
what was sent. A truncated reply is retried over TCP. When no upstream has
answered within ``servfail_after`` seconds the caller gets None (SERVFAIL).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import random
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from resolver.config import Upstream
from resolver.pipeline.loop import LogLimit
from resolver.wire.message import TC, U16, Question, upstream_query

log = logging.getLogger("dnsgate.upstream")

SOCKETS_PER_UPSTREAM = 4
USES_PER_SOCKET = 2_000
UNHEALTHY_AFTER = 3  # consecutive failures
MAX_INFLIGHT_SAME_QUESTION = 256  # beyond this, a question is looping rather than popular
RETRY_UNHEALTHY_AFTER = 5.0  # seconds before an unhealthy upstream is tried first again
FAILURE_LOG_SECONDS = 10.0  # at most one "failed" line per upstream this often; the count says what was skipped

_random = random.SystemRandom()


@dataclass(slots=True)
class Health:
    failures: int = 0
    down_since: float = 0.0
    queries: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)  # drained by metrics
    logged_at: float = float("-inf")  # last failure line written
    unlogged: int = 0  # failures since then

    @property
    def healthy(self) -> bool:
        return self.failures < UNHEALTHY_AFTER


class _UdpChannel(asyncio.DatagramProtocol):
    """One connected UDP socket and the queries waiting on it, keyed by ID."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: dict[int, tuple[asyncio.Future[bytes], bytes]] = {}
        self.uses = 0
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, _addr: tuple[str, int]) -> None:
        if len(data) < 12:
            return
        msg_id = U16.unpack_from(data, 0)[0]
        waiting = self.pending.get(msg_id)
        if waiting is None:
            return
        future, question = waiting
        if data[12 : 12 + len(question)].lower() != question or future.done():
            return  # not the answer to our question: ignore, keep waiting
        del self.pending[msg_id]
        future.set_result(data)

    def error_received(self, exc: Exception) -> None:
        for future, _ in self.pending.values():
            if not future.done():
                future.set_exception(exc)
        self.pending.clear()

    def connection_lost(self, _exc: Exception | None) -> None:
        self.closed = True
        for future, _ in self.pending.values():
            if not future.done():
                future.set_exception(ConnectionError("upstream socket closed"))
        self.pending.clear()


class UpstreamClient:
    """Talks to one upstream server over UDP (pooled sockets) and TCP."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.health = Health()
        self._channels: list[_UdpChannel | None] = [None] * SOCKETS_PER_UPSTREAM
        self._next = 0
        self._family = socket.AF_INET6 if ":" in upstream.address else socket.AF_INET

    async def _channel(self) -> _UdpChannel:
        i = self._next = (self._next + 1) % SOCKETS_PER_UPSTREAM
        channel = self._channels[i]
        if channel is None or channel.closed or channel.uses >= USES_PER_SOCKET:
            if channel is not None and not channel.pending and channel.transport is not None:
                channel.transport.close()
            loop = asyncio.get_running_loop()
            _, channel = await loop.create_datagram_endpoint(
                _UdpChannel,
                remote_addr=(self.upstream.address, self.upstream.port),
                family=self._family,
            )
            self._channels[i] = channel
        channel.uses += 1
        return channel

    async def query_udp(self, wire: bytes, question: bytes, timeout: float) -> bytes:
        channel = await self._channel()
        msg_id = _random.getrandbits(16)
        while msg_id in channel.pending:
            msg_id = _random.getrandbits(16)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        channel.pending[msg_id] = (future, question)
        assert channel.transport is not None
        channel.transport.sendto(U16.pack(msg_id) + wire[2:])
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            channel.pending.pop(msg_id, None)

    async def query_tcp(self, wire: bytes, question: bytes, timeout: float) -> bytes:
        msg_id = _random.getrandbits(16)
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(self.upstream.address, self.upstream.port)
            try:
                out = U16.pack(msg_id) + wire[2:]
                writer.write(U16.pack(len(out)) + out)
                await writer.drain()
                while True:
                    length = U16.unpack(await reader.readexactly(2))[0]
                    data = await reader.readexactly(length)
                    if (
                        len(data) >= 12
                        and U16.unpack_from(data, 0)[0] == msg_id
                        and data[12 : 12 + len(question)].lower() == question
                    ):
                        return data
            finally:
                writer.close()

    def close(self) -> None:
        for channel in self._channels:
            if channel is not None and channel.transport is not None:
                channel.transport.close()
        self._channels = [None] * SOCKETS_PER_UPSTREAM


def question_bytes(wire: bytes, q: Question) -> bytes:
    """The question section, lowercased, to match replies against."""
    return wire[12 : q.end].lower()


class Forwarder:
    """Sends a query to the healthiest upstream, fails over, retries truncated replies over TCP."""

    def __init__(
        self, upstreams: tuple[Upstream, ...], timeout: float, deadline: float,
        mark: Callable[[bytes, Question], bytes] | None = None,
    ) -> None:
        self.clients = [UpstreamClient(u) for u in upstreams]
        self.timeout = timeout
        self.deadline = deadline
        self.mark = mark  # builds what leaves, with the loop guard's EDNS mark (else with no option)
        self.servfails = 0
        self.inflight: dict[bytes, int] = {}  # question -> queries waiting on an upstream for it
        self.loop_suspected = 0
        self.loop_suspected_log = LogLimit()

    def ordered(self, now: float) -> list[UpstreamClient]:
        """Healthy upstreams in configured order, then the unhealthy ones (retried after a while)."""
        healthy = [c for c in self.clients if c.health.healthy]
        retry = [
            c for c in self.clients
            if not c.health.healthy and now - c.health.down_since >= RETRY_UNHEALTHY_AFTER
        ]
        rest = [c for c in self.clients if c not in healthy and c not in retry]
        return retry[:1] + healthy + retry[1:] + rest

    def stats(self) -> dict[str, Any]:
        """Counters for metrics. Latency samples are handed over once: each call drains them."""
        upstreams = []
        for client in self.clients:
            health = client.health
            samples, health.latencies = health.latencies, []
            upstreams.append({
                "label": client.upstream.label, "queries": health.queries, "errors": health.errors,
                "healthy": health.healthy, "latencies": samples,
            })
        return {"upstreams": upstreams, "servfails": self.servfails, "any_healthy": self.any_healthy,
                "loop_suspected": self.loop_suspected}

    @property
    def any_healthy(self) -> bool:
        return any(c.health.healthy for c in self.clients)

    async def forward(self, wire: bytes, q: Question, *, tcp: bool = False) -> bytes | None:
        """The upstream's reply (its ID is ours, not the client's; its question the client's,
        letter case included), or None when none answered."""
        question = question_bytes(wire, q)
        waiting = self.inflight.get(question, 0)
        if waiting >= MAX_INFLIGHT_SAME_QUESTION:
            # The same question this many times at once: a loop through a resolver that
            # dropped the loop guard's mark, most likely. Do not feed it.
            self.loop_suspected += 1
            count = self.loop_suspected_log.due(time.monotonic())
            if count:  # a client asking one slow name many times can cause this too: never only once
                log.error("%d queries for the same question in flight: a forwarding loop? answering SERVFAIL; "
                          "such queries since the last line: %d", waiting, count)
            self.servfails += 1
            return None
        out = self.mark(wire, q) if self.mark is not None else upstream_query(wire, q, b"")
        self.inflight[question] = waiting + 1
        try:
            async with asyncio.timeout(self.deadline):
                for client in self.ordered(time.monotonic()):
                    reply = await self._try(client, out, question, tcp)
                    if reply is not None:
                        # The name left lowercased: the client gets its own question back.
                        return reply[:12] + wire[12 : q.end] + reply[q.end :]
        except TimeoutError:
            pass
        finally:
            left = self.inflight[question] - 1
            if left:
                self.inflight[question] = left
            else:
                del self.inflight[question]
        self.servfails += 1
        return None

    async def _try(self, client: UpstreamClient, wire: bytes, question: bytes, tcp: bool) -> bytes | None:
        health = client.health
        started = time.monotonic()
        health.queries += 1
        try:
            if tcp:
                reply = await client.query_tcp(wire, question, self.timeout)
            else:
                reply = await client.query_udp(wire, question, self.timeout)
                if U16.unpack_from(reply, 2)[0] & TC:
                    reply = await client.query_tcp(wire, question, self.timeout * 2)
        except (TimeoutError, OSError, ConnectionError, asyncio.IncompleteReadError, struct.error) as exc:
            health.errors += 1
            health.failures += 1
            self._log_failure(client, failure_reason(exc, self.timeout))
            return None
        if not health.healthy:
            log.info("upstream %s healthy again", client.upstream.label)
        health.failures = 0
        if len(health.latencies) < 10_000:
            health.latencies.append(time.monotonic() - started)
        return reply

    def _log_failure(self, client: UpstreamClient, reason: str) -> None:
        health, label, now = client.health, client.upstream.label, time.monotonic()
        if health.failures == UNHEALTHY_AFTER:
            health.down_since = now
            log.warning("upstream %s marked unhealthy after %d failures in a row: %s", label, UNHEALTHY_AFTER, reason)
        elif now - health.logged_at >= FAILURE_LOG_SECONDS:
            skipped = f" ({health.unlogged} failures since the last line)" if health.unlogged else ""
            log.warning("upstream %s failed: %s%s", label, reason, skipped)
        else:
            health.unlogged += 1
            return
        health.logged_at, health.unlogged = now, 0

    def close(self) -> None:
        for client in self.clients:
            client.close()


def failure_reason(exc: BaseException, timeout: float) -> str:
    """Why an attempt failed, in the operator's words: timeout, refused, unreachable, ..."""
    if isinstance(exc, TimeoutError):
        return f"timeout (no reply within {timeout:g} s)"
    if isinstance(exc, ConnectionRefusedError):
        return "refused (nothing listens on that port)"
    if isinstance(exc, (asyncio.IncompleteReadError, struct.error)):
        return "truncated reply over TCP"
    if isinstance(exc, OSError) and exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return f"unreachable ({os.strerror(exc.errno)})"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__
