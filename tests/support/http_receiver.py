"""An aiohttp server on loopback that receives POSTs, for the HTTP alert sinks' tests."""

from __future__ import annotations

from typing import Self

from aiohttp import web

from tests.support.harness import free_port


class PostReceiver:
    """Answers ``POST path`` on a free loopback port with :meth:`handle`; an async context manager."""

    path = "/"

    def __init__(self) -> None:
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_post(self.path, self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"
