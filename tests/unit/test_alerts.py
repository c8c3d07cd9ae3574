"""Policy alerts: one per (namespace, client, name) per window, then one follow-up with the count."""

from __future__ import annotations

import enum
import io
import ipaddress
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from resolver.pipeline.alerts import Alert, AlertHub, JsonlSink
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


# Any text: control characters, quotes, backslashes, DEL, non-ASCII and lone surrogates
# (a qname's hostile octets arrive as \DDD escapes, but no field is trusted to).
_TEXT = st.text(st.characters(exclude_categories=()), max_size=40)


class _Code(enum.IntEnum):
    A = 1


class _Label(str):
    pass


_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(2**70), 2**70), st.floats(), _TEXT,
    st.just(_Code.A), _TEXT.map(_Label), st.just(ipaddress.ip_address("10.0.0.1")),
)
_EVIDENCE = st.dictionaries(
    st.one_of(_TEXT, st.sampled_from(["qname", "window", "entropy", "scope"])),
    st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3)),
    max_size=8,
) | st.dictionaries(st.one_of(_TEXT, st.integers(), st.floats(), st.booleans(), st.none()), _SCALARS, max_size=4)


@settings(max_examples=500, deadline=None)
@given(
    ts=st.one_of(st.floats(), st.floats(1e9, 2e9)),
    texts=st.lists(_TEXT, min_size=8, max_size=8),
    reasons=st.lists(_TEXT, max_size=4),
    evidence=_EVIDENCE,
    count=st.integers(0, 2**64),
    pod=st.one_of(st.just(""), _TEXT),
)
def test_the_alert_line_is_what_json_dumps_writes(
    ts: float, texts: list[str], reasons: list[str], evidence: dict[object, object], count: int, pod: str,
) -> None:
    """``to_json`` writes its line itself (evidence keys kept escaped); the bytes are json.dumps's."""
    kind, severity, namespace, client, qname, qtype, domain, action = texts
    alert = Alert(
        ts, kind, severity, namespace, client, qname, qtype, domain, reasons, action, evidence, count,  # type: ignore[arg-type]
        pod=pod, service_account=qname,
    )
    for _ in range(2):  # the second time with the keys remembered
        assert alert.to_json() == json.dumps(alert.to_dict(), separators=(",", ":"), default=str)
