"""BIND's CNAME-chain rule in-process: the first chain target with an RPZ trigger rewrites the reply;
a local CNAME's target is checked as a query for it would be before it goes upstream."""

from __future__ import annotations

from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from resolver import config as config_mod
from resolver.pipeline.chain import Engine, Pipeline
from resolver.pipeline.query import Query, Reply
from resolver.pipeline.scrub import UpstreamAnswer, scrub
from resolver.wire.message import parse_query
from tests.unit.test_stages import Collected, tunnel_names

ZONE = """\
$ORIGIN policy.rpz.
@ 60 SOA localhost. root.localhost. 1 3600 600 86400 60
@ 60 NS localhost.
bad.target.test 60 CNAME .
empty.target.test 60 CNAME *.
local.target.test 60 A 198.51.100.1
alias.target.test 60 CNAME elsewhere.test.
tcp.target.test 60 CNAME rpz-tcp-only.
pass.target.test 60 CNAME rpz-passthru.
passed.qname.test 60 CNAME rpz-passthru.
"""


def build(tmp_path: Path, mode: str) -> tuple[Pipeline, Collected]:
    (tmp_path / "policy.rpz").write_text(ZONE)
    path = tmp_path / "dnsgate.yaml"
    path.write_text(f"""
upstreams: [{{address: 127.0.0.1, port: 53}}]
namespaces:
  agents:
    clients: [10.0.0.0/24]
    mode: {mode}
    rpz: [policy.rpz]
    allow: ["*.qname.test"]
""")
    config = config_mod.load(path)
    sink = Collected()
    return Pipeline(config, Engine.from_config(config, [sink])), sink


def upstream_answer(query: Query, *targets: str) -> UpstreamAnswer:
    """The upstream's reply: the query name CNAMEs through ``targets``, the last one has an address."""
    reply = dns.message.make_response(dns.message.from_wire(query.wire))
    owner = query.question.qname
    name = dns.name.from_wire(owner, 0)[0]
    for target in targets:
        reply.answer.append(dns.rrset.from_text(name, 60, "IN", "CNAME", target + "."))
        name = dns.name.from_text(target)
    reply.answer.append(dns.rrset.from_text(name, 60, "IN", "A", "192.0.2.9"))
    return scrub(reply.to_wire(), query.question)


def query_for(pipeline: Pipeline, name: str, transport: str = "udp") -> Query:
    wire = dns.message.make_query(name, "A").to_wire()
    query = Query(wire, parse_query(wire), "10.0.0.5", transport, 1000.0)
    assert pipeline.decide(query) is None  # allowed: it would go upstream
    return query


def test_first_target_with_a_trigger_rewrites(tmp_path: Path) -> None:
    pipeline, sink = build(tmp_path, "enforce")
    query = query_for(pipeline, "www.qname.test")
    reply = pipeline.policy.rewrite_chain(query, upstream_answer(query, "hop.test", "bad.target.test", "x.test"))
    assert reply is not None
    assert reply.wire is not None
    msg = dns.message.from_wire(reply.wire)
    assert msg.rcode() == dns.rcode.NXDOMAIN
    assert [r.name.to_text() for r in msg.answer] == ["www.qname.test.", "hop.test."]  # the chain up to it
    assert sink.alerts[-1].action == "blocked"
    assert sink.alerts[-1].evidence["cname_target"] == "bad.target.test"


def test_local_data_at_a_target_and_a_local_cname_to_follow(tmp_path: Path) -> None:
    pipeline, _ = build(tmp_path, "enforce")
    query = query_for(pipeline, "www.qname.test")
    reply = pipeline.policy.rewrite_chain(query, upstream_answer(query, "local.target.test"))
    assert reply is not None
    assert reply.wire is not None
    msg = dns.message.from_wire(reply.wire)
    assert [(r.name.to_text(), r[0].to_text()) for r in msg.answer] == [
        ("www.qname.test.", "local.target.test."), ("local.target.test.", "198.51.100.1"),
    ]
    followed = pipeline.policy.rewrite_chain(query, upstream_answer(query, "alias.target.test"))
    assert followed is not None
    assert followed.follow == dns.name.from_text("elsewhere.test.").to_wire()
    nodata = pipeline.policy.rewrite_chain(query, upstream_answer(query, "empty.target.test"))
    assert nodata is not None
    assert nodata.rcode == dns.rcode.NOERROR


def test_passthru_stops_the_checks(tmp_path: Path) -> None:
    pipeline, _ = build(tmp_path, "enforce")
    query = query_for(pipeline, "www.qname.test")
    assert pipeline.policy.rewrite_chain(query, upstream_answer(query, "pass.target.test", "bad.target.test")) is None
    passed = query_for(pipeline, "passed.qname.test")  # the query name's own PASSTHRU trigger
    assert pipeline.policy.rewrite_chain(passed, upstream_answer(passed, "bad.target.test")) is None


