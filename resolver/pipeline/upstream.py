"""Forwarding to upstream resolvers: failover, TCP fallback, health, a hard deadline.

What leaves is built anew from the checked question (``upstream_query``, via
the loop guard's ``marked``): nothing else a client wrote reaches an upstream.

Each UDP attempt leaves from a socket of its own, opened for it and closed
after it: the kernel gives every attempt a fresh random source port (Linux
draws it at random from the ephemeral range), with a fresh random ID, and with
``randomize_case`` (on by default) the query name's letters in random case
(DNS 0x20). The socket is connected, so the kernel hands it only datagrams from
the upstream's address and port; a reply then counts only when its ID and its
question, octet for octet, letter case included, are the ones sent. Anything
else is dropped and the attempt keeps waiting. A forger who can spoof the
upstream's address must guess port, ID and case together: about 15 + 16 bits
plus one a letter, against 16 + 2 when four sockets served 2,000 queries each.
The client's own letter case is put back in the reply's question.

At most ``MAX_UDP_SOCKETS`` attempts are in flight at once (each holds a file
descriptor); more wait, inside the query's deadline. A truncated reply is
retried over TCP. When no upstream has answered within ``servfail_after``
seconds the caller gets None (SERVFAIL).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import random
import resource
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from resolver.config import Upstream
from resolver.pipeline.loop import LogLimit
from resolver.wire.message import TC, U16, Question, restore_case, upstream_query

log = logging.getLogger("dnsgate.upstream")

MAX_UDP_SOCKETS: Final = 4096  # UDP attempts in flight at once, one socket each (Unbound's outgoing-range)
UNHEALTHY_AFTER: Final = 3  # consecutive failures
MAX_INFLIGHT_SAME_QUESTION: Final = 256  # beyond this, a question is looping rather than popular
# Distinct upstream queries for one question one client may have waiting at once (other flags,
# DO, loop marks): beyond, its next variant is SERVFAIL, so that no client alone can fill the
# loop guard's MAX_INFLIGHT_SAME_QUESTION and have others asking that question refused.
MAX_VARIANTS_PER_CLIENT: Final = 8
RETRY_UNHEALTHY_AFTER: Final = 5.0  # seconds before an unhealthy upstream is tried first again
FAILURE_LOG_SECONDS: Final = 10.0  # at most one "failed" line per upstream this often; the count says what was skipped

_random: Final = random.SystemRandom()


@dataclass(slots=True)
class Health:
    failures: int = 0
    down_since: float = 0.0
    queries: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)  # drained by metrics
    logged_at: float = float("-inf")  # last failure line written
    unlogged: int = 0  # failures since then
    mismatched: int = 0  # datagrams from the upstream's address that were not the reply awaited
    case_changed: int = 0  # of those: the awaited reply but for its question's letter case

    @property
    def healthy(self) -> bool:
        return self.failures < UNHEALTHY_AFTER


def randomize_case(name: bytes, bits: int) -> bytes:
    """``name`` (a lowercased wire name) with each letter a-z made upper case where ``bits``,
    read as one bit an octet (the octet's 0x20 bit), says so: DNS 0x20 with random ``bits``.

    The letters are found as the octets ``bytes.upper`` changes (a length octet is
    at most 63, below 'A'), in a few integer operations rather than a loop over the octets.
    """
    size = len(name)
    low = int.from_bytes(name, "big")
    letters = low ^ int.from_bytes(name.upper(), "big")  # 0x20 at every letter
    return (low ^ (letters & bits)).to_bytes(size, "big")


class SocketBudget:
    """At most ``limit`` UDP attempts hold a socket at once; the others wait, a client at a time.

    Waiters queue per client (``query.owner``), and a freed socket goes to the next client in
    turn: a client keeping thousands of slow names in flight waits behind its own attempts,
    while another client's attempt gets the next socket freed. A counter rather than
    ``asyncio.Semaphore``: the uncontended path, every attempt's, is an addition."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        self.waited = 0  # attempts that had to wait for a socket
        # client -> its waiting attempts; the dict's order is the turn (served first, then last)
        self._waiters: dict[str, deque[asyncio.Future[None]]] = {}

    async def acquire(self, client: str = "") -> None:
        if self.open < self.limit and not self._waiters:
            self.open += 1
            return
        self.waited += 1
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._waiters.get(client)
        if queue is None:
            queue = self._waiters[client] = deque()
        queue.append(waiter)
        try:
            await waiter  # release() hands its slot over: ``open`` stays as it is
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot, then cancelled before using it: pass it on
            else:
                with contextlib.suppress(ValueError):
                    queue.remove(waiter)
                if not queue and self._waiters.get(client) is queue:
                    del self._waiters[client]
            raise

    def release(self) -> None:
        waiters = self._waiters
        while waiters:
            client = next(iter(waiters))
            queue = waiters.pop(client)
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    if queue:
                        waiters[client] = queue  # its next attempt waits for its next turn
                    return
        self.open -= 1


def udp_socket_budget(wanted: int = MAX_UDP_SOCKETS) -> int:
    """How many UDP attempts may be in flight: ``wanted``, or fewer when the open-files
    limit is lower. The soft limit is raised towards the hard one first (as Unbound
    does for its outgoing range); half of what it allows is left for everything else
    (listeners, TCP connections, sinks)."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        need = 2 * wanted + 1024
        if soft != resource.RLIM_INFINITY and soft < need:
            target = need if hard == resource.RLIM_INFINITY else min(need, hard)
            if target > soft:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
    except (ValueError, OSError):
        return wanted
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(16, min(wanted, soft // 2))


class UpstreamClient:
    """Talks to one upstream server over UDP (a fresh socket per attempt) and TCP."""

    def __init__(self, upstream: Upstream, sockets: SocketBudget | None = None) -> None:
        self.upstream = upstream
        self.health = Health()
        self._family = socket.AF_INET6 if ":" in upstream.address else socket.AF_INET
        self._address = (upstream.address, upstream.port)
        self._sockets = sockets if sockets is not None else SocketBudget(MAX_UDP_SOCKETS)
        self.case_log = LogLimit()

    async def query_udp(self, wire: bytes, question: bytes, timeout: float, client: str = "") -> bytes:
        """One attempt from a socket of its own (waiting for one in ``client``'s turn). ``question``
        is the question section as ``wire`` holds it (lowercased); the reply returned carries
        the one sent."""
        size = len(question) - 4
        if self.upstream.randomize_case:
            bits = _random.getrandbits(16 + 8 * size)  # one draw: the ID, then the case
            sent = randomize_case(question[:size], bits >> 16) + question[size:]
        else:
            bits = _random.getrandbits(16)
            sent = question
        msg_id = bits & 0xFFFF
        out = U16.pack(msg_id) + wire[2:12] + sent + wire[12 + len(sent):]
        loop = asyncio.get_running_loop()
        budget = self._sockets
        await budget.acquire(client)
        try:
            sock = socket.socket(self._family, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                sock.connect(self._address)  # binds a random free port; only the upstream's datagrams arrive
                sock.send(out)
                future: asyncio.Future[bytes] = loop.create_future()
                fd = sock.fileno()
                loop.add_reader(fd, self._readable, sock, future, msg_id, sent)
                try:
                    async with asyncio.timeout(timeout):
                        return await future
                finally:
                    loop.remove_reader(fd)
            finally:
                sock.close()
        finally:
            budget.release()

    def _readable(self, sock: socket.socket, future: asyncio.Future[bytes], msg_id: int, sent: bytes) -> None:
        """Read what arrived; the future gets the first datagram with our ID and our question."""
        while not future.done():
            try:
                data = sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ICMP port unreachable and the like: the attempt failed
                future.set_exception(exc)
                return
            end = 12 + len(sent)
            if len(data) >= end and ((data[0] << 8) | data[1]) == msg_id:
                got = data[12:end]
                if got == sent:
                    future.set_result(data)
                    return
                if same_question(got, sent):  # but for the name's letter case
                    if not self.upstream.randomize_case:
                        future.set_result(data)
                        return
                    self._case_changed()
                    continue
            self.health.mismatched += 1  # not the answer to our question: ignore, keep waiting

    def _case_changed(self) -> None:
        health = self.health
        health.mismatched += 1
        health.case_changed += 1
        count = self.case_log.due(time.monotonic())
        if count:
            log.warning("upstream %s answered with the query name's letter case changed (%d such replies since "
                        "the last line): dropped as a possible forgery; if it never keeps the case, set "
                        "randomize_case: false for it", self.upstream.label, count)

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
                        and same_question(data[12 : 12 + len(question)], question)
                    ):
                        return data
            finally:
                writer.close()

    def close(self) -> None:
        """Nothing is held between attempts: every socket closes with its attempt."""


def question_bytes(wire: bytes, q: Question) -> bytes:
    """The question section as it leaves (``upstream_query``): the name lowercased, type and class
    as they are (lowercasing them too would turn type 65, HTTPS, into 97)."""
    return q.qname + wire[q.end - 4 : q.end]


def same_question(got: bytes, sent: bytes) -> bool:
    """Two question sections of one length alike but for the letter case of the name."""
    return got[-4:] == sent[-4:] and got[:-4].lower() == sent[:-4].lower()


class Forwarder:
    """Sends a query to the healthiest upstream, fails over, retries truncated replies over TCP."""

    def __init__(
        self, upstreams: tuple[Upstream, ...], timeout: float, deadline: float,
        mark: Callable[[bytes, Question, str], bytes] | None = None,
    ) -> None:
        self.sockets = SocketBudget(udp_socket_budget()) if upstreams else None
        self.clients = [UpstreamClient(u, self.sockets) for u in upstreams]
        self.timeout = timeout
        self.deadline = deadline
        self.mark = mark  # builds what leaves, with the loop guard's EDNS mark (else with no option)
        self.servfails = 0
        self.inflight: dict[bytes, int] = {}  # question -> queries waiting on an upstream for it
        # What is being asked upstream now, by what leaves (the query with ID 0, and the
        # transport): a query that would send the same joins it instead of sending again.
        self.pending: dict[tuple[bytes, bool], asyncio.Future[bytes | None]] = {}
        self.coalesced = 0  # queries answered from another query's upstream reply
        self.variants: dict[tuple[str, bytes], int] = {}  # (client, question) -> its queries waiting
        self.variants_refused = 0  # queries answered SERVFAIL: their client had MAX_VARIANTS_PER_CLIENT waiting
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
                "healthy": health.healthy, "latencies": samples, "unexpected": health.mismatched,
            })
        return {"upstreams": upstreams, "servfails": self.servfails, "any_healthy": self.any_healthy,
                "loop_suspected": self.loop_suspected, "coalesced": self.coalesced,
                "variants_refused": self.variants_refused}

    @property
    def any_healthy(self) -> bool:
        return any(c.health.healthy for c in self.clients)

    async def forward(self, wire: bytes, q: Question, *, tcp: bool = False, client: str = "") -> bytes | None:
        """The upstream's reply (its ID is ours, not the client's; its question the client's,
        letter case included), or None when none answered.

        Identical questions in flight are asked once: a query whose upstream query is the
        same, octet for octet (name, type, class, forwarded flags, DO, the loop marks it
        carries on; over the same transport), as one already waiting gets that one's reply,
        with its own letter case. Marks are part of it: a client cannot make another's query
        wait on a query that carries marks of its choosing. A client repeating a slow name
        cannot multiply the upstream's load, nor give a spoofer many outstanding queries to
        guess at (the birthday attack), nor fill the loop guard's count so that others
        asking the same name get SERVFAIL.
        """
        question = question_bytes(wire, q)
        out = self.mark(wire, q, client) if self.mark is not None else upstream_query(wire, q, b"")
        key = (out, tcp)  # ID 0: the forwarder draws one per attempt
        leader = self.pending.get(key)
        if leader is not None:
            self.coalesced += 1
            shared = await asyncio.shield(leader)
            if shared is None:
                self.servfails += 1
                return None
            return restore_case(shared, wire[12 : q.end - 4])
        variant = (client, question)
        mine = self.variants.get(variant, 0)
        if mine >= MAX_VARIANTS_PER_CLIENT:
            self.variants_refused += 1
            self.servfails += 1
            return None
        self.variants[variant] = mine + 1
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self.pending[key] = future
        try:
            reply = await self._forward(out, question, tcp, client)
            future.set_result(reply)
        finally:
            del self.pending[key]
            if not future.done():
                future.set_result(None)  # cancelled: the followers answer SERVFAIL
            left = self.variants[variant] - 1
            if left:
                self.variants[variant] = left
            else:
                del self.variants[variant]
        if reply is None:
            self.servfails += 1
            return None
        return restore_case(reply, wire[12 : q.end - 4])

    async def _forward(self, out: bytes, question: bytes, tcp: bool, client: str) -> bytes | None:
        """One upstream exchange of ``out`` for ``forward``: the reply as the upstream wrote it, or None."""
        waiting = self.inflight.get(question, 0)
        if waiting >= MAX_INFLIGHT_SAME_QUESTION:
            # The same question this many times at once: a loop through a resolver that
            # dropped the loop guard's mark, most likely. Do not feed it.
            self.loop_suspected += 1
            count = self.loop_suspected_log.due(time.monotonic())
            if count:  # a client asking one slow name many times can cause this too: never only once
                log.error("%d queries for the same question in flight: a forwarding loop? answering SERVFAIL; "
                          "such queries since the last line: %d", waiting, count)
            return None
        self.inflight[question] = waiting + 1
        try:
            async with asyncio.timeout(self.deadline):
                for upstream in self.ordered(time.monotonic()):
                    reply = await self._try(upstream, out, question, tcp, client)
                    if reply is not None:
                        return reply  # its question matched ours but for case
        except TimeoutError:
            pass
        finally:
            left = self.inflight[question] - 1
            if left:
                self.inflight[question] = left
            else:
                del self.inflight[question]
        return None

    async def _try(self, client: UpstreamClient, wire: bytes, question: bytes, tcp: bool,
                   asker: str = "") -> bytes | None:
        health = client.health
        started = time.monotonic()
        health.queries += 1
        try:
            if tcp:
                reply = await client.query_tcp(wire, question, self.timeout)
            else:
                reply = await client.query_udp(wire, question, self.timeout, asker)
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
