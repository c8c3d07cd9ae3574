"""The client quarantine stage in-process: on_undeclared, search-path expansions, expiry, the book.

Real processes (memory and Redis backends, the admin calls, /metrics) are in
tests/integration/test_declared_egress.py.
"""

from __future__ import annotations

from pathlib import Path

import dns.message
import dns.rcode
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heuristics.client_quarantine import ClientQuarantine, ClientQuarantines
from resolver import config as config_mod
from resolver.config import ConfigError
from resolver.pipeline.chain import Engine, Pipeline
from resolver.pipeline.identity import PodIdentity
from resolver.pipeline.query import Query, Reply
from resolver.wire.message import parse_query
from tests.support.sinks import Collected

CONFIG = """
upstreams: [{{address: 127.0.0.1, port: 53}}]
namespaces:
  agents:
    clients: [10.0.0.0/24]
    mode: {mode}
    allow: [api.github.com, "*.cdn.example.net"]
    on_undeclared: {rule}
  build:
    clients: [10.0.1.0/24]
    allow: [api.github.com]
alerts: []
"""




def build(tmp_path: Path, mode: str = "enforce",
          rule: str = "{action: quarantine, duration: 60, search: [corp.example, cluster.local]}",
          ) -> tuple[Pipeline, Collected]:
    path = tmp_path / "dnsgate.yaml"
    path.write_text(CONFIG.format(mode=mode, rule=rule))
    config = config_mod.load(path)
    sink = Collected()
    return Pipeline(config, Engine.from_config(config, [sink])), sink


def ask(pipeline: Pipeline, name: str, client: str = "10.0.0.5", now: float = 1000.0) -> Reply | None:
    wire = dns.message.make_query(name, "A").to_wire()
    return pipeline.decide(Query(wire, parse_query(wire), client, "udp", now))


def rcode(reply: Reply | None) -> int:
    assert reply is not None
    assert reply.wire is not None
    return dns.message.from_wire(reply.wire).rcode()


def test_undeclared_name_quarantines_the_client_for_every_name(tmp_path: Path) -> None:
    pipeline, sink = build(tmp_path)
    assert ask(pipeline, "api.github.com") is None  # declared: on to the cache and upstream
    reply = ask(pipeline, "exfil.example.biz", now=1001.0)
    assert reply is not None
    assert reply.action == "quarantined"
    assert rcode(reply) == dns.rcode.NXDOMAIN
    [alert] = sink.alerts
    assert (alert.kind, alert.severity, alert.action, alert.qname, alert.client) == (
        "undeclared", "critical", "quarantined", "exfil.example.biz", "10.0.0.5")
    assert alert.evidence["until"] == 1061.0
    # Every later query of that client is denied, declared names too; one alert only.
    for name in ("api.github.com", "img.cdn.example.net", "exfil.example.biz"):
        later = ask(pipeline, name, now=1030.0)
        assert later is not None, name
        assert later.action == "quarantined", name
    assert len(sink.alerts) == 1
    # Another client of the same namespace, and the other namespace, are untouched.
    assert ask(pipeline, "api.github.com", client="10.0.0.6", now=1030.0) is None
    assert ask(pipeline, "api.github.com", client="10.0.1.5", now=1030.0) is None
    assert pipeline.engine.state.clients.blocks == 3


def test_quarantine_expires(tmp_path: Path) -> None:
    pipeline, _ = build(tmp_path)
    ask(pipeline, "exfil.example.biz", now=1000.0)
    blocked = ask(pipeline, "api.github.com", now=1059.9)
    assert blocked is not None
    assert blocked.action == "quarantined"
    assert ask(pipeline, "api.github.com", now=1060.0) is None


@pytest.mark.parametrize("name", [
    "api.github.com.agents.svc.cluster.local",  # the cluster search path
    "api.github.com.svc.cluster.local",
    "exfil.example.biz.cluster.local",  # under a search domain: the absolute try follows
    "api.github.com.corp.example",  # a configured host search domain
    "img.cdn.example.net.ec2.internal",  # an allowed name with a short unknown suffix
])
def test_search_path_expansions_never_trigger(tmp_path: Path, name: str) -> None:
    pipeline, sink = build(tmp_path)
    reply = ask(pipeline, name)
    assert reply is not None
    assert reply.action == "denied"
    assert [a.kind for a in sink.alerts] == ["policy"]
    assert ask(pipeline, "api.github.com", now=1001.0) is None  # and the client is not quarantined


