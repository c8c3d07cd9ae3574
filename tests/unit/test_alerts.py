"""Policy alerts: one per (namespace, client, name) per window, then one follow-up with the count."""

from __future__ import annotations

import asyncio
import enum
import io
import ipaddress
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from resolver.pipeline.alerts import Alert, AlertHub, JsonlSink
from resolver.wire.message import name_from_text
from tests.support.sinks import RemoteCollected


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


def test_a_host_cycling_addresses_of_its_64_gets_one_clients_alert_lines() -> None:
    """With ipv6_client_prefix 64: 10,000 denied names, each from another address of one /64: per
    address every one was a fresh client with a fresh budget, 10,000 lines; counted by the /64 it is
    20 and one aggregate. The same name from any address of the /64 is one alert, and rate_limit
    alerts too. (With the default, 128, two addresses are two clients: the next test.)"""
    out = io.StringIO()
    hub = AlertHub([JsonlSink(stream=out)], window=60, names_per_client=20, ipv6_prefix=64)
    for i in range(10_000):
        hub.policy(1000.0 + i * 0.001, "vms", f"2001:db8:1:2::{i + 1:x}", name_from_text(f"n{i}.evil.test"), 1,
                   "blocked", ["not_allowed"], {})
    for i in range(50):
        hub.policy(1020.0, "vms", f"2001:db8:1:2:0:1::{i + 1:x}", name_from_text("n0.evil.test"), 1, "blocked",
                   ["not_allowed"], {})
        hub.rate_limit(1020.0, "vms", f"2001:db8:1:2:0:2::{i + 1:x}", name_from_text("n0.evil.test"), 1, {})
    hub.policy(1030.0, "vms", "2001:db8:9:9::1", name_from_text("y.evil.test"), 1, "blocked", ["not_allowed"], {})
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    mine = [a for a in lines if a["client"].startswith("2001:db8:1:2:")]
    assert [a["kind"] for a in mine] == ["policy"] * 20 + ["rate_limit"]
    assert [a["client"] for a in lines if a["client"] == "2001:db8:9:9::1"] == ["2001:db8:9:9::1"]  # another host
    hub.sweep(1100.0)
    later = [json.loads(x) for x in out.getvalue().splitlines()][len(lines):]
    folded = [a for a in later if "names_folded" in a["evidence"]]
    assert [a["evidence"]["names_folded"] for a in folded] == [9_980]


def test_by_default_two_addresses_of_one_64_are_two_clients_in_the_alerts() -> None:
    out = io.StringIO()
    hub = AlertHub([JsonlSink(stream=out)], window=60)
    for client in ("2001:db8:1:2::a", "2001:db8:1:2::b"):
        hub.policy(1000.0, "lan", client, name_from_text("exfil.evil.example"), 1, "blocked", ["not_allowed"], {})
    assert [json.loads(x)["client"] for x in out.getvalue().splitlines()] == ["2001:db8:1:2::a", "2001:db8:1:2::b"]


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


_Remote = RemoteCollected


def _tunnel(ts: float, client: str, domain: str, severity: str = "high") -> Alert:
    return Alert(ts, "tunnel", severity, "agents", client, f"mzxw6ytboi.{domain}", "TXT", domain,
                 ["entropy"], "quarantined", {"entropy": 4.1})