@pytest.mark.parametrize(("transport", "truncated"), [("udp", True), ("tcp", False)])
def test_tcp_only_target(tmp_path: Path, transport: str, truncated: bool) -> None:
    pipeline, _ = build(tmp_path, "enforce")
    query = query_for(pipeline, "www.qname.test", transport)
    reply = pipeline.policy.rewrite_chain(query, upstream_answer(query, "tcp.target.test"))
    if truncated:
        assert reply is not None
        assert reply.wire is not None
        assert dns.message.from_wire(reply.wire).flags & dns.flags.TC
    else:
        assert reply is None


@pytest.mark.parametrize(("mode", "alerts"), [("observe", ["alerted"]), ("learn", [])])
def test_observe_alerts_and_learn_looks_away(tmp_path: Path, mode: str, alerts: list[str]) -> None:
    pipeline, sink = build(tmp_path, mode)
    query = query_for(pipeline, "www.qname.test")
    assert pipeline.policy.rewrite_chain(query, upstream_answer(query, "bad.target.test")) is None
    assert [a.action for a in sink.alerts if a.kind == "policy"] == alerts


def cache_key_after_decide(pipeline: Pipeline) -> bytes:
    return query_for(pipeline, "www.qname.test").cache_key


def test_a_reload_that_changes_answer_policy_starts_a_fresh_cache_scope(tmp_path: Path) -> None:
    first, _ = build(tmp_path, "enforce")
    again = Pipeline(config_mod.load(tmp_path / "dnsgate.yaml"), first.engine)
    assert cache_key_after_decide(first) == cache_key_after_decide(again)  # same policy: the cache is shared
    (tmp_path / "policy.rpz").write_text(ZONE + "new.target.test 60 CNAME .\n")
    changed = Pipeline(config_mod.load(tmp_path / "dnsgate.yaml"), first.engine)
    assert cache_key_after_decide(first) != cache_key_after_decide(changed)
    text = (tmp_path / "dnsgate.yaml").read_text()
    (tmp_path / "dnsgate.yaml").write_text(text + "    rebinding: {mode: observe}\n")
    guarded = Pipeline(config_mod.load(tmp_path / "dnsgate.yaml"), first.engine)
    assert cache_key_after_decide(changed) != cache_key_after_decide(guarded)


# -- a local CNAME's target is a name sent upstream for the client: checked as one --

FOLLOW_ZONE = """\
$ORIGIN follow.rpz.
@ 60 SOA localhost. root.localhost. 1 3600 600 86400 60
@ 60 NS localhost.
redir.qname.test 60 CNAME target.walled.test.
*.sink.qname.test 60 CNAME *.walled.test.
*.out.qname.test 60 CNAME *.garden.test.
away.qname.test 60 CNAME blocked.walled.test.
blocked.walled.test 60 CNAME .
hop.qname.test 60 CNAME local.walled.test.
local.walled.test 60 CNAME redir.qname.test.
loop1.qname.test 60 CNAME loop2.qname.test.
loop2.qname.test 60 CNAME loop1.qname.test.
"""


def follow_pipeline(tmp_path: Path, detection: str = "observe") -> tuple[Pipeline, Collected, list[str]]:
    """A pipeline whose forwarder answers every question with ``address`` and records the names asked."""
    (tmp_path / "follow.rpz").write_text(FOLLOW_ZONE)
    path = tmp_path / "dnsgate.yaml"
    path.write_text(f"""
upstreams: [{{address: 127.0.0.1, port: 53}}]
namespaces:
  agents:
    clients: [10.0.0.0/24]
    rpz: [follow.rpz]
    allow: ["*.qname.test", "*.walled.test"]
    detection: {{mode: {detection}}}
""")
    config = config_mod.load(path)
    sink = Collected()
    pipeline = Pipeline(config, Engine.from_config(config, [sink]))
    asked: list[str] = []

    async def forward(wire: bytes, _q: object, *, tcp: bool = False, client: str = "") -> bytes:  # noqa: ARG001
        request = dns.message.from_wire(wire)
        name = request.question[0].name
        asked.append(name.to_text(omit_final_dot=True))
        reply = dns.message.make_response(request)
        address = "169.254.169.254" if name.labels[0] == b"target" else "192.0.2.9"
        reply.answer.append(dns.rrset.from_text(name, 60, "IN", "A", address))
        return reply.to_wire()

    pipeline.engine.forwarder.forward = forward  # type: ignore[method-assign]
    return pipeline, sink, asked


async def resolved(pipeline: Pipeline, name: str, now: float = 1000.0) -> dns.message.Message | None:
    wire = dns.message.make_query(name, "A").to_wire()
    query = Query(wire, parse_query(wire), "10.0.0.5", "udp", now)
    handled = pipeline.handle(query)
    reply = handled if isinstance(handled, Reply) else await handled
    return None if reply.wire is None else dns.message.from_wire(reply.wire)


def answers(msg: dns.message.Message | None) -> list[tuple[str, str]]:
    assert msg is not None
    return [(r.name.to_text(omit_final_dot=True), r[0].to_text()) for r in msg.answer]


