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
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from resolver.config import Admin, ConfigError
from resolver.operations.metrics import AlertCounts, Collector, pods_synced, ready

if TYPE_CHECKING:
    from resolver.operations.kubernetes import PodWatch
    from resolver.operations.listeners import Server
    from resolver.operations.reload import Reloader

log = logging.getLogger("dnsgate.admin")

TOKEN_ENV = "DNSGATE_ADMIN_TOKEN"  # noqa: S105
REFUSAL_LOG_SECONDS = 60.0


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
        self.app = web.Application()
        self.app.add_routes([
            web.get("/metrics", self.metrics),
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
            web.post("/reload", self.reload),
            web.get("/quarantines/clients", self.client_quarantines),
            web.delete("/quarantines/clients/{namespace}/{client:.+}", self.lift_client_quarantine),
        ])
        self._runner: web.AppRunner | None = None
        self._site: web.BaseSite | None = None

    async def start(self, address: str, port: int, sock: socket.socket | None = None) -> None:
        """Serve on ``sock`` (bound before privileges were dropped) or bind ``address``:``port`` now."""
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site: web.BaseSite = web.SockSite(self._runner, sock) if sock is not None else web.TCPSite(
            self._runner, address, port)
        self._site = site
        await site.start()
        self.collector.gc_pauses.install()
        self.caller = Caller(address, self.port, self.token)
        log.info("admin HTTP on %s port %d (POST /reload %s)", address, self.port,
                 "needs the bearer token" if self.token else f"disabled: no {TOKEN_ENV} or admin.token_file")

    @property
    def port(self) -> int:
        """The bound port (useful when port 0 was asked for)."""
        assert self._runner is not None
        return int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        self.collector.gc_pauses.remove()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _log_refusal(self, remote: str | None, why: str, what: str = "POST /reload") -> None:
        # A caller hammering the endpoint must not flood the log: one line per minute.
        now = time.monotonic()
        self._refused += 1
        if now - self._refusal_logged >= REFUSAL_LOG_SECONDS:
            log.warning("%s refused from %s: %s (%d refused since the last line)",
                        what, remote, why, self._refused)
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
                    namespace, client, lifted.until, lifted.name)
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
