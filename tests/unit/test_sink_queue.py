"""A remote sink's queue under a flood: the most severe first, clients taking turns, and a full
queue dropping (and counting, by severity) a less severe or a heavier client's alert."""

from __future__ import annotations

import asyncio

from resolver.operations.sinks import Delivery, QueuedSink
from resolver.pipeline.alerts import Alert


def alert(client: str, severity: str, n: int) -> Alert:
    return Alert(ts=1000.0 + n, kind="tunnel" if severity in ("high", "critical") else "policy", severity=severity,
                 namespace="agents", client=client, qname=f"q{n}.{client}.example", qtype="TXT",
                 domain=f"{client}.example", reasons=["entropy"], action="alerted")


class Recording(QueuedSink):
    """Delivers into a list; ``gate`` holds delivery back until the test opens it."""

    def __init__(self, queue_size: int) -> None:
        super().__init__("webhook", Delivery(queue_size=queue_size, retries=0))
        self.spill = None
        self.got: list[Alert] = []
        self.gate = asyncio.Event()

    async def deliver(self, batch: list[Alert]) -> None:
        await self.gate.wait()
        self.got.extend(batch)


async def drain(sink: Recording, submitted: int) -> None:
    sink.gate.set()
    async with asyncio.timeout(5):
        while sink.delivered + sink.dropped < submitted:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    await sink.close()


async def test_a_high_alert_at_a_full_queue_of_warnings_takes_a_warnings_place_and_goes_first() -> None:
    sink = Recording(queue_size=10)
    await sink.start()
    flood = [alert("10.0.0.66", "warning", i) for i in range(30)]
    for a in flood:
        sink.submit(a)
    victim = alert("10.0.0.7", "high", 99)
    sink.submit(victim)
    assert sink.queued <= 10
    await drain(sink, 31)
    assert victim in sink.got
    assert sink.got.index(victim) <= 1  # at most the one already being delivered goes before it
    assert sink.dropped_by_severity == {"info": 0, "warning": 21, "high": 0, "critical": 0}
    assert sink.dropped == 21
    assert sink.stats()["dropped_by_severity"]["warning"] == 21


async def test_at_the_same_severity_a_flooding_client_makes_room_for_another() -> None:
    sink = Recording(queue_size=10)
    await sink.start()
    for i in range(100):
        sink.submit(alert("10.0.0.66", "high", i))
    victim = alert("10.0.0.7", "high", 999)
    sink.submit(victim)
    await drain(sink, 101)
    assert victim in sink.got
    assert sink.got.index(victim) <= 2  # clients take turns: one of the flood's, then the victim's
    # The flood keeps its own order; its newest were dropped (one to make room), counted as high.
    flood = [a for a in sink.got if a.client == "10.0.0.66"]
    assert flood == sorted(flood, key=lambda a: a.ts)
    assert (sink.delivered, sink.dropped, sink.dropped_by_severity["high"]) == (10, 91, 91)


async def test_a_client_alone_keeps_its_oldest_alerts_and_more_severe_ones_are_never_dropped_for_less() -> None:
    sink = Recording(queue_size=5)
    for i in range(5):
        sink.submit(alert("10.0.0.66", "critical", i))
    sink.submit(alert("10.0.0.66", "critical", 5))  # its own flood: the new one is dropped
    sink.submit(alert("10.0.0.7", "info", 6))  # less severe than everything queued: dropped
    sink.submit(alert("10.0.0.8", "critical", 7))  # another client, the flooder holds 5: room made
    assert sink.dropped_by_severity == {"info": 1, "warning": 0, "high": 0, "critical": 2}
    await sink.start()
    await drain(sink, 8)
    assert [a.ts - 1000 for a in sink.got] == [0, 7, 1, 2, 3]


async def test_a_clients_many_addresses_are_one_client_in_the_queue() -> None:
    """1,000 addresses of one IPv6 /64, one alert each, filled the queue with lanes of one; an
    alert of another client at the same severity then found none to displace and was dropped."""
    sink = Recording(queue_size=1000)
    await sink.start()
    for i in range(1000):
        sink.submit(alert(f"fd00:0:0:7::{i + 1:x}", "high", i))
    victim = alert("10.0.0.7", "high", 5000)
    sink.submit(victim)
    await drain(sink, 1001)
    assert victim in sink.got
    assert sink.dropped_by_severity["high"] == 1  # one of the flood's made room