async def test_a_followed_answer_pointing_inside_is_denied_by_the_rebinding_guard(tmp_path: Path) -> None:
    pipeline, sink, asked = follow_pipeline(tmp_path)
    msg = await resolved(pipeline, "redir.qname.test")
    assert msg is not None
    assert msg.rcode() == dns.rcode.NXDOMAIN
    assert answers(msg) == [("redir.qname.test", "target.walled.test.")]  # the CNAME, never the address
    assert asked == ["target.walled.test"]
    alert = next(a for a in sink.alerts if a.kind == "rebinding")
    assert (alert.qname, alert.action, alert.evidence["address"]) == ("target.walled.test", "blocked", "169.254.169.254")


async def test_a_followed_name_the_namespace_does_not_allow_never_goes_upstream(tmp_path: Path) -> None:
    pipeline, sink, asked = follow_pipeline(tmp_path)
    msg = await resolved(pipeline, "data123.out.qname.test")  # -> data123.out.qname.test.garden.test
    assert msg is not None
    assert msg.rcode() == dns.rcode.NXDOMAIN
    assert answers(msg) == [("data123.out.qname.test", "data123.out.qname.test.garden.test.")]
    assert asked == []
    alert = next(a for a in sink.alerts if a.kind == "policy")
    assert (alert.qname, alert.reasons, alert.action) == ("data123.out.qname.test.garden.test", ["not_allowed"], "blocked")
    assert alert.evidence["followed_from"] == "data123.out.qname.test"


async def test_a_followed_name_with_its_own_trigger_gets_that_trigger(tmp_path: Path) -> None:
    pipeline, _, asked = follow_pipeline(tmp_path)
    msg = await resolved(pipeline, "away.qname.test")
    assert msg is not None
    assert msg.rcode() == dns.rcode.NXDOMAIN  # blocked.walled.test CNAME .
    assert answers(msg) == [("away.qname.test", "blocked.walled.test.")]
    assert asked == []
    hop = await resolved(pipeline, "hop.qname.test")  # local.walled.test is itself a local CNAME
    assert answers(hop) == [("hop.qname.test", "local.walled.test."), ("local.walled.test", "redir.qname.test."),
                            ("redir.qname.test", "target.walled.test.")]
    assert hop is not None
    assert hop.rcode() == dns.rcode.NXDOMAIN  # and target.walled.test points inside
    loop = await resolved(pipeline, "loop1.qname.test")
    assert loop is not None
    assert loop.rcode() == dns.rcode.SERVFAIL


async def test_an_allowed_followed_name_is_answered_with_the_client_labels_as_bind_does(tmp_path: Path) -> None:
    pipeline, _, asked = follow_pipeline(tmp_path)
    msg = await resolved(pipeline, "x.sink.qname.test")
    assert answers(msg) == [("x.sink.qname.test", "x.sink.qname.test.walled.test."),
                            ("x.sink.qname.test.walled.test", "192.0.2.9")]
    assert asked == ["x.sink.qname.test.walled.test"]


async def test_the_detector_observes_followed_names_and_its_quarantine_covers_them(tmp_path: Path) -> None:
    pipeline, sink, asked = follow_pipeline(tmp_path, detection="enforce")
    pipeline.engine.detector.quarantine("agents", "walled.test", 5000.0)
    msg = await resolved(pipeline, "redir.qname.test")
    assert msg is not None
    assert msg.rcode() == dns.rcode.NXDOMAIN
    assert asked == []
    # A tunnel through a wildcard rewrite: the detector sees the rewritten names under walled.test.
    (tmp_path / "observe").mkdir()
    pipeline, sink, asked = follow_pipeline(tmp_path / "observe", detection="observe")
    for i, name in enumerate(tunnel_names("sink.qname.test", 60)):
        await resolved(pipeline, name, now=1000.0 + i)
    assert "walled.test" in {a.domain for a in sink.alerts if a.kind == "tunnel"}


async def test_queries_into_an_rpz_cname_loop_are_logged_once_a_minute(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each query into an RPZ CNAME loop gets SERVFAIL; a client asking it over and over must
    not write a warning line each time."""
    pipeline, _, asked = follow_pipeline(tmp_path)
    caplog.set_level("WARNING", logger="dnsgate.pipeline")
    for i in range(500):
        loop = await resolved(pipeline, "loop1.qname.test", now=1000.0 + i * 0.01)
        assert loop is not None
        assert loop.rcode() == dns.rcode.SERVFAIL
    lines = [r.getMessage() for r in caplog.records if "local CNAMEs" in r.getMessage()]
    assert len(lines) == 1
    await resolved(pipeline, "loop1.qname.test", now=1061.0)  # a minute on: one line with the count
    lines = [r.getMessage() for r in caplog.records if "local CNAMEs" in r.getMessage()]
    assert len(lines) == 2
    assert lines[1].endswith("such queries since the last line: 500")
    assert asked == []
