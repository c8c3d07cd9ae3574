"""UDP and TCP listeners, the swap point for reloads, and graceful shutdown.

A malformed datagram is answered FORMERR when its header is readable and
dropped otherwise; nothing a client sends can stop a listener.

TCP is a resource a client could hold or fill, so every part of it is bounded
(``TcpTable``): connections per client (``tcp_max_connections_per_client``: per
pod for a client identified as a pod, whatever address it connects from, else per
address), connections in all (``tcp_max_connections``; when full, the connection idle the
longest is closed so the new one is served), replies a client has not read
(``tcp_max_unsent`` bytes: past it dnsgate stops reading that connection until
the client reads, and closes it after ``tcp_idle_timeout``), queries of one
connection waiting on an upstream (``TCP_MAX_INFLIGHT``), and queries answered
from one connection per event-loop turn (``TCP_QUERIES_PER_TURN``), so a
pipelining client cannot hold the loop while others wait.

A client may half-close after its last query (RFC 7766 allows it): on EOF
the connection stops reading, sends the replies of the queries still waiting
on an upstream and then closes, within ``servfail_after`` of its last query
and never past ``tcp_idle_timeout``; with nothing in flight it closes at once.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import socket
import sys
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field, replace
from time import perf_counter
from typing import TYPE_CHECKING, Any, Protocol

from heuristics.detector import address_owner
from resolver import config as config_mod
from resolver.config import Config, ConfigError, Listen
from resolver.operations import steering
from resolver.operations.binding import ListenError
from resolver.operations.metrics import QueryCounters
from resolver.operations.sinks import build_sinks, check_sinks
from resolver.pipeline.chain import Engine, Pipeline
from resolver.pipeline.query import Query, Reply, servfail
from resolver.wire.message import (
    BADVERS,
    FORMERR,
    NOTIMP,
    OPCODE_MASK,
    U16,
    MalformedMessage,
    formerr,
    header_reply,
    parse_query,
)

if TYPE_CHECKING:
    pass

log = logging.getLogger("dnsgate.server")

TCP_BACKLOG = 100  # asyncio.start_server's own default


@dataclass(frozen=True, slots=True)
class BoundListener:
    """The UDP and TCP sockets of one ``listen`` entry, bound and not yet served."""

    listen: Listen
    udp: socket.socket
    tcp: socket.socket


def bind_listeners(listens: tuple[Listen, ...], workers: int = 1) -> list[BoundListener]:
    """Bind every listener synchronously: no event loop, no resolver threads, so privileges can go next.

    With ``workers`` > 1 the sockets join a SO_REUSEPORT group that sends each
    client address to one worker (resolver/operations/steering.py).
    """
    bound: list[BoundListener] = []
    try:
        for lst in listens:
            udp = bind_socket(lst, socket.SOCK_DGRAM, workers)
            try:
                tcp = bind_socket(lst, socket.SOCK_STREAM, workers)
            except OSError:
                udp.close()
                raise
            bound.append(BoundListener(lst, udp, tcp))
    except OSError:
        for b in bound:
            b.udp.close()
            b.tcp.close()
        raise
    return bound


def bind_socket(listen: Listen, kind: socket.SocketKind, workers: int = 1) -> socket.socket:
    """One bound, non-blocking socket; ListenError naming the address, port and protocol.

    ``workers`` > 1: SO_REUSEPORT, steered by client address.
    """
    family = socket.AF_INET6 if ":" in listen.address else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # [::] and 0.0.0.0 can then both be listed, as with asyncio's own servers.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if workers > 1:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((listen.address, listen.port))
        if workers > 1 and kind == socket.SOCK_STREAM:
            # A TCP group takes the steering program only once listening (attached
            # before, the kernel refuses the next worker's listen); the server's own
            # listen() later only sets the backlog again.
            sock.listen(TCP_BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ListenError(listen, "udp" if kind == socket.SOCK_DGRAM else "tcp", exc) from exc
    if workers > 1:
        try:
            steering.attach(sock, workers)
        except OSError as exc:
            # Still serves; the kernel then spreads by 4-tuple and per-client limits are per worker.
            log.warning("workers: cannot steer clients to one worker on %s port %d (%s): a client "
                        "changing source ports reaches every worker's limits", listen.address, listen.port,
                        exc.strerror or exc)
    return sock


class Server:
    """Owns the listeners and the current Pipeline; ``reload`` swaps the pipeline."""

    def __init__(self, config: Config, engine: Engine | None = None, pinned: dict[str, object] | None = None) -> None:
        self.config = config
        # Fields the command line set (--listen, --user): a reloaded file does not undo them.
        self.pinned: dict[str, object] = dict(pinned or {})
        self.engine = engine or Engine.from_config(config, build_sinks(config))
        # The live server charges the detector's work to the rate limit: the detector lists
        # the client of every name it estimates (replay leaves this off).
        self.engine.detector.estimated_for = []
        self.pipeline = Pipeline(config, self.engine)
        self.counters = QueryCounters()
        self.inflight: set[asyncio.Task[None]] = set()
        self.tcp = TcpTable()
        self._udp: list[UdpListener] = []
        self._tcp: list[asyncio.Server] = []
        self._stopping = asyncio.Event()
        self.reloads_ok = 0
        self.reloads_failed = 0
        self.last_reload_error = ""
        self.ready = False

    def stats(self) -> dict[str, Any]:
        """The listeners' own figures for metrics: queries, in-flight work, connections, reloads."""
        return {
            "queries": self.counters.by_label(),
            "rcodes": dict(self.counters.rcodes),
            "malformed": self.counters.malformed,
            "internal_errors": self.counters.internal_errors,
            "inflight": len(self.inflight),
            "tcp": self.tcp.stats(),
            "udp_shed": sum(udp.shed for udp in self._udp),
            "udp_send_errors": sum(udp.send_errors for udp in self._udp),
            "reloads_ok": self.reloads_ok,
            "reloads_failed": self.reloads_failed,
            "generation": self.engine.generation,
            "ready": self.ready,
        }

    # -- reload -------------------------------------------------------------

    def reload(self, path: str | None = None) -> bool:
        """Load, validate and compile the config again; keep the old policy when it is bad."""
        try:
            new = config_mod.load(path or self.config.path)
            if self.pinned:
                new = replace(new, **self.pinned)  # type: ignore[arg-type]
            check_sinks(new)
            pipeline = Pipeline(new, self.engine)
        except ConfigError as exc:
            self.reloads_failed += 1
            self.last_reload_error = str(exc)
            log.error("reload rejected, old policy kept: %s", exc)
            return False
        if {(lst.address, lst.port) for lst in new.listen} != {(lst.address, lst.port) for lst in self.config.listen}:
            log.warning("listen addresses changed in %s: restart dnsgate to apply them", new.path)
        self.config, self.pipeline = new, pipeline
        self.engine.generation += 1
        self.reloads_ok += 1
        log.info("reloaded %s (generation %d)", new.path, self.engine.generation)
        return True

    # -- the query path -----------------------------------------------------

    def query(
        self, data: bytes, client: str, transport: str, listener_ns: str | None
    ) -> Reply | Awaitable[Reply] | None:
        """Parse and run one query; None when the datagram is dropped."""
        try:
            q = parse_query(data)
        except MalformedMessage:
            if len(data) >= 12 and data[2] & 0x78 and not data[2] & 0x80:
                # NOTIFY, UPDATE, DSO ...: not implemented, whatever their sections hold
                # (DSO has no question at all); NOTIMP says so where FORMERR would not.
                self.counters.count("", "notimp", 0, NOTIMP)
                return Reply(header_reply(data, None, NOTIMP), NOTIMP, "notimp")
            self.counters.malformed += 1
            reply = formerr(data)
            if reply is None:
                return None
            self.counters.count("", "formerr", 0, FORMERR)
            return Reply(reply, FORMERR, "formerr")
        if U16.unpack_from(data, 2)[0] & OPCODE_MASK:
            self.counters.count("", "notimp", q.qtype, NOTIMP)
            return Reply(header_reply(data, q, NOTIMP), NOTIMP, "notimp")
        if q.edns_version:
            # Only EDNS version 0 exists; a later one is answered BADVERS (RFC 6891 section
            # 6.1.3), never from the cache of version-0 answers nor forwarded.
            self.counters.count("", "badvers", q.qtype, BADVERS)
            return Reply(header_reply(data, q, BADVERS), BADVERS, "badvers")
        query = Query(data, q, client, transport, time.time(), listener_ns)
        try:
            result = self.pipeline.handle(query)
        except Exception:
            self.counters.internal_errors += 1
            log.exception("internal error answering %r", data[:64])
            return servfail(data, q)
        if isinstance(result, Reply):
            self._count(query, result)
            return result
        return self._finish(query, result)

    async def _finish(self, query: Query, pending: Awaitable[Reply]) -> Reply:
        try:
            reply = await pending
        except Exception:
            self.counters.internal_errors += 1
            log.exception("internal error forwarding")
            reply = servfail(query.wire, query.question)
        self._count(query, reply)
        return reply

    def _count(self, query: Query, reply: Reply) -> None:
        view = query.view
        self.counters.count(view.name if view is not None else "", reply.action, query.question.qtype, reply.rcode)

    def track(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self.inflight.add(task)
        task.add_done_callback(self.inflight.discard)

    # -- listeners ----------------------------------------------------------

    async def start(self, bound: list[BoundListener] | None = None) -> None:
        """Serve on ``bound`` sockets (bound earlier, before privileges were dropped) or bind now."""
        if bound is None:
            bound = bind_listeners(self.config.listen, self.config.workers)
        await self.engine.start()
        for b in bound:
            lst = b.listen
            self._udp.append(UdpListener(self, lst, b.udp))
            tcp = await asyncio.start_server(functools.partial(self._tcp_client, listen=lst), sock=b.tcp,
                                             backlog=TCP_BACKLOG)
            self._tcp.append(tcp)
            log.info("listening on %s port %d (udp, tcp)", lst.address, lst.port)
        self.ready = True

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound UDP addresses (useful when port 0 was asked for)."""
        return [udp.sockname for udp in self._udp]

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listen: Listen) -> None:
        peer = writer.get_extra_info("peername")
        client = peer[0] if peer else ""
        # The slot's key is taken now and kept on the connection: it is released
        # under it even if the pod table has changed by the time the connection closes.
        key = self.pipeline.identity.client_key(client, listen.namespace)
        conn = TcpConnection(client, key, writer, time.monotonic())
        config = self.config
        if self._stopping.is_set() or not self.tcp.admit(
            conn, config.tcp_max_connections, config.tcp_max_connections_per_client
        ):
            writer.transport.abort()
            return
        writer.transport.set_write_buffer_limits(high=config.tcp_max_unsent)
        answered = 0
        half_closed = False
        try:
            while not self._stopping.is_set():
                try:
                    async with asyncio.timeout(config.tcp_idle_timeout):
                        length = U16.unpack(await reader.readexactly(2))[0]
                        data = await reader.readexactly(length)
                except asyncio.IncompleteReadError:
                    half_closed = True  # EOF: the client may still read (RFC 7766 lets it half-close)
                    break
                except (TimeoutError, ConnectionError):
                    break
                conn.last_active = time.monotonic()
                result = self.query(data, conn.client, "tcp", listen.namespace)
                if isinstance(result, Reply):
                    self._tcp_write(writer, result)
                elif result is not None:
                    conn.inflight += 1
                    self.track(self._tcp_reply(conn, result))
                if not await self._tcp_room(conn, config.tcp_max_unsent, config.tcp_idle_timeout):
                    break
                answered += 1
                if answered % TCP_QUERIES_PER_TURN == 0:
                    await asyncio.sleep(0)  # queued queries of this client wait one turn; others' go first
            if half_closed and conn.inflight:
                await self._tcp_answer_pending(conn, config.servfail_after, config.tcp_idle_timeout)
        finally:
            self.tcp.release(conn)
            writer.close()

    async def _tcp_answer_pending(self, conn: TcpConnection, servfail_after: float, idle_timeout: float) -> None:
        """After the client's EOF: wait for its queries still on an upstream and send their replies.

        Bounded from the connection's last query by the per-query deadline
        (``servfail_after``, and a little for the reply to be written) and by
        ``tcp_idle_timeout``, the longest an open connection is kept after its
        last query anyway: half-closing never holds a connection longer. Replies
        the client has not read by then are dropped with the connection.
        """
        remaining = conn.last_active + min(servfail_after + TCP_EOF_GRACE, idle_timeout) - time.monotonic()
        writer = conn.writer
        try:
            async with asyncio.timeout(max(remaining, 0.0)):
                while conn.inflight and not writer.is_closing():
                    conn.room.clear()
                    await conn.room.wait()
                await writer.drain()
        except (TimeoutError, ConnectionError):
            writer.transport.abort()

    async def _tcp_room(self, conn: TcpConnection, max_unsent: int, timeout: float) -> bool:
        """Backpressure: wait until the client has read its replies; False when it never does."""
        transport = conn.writer.transport
        if transport.get_write_buffer_size() <= max_unsent and conn.inflight < TCP_MAX_INFLIGHT:
            return True
        self.tcp.paused += 1
        try:
            async with asyncio.timeout(timeout):
                while conn.inflight >= TCP_MAX_INFLIGHT:
                    conn.room.clear()
                    await conn.room.wait()
                await conn.writer.drain()  # returns once the unsent bytes fall below a quarter of the bound
        except (TimeoutError, ConnectionError):
            return False
        return True

    @staticmethod
    def _tcp_write(writer: asyncio.StreamWriter, reply: Reply) -> None:
        if reply.wire is not None and not writer.is_closing():
            writer.write(U16.pack(len(reply.wire)) + reply.wire)

    async def _tcp_reply(self, conn: TcpConnection, pending: Awaitable[Reply]) -> None:
        try:
            self._tcp_write(conn.writer, await pending)
        finally:
            conn.inflight -= 1
            conn.room.set()

    async def serve_forever(self) -> None:
        await self._stopping.wait()

    def stop(self) -> None:
        self._stopping.set()

    async def shutdown(self) -> None:
        """Stop accepting, let in-flight queries finish (bounded), release everything."""
        for udp in self._udp:
            udp.close()
        for tcp in self._tcp:
            tcp.close()
        if self.inflight:
            await asyncio.wait(list(self.inflight), timeout=self.config.servfail_after + 1)
        await self.engine.close(time.time())


TCP_MAX_INFLIGHT = 64  # queries of one connection waiting on an upstream before it is read again
TCP_QUERIES_PER_TURN = 16  # queries answered from one connection before it yields the event loop
TCP_EOF_GRACE = 0.5  # seconds past servfail_after a half-closed connection waits for its last replies to go out


@dataclass(eq=False)
class TcpConnection:
    """One client TCP connection, as the table of connections sees it."""

    client: str  # the peer's address: what its queries are answered as
    key: str  # its per-client slot: ``pod:<namespace>/<name>`` for a pod, else the address (IdentityStage.client_key)
    writer: asyncio.StreamWriter
    last_active: float  # monotonic time of its last query (or of the accept)
    inflight: int = 0  # its queries waiting on an upstream
    room: asyncio.Event = field(default_factory=asyncio.Event)  # set when one of them is answered

    @property
    def idle(self) -> bool:
        """Nothing to answer and nothing unsent: closing it loses no reply."""
        return self.inflight == 0 and self.writer.transport.get_write_buffer_size() == 0


class TcpTable:
    """Open client TCP connections: a cap per client and a global cap that evicts the idlest.

    A client is a connection's ``key``, the one the rate limit and the
    quarantine use: the pod for a client identified as a pod (so a pod with
    an IPv4 and an IPv6 address, or several, holds one cap, not one per
    address), else the address. The key is taken at accept and kept on the
    connection, so the slot is given back under it however the pod table
    changed meanwhile.
    """

    def __init__(self) -> None:
        self.connections: dict[TcpConnection, None] = {}  # accept order
        self.per_client: dict[str, int] = {}  # connection key -> its open connections
        self.refused_per_client = 0
        self.refused_full = 0
        self.evicted_idle = 0
        self.paused = 0

    def __len__(self) -> int:
        return len(self.connections)

    def stats(self) -> dict[str, int]:
        """Open connections and what the caps and backpressure did, for metrics."""
        return {
            "connections": len(self.connections),
            "refused_per_client": self.refused_per_client,
            "refused_full": self.refused_full,
            "evicted_idle": self.evicted_idle,
            "paused": self.paused,
        }

    def admit(self, conn: TcpConnection, max_total: int, max_per_client: int) -> bool:
        """Take a slot for ``conn``; at the global cap, close the connection idle the longest first."""
        if self.per_client.get(conn.key, 0) >= max_per_client:
            self.refused_per_client += 1
            return False
        if len(self.connections) >= max_total:
            victim = min((c for c in self.connections if c.idle), key=lambda c: c.last_active, default=None)
            if victim is None:
                self.refused_full += 1
                return False
            self.release(victim)
            victim.writer.transport.abort()  # its reader sees EOF and its task ends
            self.evicted_idle += 1
        self.connections[conn] = None
        self.per_client[conn.key] = self.per_client.get(conn.key, 0) + 1
        return True

    def release(self, conn: TcpConnection) -> None:
        """Give the slot back (idempotent: an evicted connection's task releases it again)."""
        if self.connections.pop(conn, False) is not False:
            left = self.per_client[conn.key] - 1
            if left:
                self.per_client[conn.key] = left
            else:
                del self.per_client[conn.key]


UDP_READ_PER_TURN = 2048  # datagrams read from a socket per event-loop turn (reading and shedding one is ~1 us)
UDP_ANSWER_PER_TURN = 256  # datagrams answered per turn, one client after another ...
UDP_TURN_SECONDS = 0.002  # ... and at most this long, so expensive queries cannot make a turn long
UDP_QUEUE_PER_CLIENT = 1024  # datagrams of one client read but not yet answered; beyond, the newest are shed
UDP_QUEUE_TOTAL = 16_384  # the same, all clients together


class QueryServer(Protocol):
    """What a UDP listener asks of the server behind it (``Server``; tests use small stand-ins)."""

    def query(
        self, data: bytes, client: str, transport: str, listener_ns: str | None
    ) -> Reply | Awaitable[Reply] | None: ...

    def track(self, coro: Awaitable[None]) -> None: ...


class UdpListener:
    """One UDP socket, read in batches and answered round-robin per client (an IPv4 address,
    an IPv6 network of ``ipv6_client_prefix`` bits: a host cycling the addresses of its /64
    is one client here too).

    The kernel queues datagrams in arrival order, so a client that floods would
    put all its queries ahead of everyone else's. Each turn of the event loop
    this listener reads up to ``UDP_READ_PER_TURN`` datagrams into one queue per
    client address, then answers up to ``UDP_ANSWER_PER_TURN`` of them (for at
    most ``UDP_TURN_SECONDS``) taking one from each client in turn. A client with a long queue therefore waits
    for its own queries only; another client's query is answered within one
    round. A queue beyond ``UDP_QUEUE_PER_CLIENT`` sheds the newest datagrams
    (counted in ``shed``): reading and dropping one costs about a microsecond.
    """

    def __init__(self, server: QueryServer, listen: Listen, sock: socket.socket) -> None:
        self.server = server
        self.namespace = listen.namespace
        self.sock = sock
        sock.setblocking(False)
        enlarge_receive_buffer(sock)
        self.queues: dict[str, collections.deque[tuple[bytes, Any]]] = {}  # client -> datagrams, round-robin order
        self.queued = 0
        self.shed = 0
        self.send_errors = 0
        self.closed = False
        self._loop = asyncio.get_running_loop()
        self._serving = False
        self._loop.add_reader(sock.fileno(), self._readable)

    @property
    def sockname(self) -> tuple[str, int]:
        return self.sock.getsockname()[:2]  # type: ignore[no-any-return]

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.queues.clear()

    def _readable(self) -> None:
        recv = self.sock.recvfrom
        queues = self.queues
        config: Config | None = getattr(self.server, "config", None)
        prefix = 128 if config is None else config.ipv6_client_prefix
        for _ in range(UDP_READ_PER_TURN):
            try:
                data, addr = recv(65_535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. an ICMP error reported on the socket: nothing to answer
                log.debug("udp receive: %s", exc)
                break
            client = addr[0]
            if prefix < 128 and ":" in client:
                client = address_owner(client, prefix)
            queue = queues.get(client)
            if queue is None:
                queues[client] = queue = collections.deque()
            elif len(queue) >= UDP_QUEUE_PER_CLIENT or self.queued >= UDP_QUEUE_TOTAL:
                self.shed += 1
                continue
            queue.append((data, addr))
            self.queued += 1
        self._serve()

    def _serve(self) -> None:
        self._serving = False
        queues = self.queues
        budget = UDP_ANSWER_PER_TURN
        deadline = perf_counter() + UDP_TURN_SECONDS
        while queues and budget > 0:
            for client in list(queues):
                queue = queues[client]
                data, addr = queue.popleft()
                if not queue:
                    del queues[client]
                self.queued -= 1
                self._answer(data, addr)
                budget -= 1
                if budget == 0 or self.closed or perf_counter() > deadline:
                    budget = 0
                    break
        if queues and not self._serving and not self.closed:
            self._serving = True
            self._loop.call_soon(self._serve)  # the rest next turn: TCP and upstream replies go in between

    def _answer(self, data: bytes, addr: Any) -> None:
        server = self.server
        if isinstance(server, Server):
            # The server itself (not a test's stand-in): a direct call in the compiled build,
            # where a call through the QueryServer Protocol looks the method up every query.
            result = server.query(data, addr[0], "udp", self.namespace)
        else:
            result = server.query(data, addr[0], "udp", self.namespace)
        if result is None:
            return
        if isinstance(result, Reply):
            if result.wire is not None:
                self._send(result.wire, addr)
            return
        self.server.track(self._reply_later(result, addr))

    def _send(self, wire: bytes, addr: Any) -> None:
        try:
            self.sock.sendto(wire, addr)
        except OSError as exc:  # a full send buffer drops the reply, as the network would; the client retries
            self.send_errors += 1
            log.debug("udp send to %s: %s", addr[0], exc)

    async def _reply_later(self, pending: Awaitable[Reply], addr: Any) -> None:
        reply = await pending
        if reply.wire is not None and not self.closed:
            self._send(reply.wire, addr)


RECEIVE_BUFFER = 4 * 1024 * 1024


def enlarge_receive_buffer(sock: socket.socket) -> None:
    """A burst of queries should queue in the kernel, not be dropped there."""
    # Python's socket module leaves SO_RCVBUFFORCE out; it is 33 on Linux (root may pass net.core.rmem_max)
    force = getattr(socket, "SO_RCVBUFFORCE", 33 if sys.platform == "linux" else None)
    for option in (force, socket.SO_RCVBUF):
        if option is None:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, RECEIVE_BUFFER)
            return
        except OSError:
            continue