def test_tunnel_alerts_of_a_flooding_client_fold_for_remote_sinks_and_add_up() -> None:
    """Past domains_per_client domains a window, a client's tunnel alerts reach the remote sinks
    as one aggregate at the window's end; the jsonl sink gets each; the counts add up."""
    out = io.StringIO()
    remote = _Remote()
    hub = AlertHub([JsonlSink(stream=out), remote], window=60, domains_per_client=20)
    for i in range(500):  # the attacker: a tunnel alert per fresh domain
        hub.tunnel(_tunnel(1000.0 + i * 0.01, "10.0.0.66", f"d{i}.decoy.example",
                           "critical" if i == 300 else "high"))
        if i == 250:  # the victim, in the middle of the flood, and an escalation of an alerted domain
            hub.tunnel(_tunnel(1002.5, "10.0.0.7", "exfil.example"))
            hub.tunnel(_tunnel(1002.5, "10.0.0.66", "d3.decoy.example", "critical"))
    local = [json.loads(x) for x in out.getvalue().splitlines()]
    assert len(local) == 502  # every alert, one by one, in the jsonl sink
    assert [a.client for a in remote.alerts].count("10.0.0.66") == 21  # 20 domains, one escalated
    assert [a.domain for a in remote.alerts if a.client == "10.0.0.7"] == ["exfil.example"]
    assert hub.stats()["folded_kinds"] == {"tunnel": 480}
    hub.sweep(1050.0)
    assert len(remote.alerts) == 22  # the window is still open: nothing yet
    hub.sweep(1062.0)
    [aggregate] = remote.alerts[22:]
    assert (aggregate.kind, aggregate.client, aggregate.count) == ("tunnel", "10.0.0.66", 480)
    assert aggregate.severity == "critical"  # the most severe of those folded
    assert aggregate.ts == 1000.2 + 60
    assert aggregate.evidence == {
        "alerts_folded": 480, "domains_folded": 480,
        "domains": sorted(f"d{i}.decoy.example" for i in range(20, 500)),
        "sample": [f"d{i}.decoy.example" for i in range(20, 25)],
        "severities": {"high": 479, "critical": 1}, "first_folded": 1000.2, "window": 60,
    }
    assert len(out.getvalue().splitlines()) == 502  # the aggregate goes to the remote sinks only
    # The counts add up: per client, the remote alerts' counts are the jsonl sink's lines.
    for client in ("10.0.0.66", "10.0.0.7"):
        assert sum(a.count for a in remote.alerts if a.client == client) == sum(
            1 for a in local if a["client"] == client)
    # A new window: the client's domains go out one by one again.
    hub.tunnel(_tunnel(1100.0, "10.0.0.66", "later.decoy.example"))
    assert remote.alerts[-1].domain == "later.decoy.example"


def test_tunnel_aggregates_are_sent_on_close() -> None:
    remote = _Remote()
    hub = AlertHub([remote], window=60, domains_per_client=2)
    for i in range(5):
        hub.tunnel(_tunnel(1000.0 + i, "10.0.0.66", f"d{i}.decoy.example"))
    asyncio.run(hub.close(1010.0))
    assert [a.count for a in remote.alerts] == [1, 1, 3]
    assert remote.alerts[-1].evidence["sample"] == ["d2.decoy.example", "d3.decoy.example", "d4.decoy.example"]


def test_a_channel_behind_decoy_alerts_is_named_to_the_remote_sinks() -> None:
    """A client that raises 25 decoy tunnel alerts before its real channel's used to get the
    channel folded out of sight: the aggregate named the first folded domains only."""
    remote = _Remote()
    hub = AlertHub([remote], window=60, domains_per_client=20)
    for i in range(25):
        hub.tunnel(_tunnel(1000.0 + i * 0.1, "10.0.0.66", f"decoy{i}.example"))
    hub.tunnel(_tunnel(1003.0, "10.0.0.66", "realexfil.example"))
    hub.sweep(1100.0)
    named = [a.domain for a in remote.alerts] + [d for a in remote.alerts for d in a.evidence.get("domains", [])]
    assert "realexfil.example" in named
    assert remote.alerts[-1].evidence["domains_folded"] == 6


def test_a_pods_addresses_share_one_tunnel_alert_budget() -> None:
    """Addresses of one pod (or one IPv6 /64) cannot each take domains_per_client alerts."""
    remote = _Remote()
    hub = AlertHub([remote], window=60, domains_per_client=20)
    for i in range(200):  # 200 addresses of one /64, one domain each
        hub.tunnel(_tunnel(1000.0 + i * 0.01, f"fd00:0:0:7::{i + 1:x}", f"d{i}.decoy.example"))
    assert len(remote.alerts) == 20
    hub.sweep(1100.0)
    assert [a.count for a in remote.alerts[20:]] == [180]
