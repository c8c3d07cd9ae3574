"""UDP and TCP listeners, the swap point for reloads, and graceful shutdown.

A malformed datagram is answered FORMERR when its header is readable and
dropped otherwise; nothing a client sends can stop a listener.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import socket
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from resolver import config as config_mod
from resolver.config import Config, ConfigError, Listen
from resolver.metrics import QueryCounters
from resolver.pipeline import Engine, Pipeline
from resolver.query import Query, Reply, servfail
from resolver.wire import (
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
    from resolver.reload import Reloader

log = logging.getLogger("dnsgate.server")


class Server:
    """Owns the listeners and the current Pipeline; ``reload`` swaps the pipeline."""

    def __init__(self, config: Config, engine: Engine | None = None) -> None:
        self.config = config
        self.engine = engine or Engine.from_config(config)
        self.pipeline = Pipeline(config, self.engine)
        self.counters = QueryCounters()
        self.inflight: set[asyncio.Task[None]] = set()
        self.tcp_connections = 0
        self._udp: list[asyncio.DatagramTransport] = []
        self._tcp: list[asyncio.Server] = []
        self._stopping = asyncio.Event()
        self.reloads_ok = 0
        self.reloads_failed = 0
        self.last_reload_error = ""
        self.ready = False

    # -- reload -------------------------------------------------------------

    def reload(self, path: str | None = None) -> bool:
        """Load, validate and compile the config again; keep the old policy when it is bad."""
        try:
            new = config_mod.load(path or self.config.path)
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
            self.counters.malformed += 1
            reply = formerr(data)
            if reply is None:
                return None
            self.counters.count("", "formerr", 0, FORMERR)
            return Reply(reply, FORMERR, "formerr")
        if U16.unpack_from(data, 2)[0] & OPCODE_MASK:
            self.counters.count("", "notimp", q.qtype, NOTIMP)
            return Reply(header_reply(data, q, NOTIMP), NOTIMP, "notimp")
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
        ns = query.namespace
        self.counters.count(ns.name if ns else "", reply.action, query.question.qtype, reply.rcode)

    def track(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self.inflight.add(task)
        task.add_done_callback(self.inflight.discard)

    # -- listeners ----------------------------------------------------------

    async def start(self) -> None:
        await self.engine.start()
        loop = asyncio.get_running_loop()
        for lst in self.config.listen:
            family = socket.AF_INET6 if ":" in lst.address else socket.AF_INET
            transport, _ = await loop.create_datagram_endpoint(
                functools.partial(UdpListener, self, lst),
                local_addr=(lst.address, lst.port),
                family=family,
                reuse_port=self.config.workers > 1,
            )
            self._udp.append(transport)
            tcp = await asyncio.start_server(
                functools.partial(self._tcp_client, listen=lst),
                lst.address,
                lst.port,
                family=family,
                reuse_port=self.config.workers > 1,
            )
            self._tcp.append(tcp)
            log.info("listening on %s port %d (udp, tcp)", lst.address, lst.port)
        self.ready = True

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound UDP addresses (useful when port 0 was asked for)."""
        return [t.get_extra_info("sockname")[:2] for t in self._udp]

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listen: Listen) -> None:
        if self.tcp_connections >= self.config.tcp_max_connections or self._stopping.is_set():
            writer.close()
            return
        self.tcp_connections += 1
        peer = writer.get_extra_info("peername")
        client = peer[0] if peer else ""
        try:
            while not self._stopping.is_set():
                try:
                    async with asyncio.timeout(self.config.tcp_idle_timeout):
                        length = U16.unpack(await reader.readexactly(2))[0]
                        data = await reader.readexactly(length)
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    break
                result = self.query(data, client, "tcp", listen.namespace)
                if result is None:
                    continue
                if isinstance(result, Reply):
                    self._tcp_write(writer, result)
                else:
                    self.track(self._tcp_reply(writer, result))
        finally:
            self.tcp_connections -= 1
            writer.close()

    @staticmethod
    def _tcp_write(writer: asyncio.StreamWriter, reply: Reply) -> None:
        if reply.wire is not None and not writer.is_closing():
            writer.write(U16.pack(len(reply.wire)) + reply.wire)

    async def _tcp_reply(self, writer: asyncio.StreamWriter, pending: Awaitable[Reply]) -> None:
        self._tcp_write(writer, await pending)

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


