"""Policy alerts: one per (namespace, client, name) per window, then one follow-up with the count."""

from __future__ import annotations

import io
import json

from resolver.alerts import AlertHub, JsonlSink
from resolver.wire import name_from_text


def test_retry_storm_is_one_alert_and_one_count() -> None:
    out = io.StringIO()
    hub = AlertHub([JsonlSink(stream=out)], window=60)
    name = name_from_text("exfil.evil.test")
    for i in range(50):
        hub.policy(1000.0 + i, "agents", "10.0.0.5", name, 1, "blocked", ["not_allowed"], {})
    hub.policy(1001.0, "agents", "10.0.0.6", name, 1, "blocked", ["not_allowed"], {})  # another client
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [(a["client"], a["count"]) for a in lines] == [("10.0.0.5", 1), ("10.0.0.6", 1)]
    hub.sweep(1061.0)
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [(a["client"], a["count"]) for a in lines[2:]] == [("10.0.0.5", 49)]
    assert lines[0]["qname"] == "exfil.evil.test" and lines[0]["domain"] == "evil.test"


def test_names_are_escaped() -> None:
    out = io.StringIO()
    hub = AlertHub([JsonlSink(stream=out)], window=60)
    hub.policy(0.0, "ns", "c", b"\x04a\xbc\xfd \x04evil\x04test\x00", 10, "blocked", ["not_allowed"], {})
    alert = json.loads(out.getvalue())
    assert alert["qname"] == "a\\188\\253\\032.evil.test"
    assert alert["qtype"] == "NULL"
