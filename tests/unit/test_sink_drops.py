"""A remote sink's dropped alerts in the log: bounded lines, exact counts (``DropLog``)."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest

from resolver.operations.sinks import Delivery, DropLog, QueuedSink
from resolver.pipeline.alerts import Alert

LINE = re.compile(r"^(\d+) alerts not delivered to sink (\S+) since the last such line \(last reason: (.*)\); "
                  r"one of them: (\{.*\})$")


def tunnel_alert(domain: str) -> Alert:
    return Alert(ts=1000.0, kind="tunnel", severity="high", namespace="agents", client="10.1.2.3",
                 qname=f"mzxw6ytboi2dcmrt.{domain}", qtype="TXT", domain=domain,
                 reasons=["entropy"], action="quarantined", evidence={"entropy": 4.1})


def drop_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str, str, str]]:
    out = []
    for record in caplog.records:
        match = LINE.match(record.getMessage())
        if match:
            out.append((int(match[1]), match[2], match[3], match[4]))
    return out


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_flood_of_drops_is_one_line_a_minute_with_the_exact_count(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    drops = DropLog(interval=60.0, clock=clock)
    total = 0
    with caplog.at_level(logging.WARNING, "dnsgate.sinks"):
        for i in range(50_000):  # 50,000 new domains over 250 s: 200 a second
            clock.now = i * 0.005
            batch = [tunnel_alert(f"d{i}.example")] * (1 + i % 3)
            drops.add("webhook", batch, "queue full" if i % 2 else "ClientConnectorError")
            total += len(batch)
        drops.flush()
    lines = drop_lines(caplog)
    assert len(caplog.records) == len(lines)  # nothing else was written
    assert len(lines) <= 250 / 60 + 2  # the first drop at once, then one a minute, and the flush
    assert sum(count for count, *_ in lines) == total
    assert lines[0][0] == 1
    assert all(name == "webhook" for _, name, _, _ in lines)
    assert '"domain":"d0.example"' in lines[0][3]  # one alert of the lot, whole
    drops.flush()
    assert len(drop_lines(caplog)) == len(lines)  # nothing pending: no empty line


async def test_drops_that_stop_are_still_written_once_the_interval_has_passed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = QueuedSink("alertmanager", Delivery(queue_size=1))
    assert sink.spill is not None
    sink.spill.interval = 0.2
    with caplog.at_level(logging.WARNING, "dnsgate.sinks"):
        for i in range(1000):  # never started: the first fills the queue, the rest are dropped
            sink.submit(tunnel_alert(f"d{i}.example"))
        assert sink.dropped == 999  # the metric counts every drop
        assert [count for count, *_ in drop_lines(caplog)] == [1]
        async with asyncio.timeout(5):  # with no further drop, the timer writes the rest after 0.2 s
            while len(drop_lines(caplog)) < 2:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        assert [count for count, *_ in drop_lines(caplog)] == [1, 998]
        await sink.close()  # the queued one is dropped on close and written then
    lines = drop_lines(caplog)
    assert [(count, reason) for count, _, reason, _ in lines] == [(1, "queue full"), (998, "queue full"),
                                                                  (1, "sink closed")]
    assert sum(count for count, *_ in lines) == sink.dropped == 1000
