"""The admin HTTP server: metrics, probes and reload, on its own (loopback) address.

    GET  /metrics   Prometheus exposition (text format)
    GET  /healthz   200 while the event loop runs (liveness)
    GET  /readyz    200 once the policy is loaded, an upstream is healthy and (pod identity on)
                    the first Pod list is applied, else 503
    POST /reload    reload the config now; 200 with the new generation, 422 with the error
                    (with workers: N, the other workers are sent SIGHUP and reload too)
    GET  /quarantines/clients                       clients quarantined now (on_undeclared)
    DELETE /quarantines/clients/{namespace}/{client} lift one client's quarantine

Enabled by ``admin: {address: 127.0.0.1, port: 9153}`` in the config. It shares
the resolver's event loop: a scrape reads counters, it never locks the query path.

``/metrics``, ``/healthz`` and ``/readyz`` are open (Prometheus and probes read them). ``POST
/reload`` and the client-quarantine calls change what the resolver does (or show
who is quarantined), so they ask who is calling: a bearer
token (``DNSGATE_ADMIN_TOKEN`` or ``admin.token_file``), and a Host and Origin
naming the admin address itself. The token stops other local users; the Host
and Origin checks stop a browser on the host being used for a cross-site POST
or a DNS-rebinding attack. With no token configured the endpoint is refused;
SIGHUP and the file watcher still reload.

The admin port shares the process's file descriptors with DNS, and whatever
can reach it (on a VM, any local process) may be hostile, so no client can
hold descriptors there for long: at most ``ADMIN_MAX_CONNECTIONS`` connections
are open (at the cap a new one closes the idlest), a connection sends a whole
request head within ``ADMIN_READ_SECONDS`` of opening and, after each request,
has its answer written and the next head in within ``ADMIN_IDLE_SECONDS``, or
it is closed (:class:`AdminConnections`). What a client sends reaches the log
escaped (:func:`printable`), and malformed requests are one line a minute, not
a traceback each (:class:`HttpErrorLog`).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from resolver.config import Admin, ConfigError
from resolver.operations.metrics import AlertCounts, Collector, pods_synced, ready
from resolver.pipeline.loop import LogLimit

if TYPE_CHECKING:
    from resolver.operations.kubernetes import PodWatch
    from resolver.operations.listeners import Server
    from resolver.operations.reload import Reloader

log = logging.getLogger("dnsgate.admin")

TOKEN_ENV = "DNSGATE_ADMIN_TOKEN"  # noqa: S105
REFUSAL_LOG_SECONDS = 60.0
ADMIN_MAX_CONNECTIONS = 64  # open admin connections; resolver/operations/descriptors.py counts them in
ADMIN_READ_SECONDS = 5.0  # from opening to a whole request head
ADMIN_IDLE_SECONDS = 5.0  # from the end of a request's handler to the next request head (its answer written)
ADMIN_BACKLOG = 128  # aiohttp's own
HTTP_ERROR_TEXT = 200  # characters of a malformed request's error kept in its log line


def printable(text: str) -> str:
    """``text`` with control, format and other unprintable characters (and backslashes) as Python escapes.

    For what a client sent (a path is percent-decoded: it may hold a CR or an
    ANSI escape) on its way to a log line, where it must not start a line of
    its own or drive the terminal that shows the log.
    """
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(c if c.isprintable() and c != "\\" else repr(c)[1:-1] for c in text)


class AdminConnection(asyncio.Protocol):
    """One connection to the admin port: aiohttp's request handler inside, a slot and a deadline outside."""

    def __init__(self, table: AdminConnections, handler: Callable[[], asyncio.Protocol]) -> None:
        self.table = table
        self._new_handler = handler
        self.handler: asyncio.Protocol | None = None  # made once the connection has a slot
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a request of this connection is in its handler
        self.since = 0.0  # loop time it opened, or its last request's handler ended
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if not self.table.admit(self):
            transport.abort()  # type: ignore[attr-defined]
            return
        self.handler = self._new_handler()
        self.handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.handler is not None:
            self.handler.data_received(data)

    def eof_received(self) -> bool | None:
        return self.handler.eof_received() if self.handler is not None else None

    def pause_writing(self) -> None:
        if self.handler is not None:
            self.handler.pause_writing()

    def resume_writing(self) -> None:
        if self.handler is not None:
            self.handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.table.release(self)
        if self.handler is not None:
            self.handler.connection_lost(exc)

    def wait(self, seconds: float) -> None:
        """Close the connection ``seconds`` from now unless a request reaches its handler first."""
        self.cancel_deadline()
        self._timer = asyncio.get_running_loop().call_later(seconds, self.expire)

    def cancel_deadline(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def expire(self) -> None:
        self._timer = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size():
            transport.abort()  # an answer it does not read must not keep the descriptor
        else:
            transport.close()


class AdminConnections:
    """The admin port's open connections: a cap, and a deadline on each one outside a handler.

    At ``limit`` a new connection closes the idlest one (the longest without a
    request in its handler), as ``tcp_max_connections`` does for DNS: slow
    clients cannot keep a probe out. When every open connection is inside a
    handler, the new one is closed at once.
    """

    def __init__(self, limit: int = ADMIN_MAX_CONNECTIONS, read_seconds: float = ADMIN_READ_SECONDS,
                 idle_seconds: float = ADMIN_IDLE_SECONDS) -> None:
        self.limit = limit
        self.read_seconds = read_seconds
        self.idle_seconds = idle_seconds
        self.open: dict[AdminConnection, None] = {}  # accept order
        self.by_transport: dict[asyncio.BaseTransport, AdminConnection] = {}
        self._full_log = LogLimit()

    def protocol(self, handler: Callable[[], asyncio.Protocol]) -> Callable[[], AdminConnection]:
        """The protocol factory for the admin port's server; ``handler`` makes aiohttp's request handler."""
        return lambda: AdminConnection(self, handler)

    def admit(self, conn: AdminConnection) -> bool:
        """Take a slot for ``conn`` (closing the idlest at the cap) and start its read deadline."""
        if len(self.open) >= self.limit:
            victim = min((c for c in self.open if not c.busy), key=lambda c: c.since, default=None)
            if victim is not None:
                self.release(victim)
                assert victim.transport is not None
                victim.transport.abort()
            if count := self._full_log.due(time.monotonic()):
                log.warning("admin HTTP: %d connections open, the cap: %s (%d since the last line)",
                            self.limit, "the idlest closed for a new one" if victim is not None
                            else "a new one closed, every open one in a handler", count)
            if victim is None:
                return False
        assert conn.transport is not None
        self.open[conn] = None
        self.by_transport[conn.transport] = conn
        conn.since = asyncio.get_running_loop().time()
        conn.wait(self.read_seconds)
        return True

    def release(self, conn: AdminConnection) -> None:
        """Give the slot back (idempotent: an evicted connection is released again when it is lost)."""
        conn.cancel_deadline()
        if self.open.pop(conn, False) is not False and conn.transport is not None:
            self.by_transport.pop(conn.transport, None)

    @web.middleware
    async def track(self, request: web.Request,
                    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        """Middleware: no deadline while a request is in its handler; the idle one from its end."""
        conn = self.by_transport.get(request.transport) if request.transport is not None else None
        if conn is None:
            return await handler(request)
        conn.busy = True
        conn.cancel_deadline()
        try:
            return await handler(request)
        finally:
            conn.busy = False
            if conn in self.open:
                conn.since = asyncio.get_running_loop().time()
                conn.wait(self.idle_seconds)

    def close_all(self) -> None:
        for conn in list(self.open):
            self.release(conn)
            if conn.transport is not None:
                conn.transport.abort()


class HttpErrorLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server log for the admin port: bounded, one line, escaped.

    aiohttp logs every malformed request with an ERROR traceback (11 lines a
    request, for as many requests as a client sends). Here a malformed request
    (``HttpProcessingError``: the client's fault) is one WARNING line of its
    error, escaped, at most one a minute with the count since the last; any
    other error (a bug in a handler) keeps its traceback, at most one a minute.
    """

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logger, {})
        self._malformed = LogLimit()
        self._errors = LogLimit()

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        exc_info = kwargs.get("exc_info")
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1] if exc_info else None
        try:
            text = str(msg) % args if args else str(msg)
        except (TypeError, ValueError):
            text = str(msg)
        if isinstance(exc, HttpProcessingError) or level < logging.ERROR:
            if count := self._malformed.due(time.monotonic()):
                error = " ".join(f"{type(exc).__name__}: {exc}".split()) if exc is not None else ""
                self.logger.log(min(level, logging.WARNING),
                                "admin HTTP: %s: %s (%d malformed since the last line)",
                                printable(text), printable(error[:HTTP_ERROR_TEXT]), count)
        elif count := self._errors.due(time.monotonic()):
            self.logger.log(level, "admin HTTP: %s (%d since the last line)", printable(text), count,
                            exc_info=exc_info)


def admin_token(admin: Admin, config_path: str, environ: Mapping[str, str] = os.environ) -> str | None:
    """The bearer token POST /reload asks for: the environment first, then ``admin.token_file``.

    Read once at start (before privileges are dropped, so the file may be
    readable by root alone). An unreadable or empty token file is a config
    error; no token at all leaves POST /reload refused.
    """
    token = environ.get(TOKEN_ENV, "").strip()
    if token:
        return token
    if admin.token_file is None:
        return None
    def error(problem: str) -> ConfigError:
        return ConfigError(config_path, admin.line, "admin.token_file", f"{admin.token_file}: {problem}")

    try:
        token = admin.token_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise error(f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise error("not UTF-8 text") from None
    if not token:
        raise error("empty")
    return token


class Caller:
    """Decides whether a request may change the resolver: same-origin and holding the token."""

    def __init__(self, address: str, port: int, token: str | None) -> None:
        self.address = ipaddress.ip_address(address)
        self.port = port
        self.token = token

    def refusal(self, request: web.Request) -> tuple[int, str] | None:
        """None when the request may proceed, else the HTTP status and reason that refuse it."""
        if not self._is_admin_host(request.headers.get("Host", "")):
            return 403, "Host is not the admin address"
        origin = request.headers.get("Origin")
        if origin is not None and not self._is_admin_origin(origin):
            return 403, "Origin is not the admin address"
        if self.token is None:
            return 403, (f"{request.method} {request.path} is disabled: no admin token ({TOKEN_ENV} or "
                         "admin.token_file); SIGHUP still reloads")
        scheme, _, offered = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(offered.strip().encode(), self.token.encode()):
            return 401, "a valid bearer token is needed"
        return None

    def _is_admin_origin(self, origin: str) -> bool:
        try:
            parts = urlsplit(origin)
        except ValueError:
            return False
        return parts.scheme == "http" and not parts.path and self._is_admin_host(parts.netloc)

    def _is_admin_host(self, host: str) -> bool:
        """``host[:port]`` names the admin address: its IP literal (or localhost on loopback) and port.

        A name other than localhost is refused even when it resolves here:
        that is what a DNS-rebinding page would send.
        """
        try:
            parts = urlsplit("//" + host)
            name, port = parts.hostname, parts.port or 80
        except ValueError:
            return False
        if name is None or port != self.port:
            return False
        if name == "localhost":
            return self.address.is_loopback or self.address.is_unspecified
        try:
            literal = ipaddress.ip_address(name)
        except ValueError:
            return False
        # Bound to 0.0.0.0 / ::: any address of this host reaches it; only literals are accepted.
        return literal == self.address or self.address.is_unspecified


class AdminServer:
    """aiohttp application serving /metrics, /healthz, /readyz and POST /reload."""

    def __init__(self, server: Server, reloader: Reloader, alert_counts: AlertCounts,
                 token: str | None = None, pod_watch: PodWatch | None = None,
                 reload_siblings: Callable[[], None] | None = None) -> None:
        self.server = server
        self.reloader = reloader
        # With workers: N, this (the first) worker's POST /reload reaches the others through this.
        self.reload_siblings = reload_siblings
        self.token = token
        self.caller: Caller | None = None
        self._refused = 0
        self._refusal_logged = -REFUSAL_LOG_SECONDS
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = Collector(server, alert_counts, reloader, pod_watch)
        self.registry.register(self.collector)
        self.connections = AdminConnections()
        self.app = web.Application(middlewares=[self.connections.track])
        self.app.add_routes([
            web.get("/metrics", self.metrics),
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
            web.post("/reload", self.reload),
            web.get("/quarantines/clients", self.client_quarantines),
            web.delete("/quarantines/clients/{namespace}/{client:.+}", self.lift_client_quarantine),
        ])
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None

    async def start(self, address: str, port: int, sock: socket.socket | None = None) -> None:
        """Serve on ``sock`` (bound before privileges were dropped) or bind ``address``:``port`` now.

        aiohttp's request handler runs inside :class:`AdminConnection` (no
        aiohttp site: its server would take connections without a cap).
        aiohttp's own keep-alive timeout is set to the idle one too.
        """
        self._runner = web.AppRunner(self.app, access_log=None, logger=HttpErrorLog(log),
                                     keepalive_timeout=ADMIN_IDLE_SECONDS)
        await self._runner.setup()
        assert self._runner.server is not None
        protocol = self.connections.protocol(self._runner.server)
        loop = asyncio.get_running_loop()
        if sock is not None:
            self._server = await loop.create_server(protocol, sock=sock, backlog=ADMIN_BACKLOG)
        else:
            self._server = await loop.create_server(protocol, address, port, backlog=ADMIN_BACKLOG)
        self.collector.gc_pauses.install()
        self.caller = Caller(address, self.port, self.token)
        log.info("admin HTTP on %s port %d (POST /reload %s)", address, self.port,
                 "needs the bearer token" if self.token else f"disabled: no {TOKEN_ENV} or admin.token_file")

    @property
    def port(self) -> int:
        """The bound port (useful when port 0 was asked for)."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        self.collector.gc_pauses.remove()
        if self._server is not None:
            self._server.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.connections.close_all()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def _log_refusal(self, remote: str | None, why: str, what: str = "POST /reload") -> None:
        # A caller hammering the endpoint must not flood the log: one line per minute.
        now = time.monotonic()
        self._refused += 1
        if now - self._refusal_logged >= REFUSAL_LOG_SECONDS:
            # The path is the client's, percent-decoded: escaped, or a CR or an ANSI escape would reach the log.
            log.warning("%s refused from %s: %s (%d refused since the last line)",
                        printable(what), remote, printable(why), self._refused)
            self._refusal_logged, self._refused = now, 0

    async def metrics(self, _request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, _request: web.Request) -> web.Response:
        server = self.server
        if ready(server):
            return web.Response(text="ready\n")
        if not server.ready:
            why = "policy not loaded"
        elif not pods_synced(server):
            why = "pod list from the Kubernetes API not loaded yet"
        else:
            why = "no healthy upstream"
        return web.Response(status=503, text=f"not ready: {why}\n")

    def _refusal(self, request: web.Request, **body: object) -> web.Response | None:
        """The refusal for a caller without the token or from another origin; None lets it through."""
        assert self.caller is not None
        refused = self.caller.refusal(request)
        if refused is None:
            return None
        status, why = refused
        self._log_refusal(request.remote, why, f"{request.method} {request.path}")
        headers = {"WWW-Authenticate": 'Bearer realm="dnsgate"'} if status == 401 else None
        return web.json_response({"ok": False, **body, "error": why}, status=status, headers=headers)

    async def client_quarantines(self, request: web.Request) -> web.Response:
        """GET /quarantines/clients: every client quarantined now (this replica's view, Redis-shared)."""
        refused = self._refusal(request)
        if refused is not None:
            return refused
        live = self.server.engine.state.clients.active(time.time())
        return web.json_response({"ok": True, "quarantines": [q.to_dict() for q in live]})

    async def lift_client_quarantine(self, request: web.Request) -> web.Response:
        """DELETE /quarantines/clients/{namespace}/{client}: end a client's quarantine now.

        ``client`` is an address or a pod's key, ``pod:<namespace>/<name>`` (the slash is part of it).
        """
        refused = self._refusal(request)
        if refused is not None:
            return refused
        namespace, client = request.match_info["namespace"], request.match_info["client"]
        lifted = self.server.engine.state.clients.lift(namespace, client)
        if lifted is None or lifted.until <= time.time():
            return web.json_response({"ok": False, "error": f"client {client} is not quarantined in {namespace}"},
                                     status=404)
        log.warning("client quarantine lifted: namespace %s client %s (was until %.0f, triggered by %s)",
                    printable(namespace), printable(client), lifted.until, lifted.name)
        return web.json_response({"ok": True, "lifted": lifted.to_dict()})

    async def reload(self, request: web.Request) -> web.Response:
        assert self.caller is not None
        refused = self._refusal(request, generation=None)
        if refused is not None:
            return refused
        result = self.reloader.reload("POST /reload")
        if self.reload_siblings is not None:
            self.reload_siblings()
        body = {"ok": result.ok, "generation": result.generation, "error": result.error}
        return web.json_response(body, status=200 if result.ok else 422)
