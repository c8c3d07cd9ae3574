"""Sinks in tests: one that keeps every alert in a list (the test double of the jsonl sink for
in-process tests), and a helper that pushes alerts through a real queued sink."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from resolver.pipeline.alerts import Alert


async def deliver_all(sink: Any, alerts: list[Alert], timeout: float = 10.0) -> None:
    """Start ``sink``, submit ``alerts``, wait until each is delivered or dropped (or ``timeout``), close it."""
    await sink.start()
    try:
        for alert in alerts:
            sink.submit(alert)
        deadline = time.monotonic() + timeout
        while sink.delivered + sink.dropped < len(alerts) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    finally:
        await sink.close()


class Collected:
    """Keeps every alert it is handed, in order."""

    name = "collected"

    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def submit(self, alert: Alert) -> None:
        self.alerts.append(alert)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


class RemoteCollected(Collected):
    """:class:`Collected` as the hub sees a remote sink (``remote = True``: folded alerts reach it
    only as aggregates)."""

    name = "remote"
    remote = True
