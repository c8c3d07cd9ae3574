"""A sink that keeps every alert in a list: the test double of the jsonl sink for in-process tests."""

from __future__ import annotations

from resolver.pipeline.alerts import Alert


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
