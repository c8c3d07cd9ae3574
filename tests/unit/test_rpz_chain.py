"""BIND's CNAME-chain rule in-process: the first chain target with an RPZ trigger rewrites the reply."""

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
from resolver.pipeline.query import Query
from resolver.pipeline.scrub import UpstreamAnswer, scrub
from resolver.wire.message import parse_query
from tests.unit.test_stages import Collected

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