def test_default_search_domains_are_the_cluster_domains(tmp_path: Path) -> None:
    pipeline, _ = build(tmp_path, rule="quarantine")
    ask(pipeline, "api.github.com.agents.svc.cluster.local")
    assert ask(pipeline, "api.github.com", now=1001.0) is None
    # A name that only ends like a search domain, inside a label, is no expansion.
    reply = ask(pipeline, "evilcluster.local", now=1002.0)
    assert reply is not None
    assert reply.action == "quarantined"


def test_observe_mode_and_alert_action_only_alert(tmp_path: Path) -> None:
    for mode, rule in (("observe", "quarantine"), ("enforce", "alert")):
        pipeline, sink = build(tmp_path, mode=mode, rule=rule)
        reply = ask(pipeline, "exfil.example.biz")
        assert reply is None or reply.action == "denied"
        undeclared = [a for a in sink.alerts if a.kind == "undeclared"]
        assert [(a.severity, a.action) for a in undeclared] == [("critical", "alerted")]
        assert ask(pipeline, "api.github.com", now=1001.0) is None


def test_namespaces_without_the_option_are_untouched(tmp_path: Path) -> None:
    pipeline, sink = build(tmp_path)
    reply = ask(pipeline, "exfil.example.biz", client="10.0.1.5")
    assert reply is not None
    assert reply.action == "denied"
    assert ask(pipeline, "api.github.com", client="10.0.1.5", now=1001.0) is None
    assert [a.kind for a in sink.alerts] == ["policy"]


@pytest.mark.parametrize(("rule", "key", "message"), [
    ("block", "namespaces.agents.on_undeclared", "must be one of quarantine, alert"),
    ("{action: quarantine, duration: -3}", "namespaces.agents.on_undeclared.duration", "greater than 0"),
    ("{action: quarantine, duration: soon}", "namespaces.agents.on_undeclared.duration", "duration"),
    ("{action: quarantine, search: ['*.corp.example']}", "namespaces.agents.on_undeclared.search[0]",
     "not a wildcard"),
    ("{action: quarantine, color: red}", "namespaces.agents.on_undeclared.color", "unknown key"),
])
def test_config_errors_name_the_key(tmp_path: Path, rule: str, key: str, message: str) -> None:
    path = tmp_path / "dnsgate.yaml"
    path.write_text(CONFIG.format(mode="enforce", rule=rule))
    with pytest.raises(ConfigError) as info:
        config_mod.load(path)
    assert info.value.key == key
    assert message in info.value.message
    assert info.value.line == 8


def test_durations() -> None:
    for text, seconds in (("90s", 90.0), ("15m", 900.0), ("1h", 3600.0), ("2d", 172800.0), ("45", 45.0)):
        cfg = config_mod.load("x.yaml", text=CONFIG.format(
            mode="enforce", rule=f"{{action: quarantine, duration: {text}}}"))
        rule = cfg.namespaces["agents"].on_undeclared
        assert rule is not None
        assert rule.duration == seconds


# -- the book -------------------------------------------------------------------------


def q(client: str, until: float, ns: str = "agents") -> ClientQuarantine:
    return ClientQuarantine(ns, client, until, 0.0, "exfil.example.biz")


def test_book_extends_never_shortens_and_lifts() -> None:
    book = ClientQuarantines()
    book.set(q("10.0.0.5", 100.0))
    book.set(q("10.0.0.5", 50.0))
    assert book.until("agents", "10.0.0.5") == 100.0
    assert [x.client for x in book.active(99.0)] == ["10.0.0.5"]
    assert book.active(100.0) == []
    lifted = book.lift("agents", "10.0.0.5")
    assert lifted is not None
    assert book.until("agents", "10.0.0.5") == 0.0
    assert book.lifted == 1
    assert book.lift("agents", "10.0.0.5") is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.floats(1, 1e6)), max_size=200))
