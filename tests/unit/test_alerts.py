"""Policy alerts: one per (namespace, client, name) per window, then one follow-up with the count."""

from __future__ import annotations

import io
import json

from resolver.pipeline.alerts import AlertHub, JsonlSink
from resolver.wire.message import name_from_text


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
    assert lines[0]["qname"] == "exfil.evil.test"
    assert lines[0]["domain"] == "evil.test"


def test_names_are_escaped() -> None:
    out = io.StringIO()
    hub = AlertHub([JsonlSink(stream=out)], window=60)
    hub.policy(0.0, "ns", "c", b"\x04a\xbc\xfd \x04evil\x04test\x00", 10, "blocked", ["not_allowed"], {})
    alert = json.loads(out.getvalue())
    assert alert["qname"] == "a\\188\\253\\032.evil.test"
    assert alert["qtype"] == "NULL"


def test_alert_lines_per_client_are_bounded_per_window() -> None:
    """A client asking 10,000 unique denied names costs names_per_client lines plus one aggregate."""
    out = io.StringIO()
    hub = AlertHub([JsonlSink(stream=out)], window=60, names_per_client=20)
    for i in range(10_000):
        hub.policy(1000.0 + i * 0.001, "agents", "10.0.0.5", name_from_text(f"n{i}.evil.test"), 1, "blocked", ["not_allowed"], {})
    hub.policy(1001.0, "agents", "10.0.0.6", name_from_text("x.evil.test"), 1, "blocked", ["not_allowed"], {})
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert len([a for a in lines if a["client"] == "10.0.0.5"]) == 20
    assert [a["client"] for a in lines].count("10.0.0.6") == 1
    hub.sweep(1100.0)
    folded = [json.loads(x) for x in out.getvalue().splitlines()][21:]
    assert len(folded) == 1
    assert folded[0]["count"] == 9_980
    assert folded[0]["evidence"]["names_folded"] == 9_980
    assert folded[0]["evidence"]["sample"][:2] == ["n20.evil.test", "n21.evil.test"]
    assert hub.folded == 9_980
    # a new window: the client gets its budget back
    hub.policy(1200.0, "agents", "10.0.0.5", name_from_text("later.evil.test"), 1, "blocked", ["not_allowed"], {})
    assert json.loads(out.getvalue().splitlines()[-1])["qname"] == "later.evil.test"
