"""The falco alert sink: Falco-shaped events POSTed over real HTTP to a falcosidekick-style endpoint.

falcosidekick is not packaged for Debian, so the receiver is an aiohttp server
in the test answering ``POST /`` as falcosidekick does; it checks each event
against the fields of Falco's JSON output that falcosidekick reads.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest
from aiohttp import web

from resolver.config import ConfigError
from resolver.config import Sink as SinkSpec
from resolver.operations.sinks import FalcoSink, build
from resolver.pipeline.alerts import Alert
from tests.support.http_receiver import PostReceiver
from tests.support.sinks import deliver_all

pytestmark = pytest.mark.integration

FALCO_PRIORITIES = {"Emergency", "Alert", "Critical", "Error", "Warning", "Notice", "Informational", "Debug"}


class Sidekick(PostReceiver):
    """``POST /`` with a Falco event, as falcosidekick listens on port 2801."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        if request.content_type != "application/json":
            return web.Response(status=400, text="Please send with post http method")
        self.headers.append(dict(request.headers))
        self.events.append(json.loads(await request.read()))
        return web.Response(status=200)


def alert(**over: Any) -> Alert:
    fields: dict[str, Any] = {
        "ts": 1795317951.5, "kind": "policy", "severity": "warning", "namespace": "agents",
        "client": "10.244.1.7", "qname": "pastebin.example", "qtype": "A", "domain": "pastebin.example",
        "reasons": ["not_allowed"], "action": "blocked", "evidence": {"mode": "enforce"},
    }
    fields.update(over)
    return Alert(**fields)


def spec(**options: Any) -> SinkSpec:
    return SinkSpec("falco", options, "dnsgate.yaml", 9)


async def send(sink: FalcoSink, alerts: list[Alert]) -> None:
    await deliver_all(sink, alerts)
    assert (sink.delivered, sink.dropped) == (len(alerts), 0)


def check_shape(event: dict[str, Any]) -> None:
    assert set(event) == {"rule", "priority", "output", "output_fields", "time", "source", "tags", "hostname"}
    assert event["priority"] in FALCO_PRIORITIES
    assert datetime.fromisoformat(event["time"].replace("Z", "+00:00")).tzinfo is not None
    assert all(isinstance(v, str | int | float | bool) for v in event["output_fields"].values())
    assert all(isinstance(t, str) for t in event["tags"])


async def test_a_denied_query_becomes_a_falco_event() -> None:
    async with Sidekick() as sidekick:
        sink = build(spec(url=f"http://127.0.0.1:{sidekick.port}/", hostname="node-3", tags=["agents-pool"]))
        assert isinstance(sink, FalcoSink)
        await send(sink, [alert()])
    [event] = sidekick.events
    check_shape(event)
    assert sidekick.headers[0]["Content-Type"] == "application/json"
    assert event["rule"] == "DNS query to a non-allowlisted domain"
    assert event["priority"] == "Warning"
    assert event["source"] == "dnsgate"
    assert event["hostname"] == "node-3"
    assert event["time"] == "2026-11-22T03:25:51.500000Z"
    assert event["tags"][-1] == "agents-pool"
    assert "T1071.004" in event["tags"]
    assert event["output"] == (
        "03:25:51.500000: Warning DNS query to a non-allowlisted domain (namespace=agents "
        "client=10.244.1.7 qname=pastebin.example qtype=A domain=pastebin.example "
        "reasons=not_allowed action=blocked count=1)"
    )
    assert event["output_fields"] == {
        "dnsgate.kind": "policy", "dnsgate.severity": "warning", "dnsgate.namespace": "agents",
        "dnsgate.client": "10.244.1.7", "dnsgate.qname": "pastebin.example", "dnsgate.qtype": "A",
        "dnsgate.domain": "pastebin.example", "dnsgate.reasons": "not_allowed",
        "dnsgate.action": "blocked", "dnsgate.count": 1, "dnsgate.evidence.mode": "enforce",
    }


async def test_priority_follows_severity_and_tunnels_carry_their_evidence() -> None:
    severities = {"info": "Informational", "warning": "Warning", "high": "Error", "critical": "Critical"}
    alerts = [
        alert(kind="tunnel", severity=s, qname=f"{s}.mzxw6ytb\\000.t.exfil.example", domain="exfil.example",
              reasons=["entropy", "info_budget"], action="quarantined",
              evidence={"entropy": 4.2, "windows": {"60": 12}})
        for s in severities
    ]
    async with Sidekick() as sidekick:
        sink = build(spec(url=f"http://127.0.0.1:{sidekick.port}/"))
        assert isinstance(sink, FalcoSink)
        await send(sink, alerts)
    # Queued together, the most severe goes first (the queue is ordered by severity).
    by_severity = {e["output_fields"]["dnsgate.severity"]: e["priority"] for e in sidekick.events}
    assert by_severity == severities
    assert [e["priority"] for e in sidekick.events] == list(severities.values())[::-1]
    for event in sidekick.events:
        check_shape(event)
        assert event["rule"] == "DNS tunnel suspected"
        assert "mitre_exfiltration" in event["tags"]
        fields = event["output_fields"]
        assert fields["dnsgate.qname"].endswith(".mzxw6ytb\\000.t.exfil.example")  # escaped, as in the alert
        assert fields["dnsgate.evidence.entropy"] == 4.2
        assert fields["dnsgate.evidence.windows"] == '{"60":12}'  # nested evidence flattened to JSON text


def test_bad_options_name_the_key() -> None:
    with pytest.raises(ConfigError) as err:
        build(spec())
    assert str(err.value) == "dnsgate.yaml:9: alerts[falco].url: is required"
    with pytest.raises(ConfigError) as err:
        build(spec(url="http://127.0.0.1:2801/", tags="dns"))
    assert "alerts[falco].tags: must be a list" in str(err.value)