class UdpListener(asyncio.DatagramProtocol):
    def __init__(self, server: Server, listen: Listen) -> None:
        self.server = server
        self.namespace = listen.namespace
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            enlarge_receive_buffer(sock)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        result = self.server.query(data, addr[0], "udp", self.namespace)
        if result is None:
            return
        if isinstance(result, Reply):
            if result.wire is not None:
                assert self.transport is not None
                self.transport.sendto(result.wire, addr)
            return
        self.server.track(self._reply_later(result, addr))

    async def _reply_later(self, pending: Awaitable[Reply], addr: tuple[str, int]) -> None:
        reply = await pending
        if reply.wire is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply.wire, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("udp error: %s", exc)


RECEIVE_BUFFER = 4 * 1024 * 1024


def enlarge_receive_buffer(sock: socket.socket) -> None:
    """A burst of queries should queue in the kernel, not be dropped there."""
    for option in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
        if option is None:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, RECEIVE_BUFFER)
            return
        except OSError:
            continue


async def run(config: Config) -> int:
    """Run until SIGTERM/SIGINT; SIGHUP reloads the config and reopens the jsonl sinks.

    Also starts the config-file watcher and, when ``admin`` is configured, the
    admin HTTP server (/metrics, /healthz, /readyz, POST /reload).
    """
    from resolver.admin import AdminServer
    from resolver.metrics import AlertCounts
    from resolver.reload import Reloader
    from resolver.sinks import connect_fallbacks

    try:
        server = Server(config)
    except ConfigError as exc:  # sink options are validated when the sinks are built
        log.error("%s", exc)
        return 2
    alert_counts = AlertCounts()
    server.engine.alerts.sinks.append(alert_counts)
    connect_fallbacks(server.engine.alerts.sinks)
    await server.start()
    reloader = Reloader(server)
    admin: AdminServer | None = None
    if config.admin is not None:
        admin = AdminServer(server, reloader, alert_counts)
        await admin.start(config.admin.address, config.admin.port)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, server.stop)
    loop.add_signal_handler(signal.SIGINT, server.stop)
    loop.add_signal_handler(signal.SIGHUP, lambda: on_sighup(server, reloader))
    background = [
        asyncio.ensure_future(sweep_alerts(server)),
        asyncio.ensure_future(reloader.watch()),
    ]
    if config.state.backend == "redis":
        background.append(asyncio.ensure_future(share_learned(server, config.state.url)))
    try:
        await server.serve_forever()
    finally:
        for task in background:
            task.cancel()
        log.info("shutting down: finishing %d in-flight queries", len(server.inflight))
        await server.shutdown()
        if admin is not None:
            await admin.stop()
    return 0


def on_sighup(server: Server, reloader: Reloader | None = None) -> None:
    for sink in server.engine.alerts.sinks:
        reopen = getattr(sink, "reopen", None)
        if reopen is not None:
            reopen()
    if reloader is not None:
        reloader.reload("SIGHUP")
    else:
        server.reload()


LEARN_PUSH_SECONDS = 2.0


async def share_learned(server: Server, url: str) -> None:
    """Push learn-mode names to Redis in the background, for ``dnsgate propose --from-redis``."""
    import redis.asyncio as aioredis

    from resolver.learn import RedisLearnStore

    store = RedisLearnStore()
    client = aioredis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
    failing = False
    try:
        while True:
            await asyncio.sleep(LEARN_PUSH_SECONDS)  # pacing of a background loop
            try:
                await store.apush(client, server.engine.learned)
                if failing:
                    log.info("redis %s is back: learned names shared again", url)
                failing = False
            except (OSError, aioredis.RedisError) as exc:
                if not failing:
                    log.warning("redis %s unavailable, learned names kept locally: %s", url, exc)
                failing = True
    finally:
        await client.aclose()


async def sweep_alerts(server: Server) -> None:
    """Report folded policy-alert repeats once their window closes."""
    while True:
        await asyncio.sleep(min(5.0, server.config.policy_alert_window))
        server.engine.alerts.sweep(time.time())
