"""The admin HTTP server: metrics, probes and reload, on its own (loopback) address.

    GET  /metrics   Prometheus exposition (text format)
    GET  /healthz   200 while the event loop runs (liveness)
    GET  /readyz    200 once the policy is loaded and an upstream is healthy, else 503
    POST /reload    reload the config now; 200 with the new generation, 422 with the error

Enabled by ``admin: {address: 127.0.0.1, port: 9153}`` in the config. It shares
the resolver's event loop: a scrape reads counters, it never locks the query path.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from resolver.metrics import AlertCounts, Collector, ready

if TYPE_CHECKING:
    from resolver.reload import Reloader
    from resolver.server import Server

log = logging.getLogger("dnsgate.admin")


class AdminServer:
    """aiohttp application serving /metrics, /healthz, /readyz and POST /reload."""

    def __init__(self, server: Server, reloader: Reloader, alert_counts: AlertCounts) -> None:
        self.server = server
        self.reloader = reloader
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = Collector(server, alert_counts, reloader)
        self.registry.register(self.collector)
        self.app = web.Application()
        self.app.add_routes([
            web.get("/metrics", self.metrics),
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
            web.post("/reload", self.reload),
        ])
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    async def start(self, address: str, port: int) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, address, port)
        await self._site.start()
        log.info("admin HTTP on %s port %d", address, self.port)

    @property
    def port(self) -> int:
        """The bound port (useful when port 0 was asked for)."""
        assert self._runner is not None
        return int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.Response:
        server = self.server
        if ready(server):
            return web.Response(text="ready\n")
        why = "policy not loaded" if not server.ready else "no healthy upstream"
        return web.Response(status=503, text=f"not ready: {why}\n")

    async def reload(self, request: web.Request) -> web.Response:
        result = self.reloader.reload("POST /reload")
        body = {"ok": result.ok, "generation": result.generation, "error": result.error}
        return web.json_response(body, status=200 if result.ok else 422)