def test_book_is_bounded(entries: list[tuple[int, float]]) -> None:
    """A flood of distinct clients never holds more than the limit; the newest stay."""
    book = ClientQuarantines(limit=16)
    for client, until in entries:
        book.set(q(f"10.0.0.{client}", until))
    assert len(book) <= 16
    if entries:
        client, until = entries[-1]
        assert book.until("agents", f"10.0.0.{client}") >= until


class FakePipe:
    """Records the commands a flush would send (the real Redis round trip is in the integration test)."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, tuple[object, ...]]] = []

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return lambda *args, **_kw: self.commands.append((name, args))


def test_book_sharing_keeps_changes_made_during_the_round_trip() -> None:
    book = ClientQuarantines(shared=True)
    book.set(q("10.0.0.5", 100.0))
    pipe = FakePipe()
    book.queue(pipe, "dnsgate", 10.0)
    assert [c for c, _ in pipe.commands] == ["zadd", "hset", "zremrangebyscore", "zrevrangebyscore", "hgetall"]
    book.set(q("10.0.0.6", 200.0))  # while the pipeline is in flight
    # Redis answers with what was sent plus another replica's quarantine, and nothing for .6 yet.
    book.pulled([(b"agents|10.0.0.5", 100.0), (b"research|10.0.1.9", 300.0)],
                {b"research|10.0.1.9": b'{"name": "x.example.biz", "since": 5}', b"gone|10.0.0.1": b"{}"})
    assert book.until("agents", "10.0.0.6") == 200.0
    assert book.until("research", "10.0.1.9") == 300.0
    [other] = [x for x in book.active(0.0) if x.namespace == "research"]
    assert other.name == "x.example.biz"
    assert other.since == 5.0
    pipe = FakePipe()
    book.queue(pipe, "dnsgate", 10.0)
    sent = [(c, a[1] if len(a) > 1 else None) for c, a in pipe.commands]
    assert ("zadd", {"agents|10.0.0.6": 200.0}) in sent  # the in-flight change is sent next round
    assert ("hdel", "gone|10.0.0.1") in sent  # the reason of an ended quarantine is forgotten


def test_a_pod_is_quarantined_on_every_address_and_a_cidr_client_per_address(tmp_path: Path) -> None:
    """A client named as a pod is quarantined as the pod: its other address (dual stack) is cut off too,
    an address it no longer holds is not. Pod identity is set on the query as the identity stage would."""
    pipeline, _sink = build(tmp_path)
    dual = PodIdentity("agents", "dual-0", "sa", "u1")

    def as_pod(name: str, client: str, pod: PodIdentity | None, now: float = 1000.0) -> Reply | None:
        wire = dns.message.make_query(name, "A").to_wire()
        query = Query(wire, parse_query(wire), client, "udp", now, namespace=pipeline.config.namespaces["agents"],
                      pod=pod)
        return pipeline.quarantine.resolve(query)

    reply = as_pod("exfil.example.biz", "10.0.0.40", dual)
    assert reply is not None
    assert reply.action == "quarantined"
    [held] = pipeline.engine.state.clients.active(1000.0)
    assert (held.namespace, held.client) == ("agents", "pod:agents/dual-0")
    for client in ("10.0.0.40", "fd00::40"):
        blocked = as_pod("api.github.com", client, dual, now=1001.0)
        assert blocked is not None, client
        assert blocked.action == "quarantined", client
    # Another pod later given 10.0.0.40 is not the quarantined one.
    assert as_pod("api.github.com", "10.0.0.40", PodIdentity("agents", "next-0", "sa", "u2"), now=1002.0) is None
    # A CIDR client (no pod) stays per address: its neighbour is free.
    assert ask(pipeline, "exfil.example.biz", client="10.0.0.7", now=1003.0) is not None
    assert ask(pipeline, "api.github.com", client="10.0.0.7", now=1004.0) is not None
    assert ask(pipeline, "api.github.com", client="10.0.0.8", now=1004.0) is None
    # An address quarantined before its pod was known (CIDR then) still holds once the pod is named.
    blocked = as_pod("api.github.com", "10.0.0.7", PodIdentity("agents", "late-0", "sa", "u3"), now=1005.0)
    assert blocked is not None
    assert blocked.action == "quarantined"
