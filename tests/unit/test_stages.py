"""Each pipeline stage in-process, the way the chain calls it: a Query in, a Reply or None (hand on) out.

The "next stage" is the Pipeline's own ``decide`` loop over the stage tuple;
a query that every stage hands on is what would go upstream. No sockets.
"""

from __future__ import annotations

import base64
import random
from pathlib import Path

import dns.message
import dns.name
import dns.rcode
import dns.rrset
import pytest

from resolver import config as config_mod
from resolver.config import Config
from resolver.pipeline.chain import Engine, Pipeline
from resolver.pipeline.query import Query, Reply
from resolver.wire.message import inspect_reply, parse_query
from tests.support.sinks import Collected

CONFIG = """
upstreams: [{{address: 127.0.0.1, port: 53}}]
unknown_clients: refuse
namespaces:
  agents:
    clients: [10.0.0.0/24]
    mode: {mode}
    deny_action: {deny}
    allow: [api.example.com, "*.cdn.example.net"]
    detection: {{mode: {detection}}}
  build:
    clients: [10.0.1.0/24]
    mode: learn
alerts: []
"""




def build(tmp_path: Path, mode: str = "enforce", deny: str = "nxdomain", detection: str = "observe") -> tuple[
    Pipeline, Collected
]:
    path = tmp_path / "dnsgate.yaml"
    path.write_text(CONFIG.format(mode=mode, deny=deny, detection=detection))
    config: Config = config_mod.load(path)
    sink = Collected()
    return Pipeline(config, Engine.from_config(config, [sink])), sink


def ask(pipeline: Pipeline, name: str, client: str = "10.0.0.5", qtype: str = "A", now: float = 1000.0,
        transport: str = "udp") -> tuple[Query, Reply | None]:
    wire = dns.message.make_query(name, qtype).to_wire()
    query = Query(wire, parse_query(wire), client, transport, now)
    return query, pipeline.decide(query)


def rcode(reply: Reply | None) -> int:
    assert reply is not None
    assert reply.wire is not None
    return dns.message.from_wire(reply.wire).rcode()


# -- identity --------------------------------------------------------------------


def test_identity_refuses_a_client_of_no_namespace(tmp_path: Path) -> None:
    pipeline, _ = build(tmp_path)
    _, reply = ask(pipeline, "api.example.com", client="192.0.2.9")
    assert reply is not None
    assert reply.action == "refused"
    assert rcode(reply) == dns.rcode.REFUSED


def test_identity_sets_the_namespace_by_prefix(tmp_path: Path) -> None:
    pipeline, _ = build(tmp_path)
    query, reply = ask(pipeline, "api.example.com", client="10.0.1.7")
    assert reply is None
    assert query.namespace is not None
    assert query.namespace.name == "build"


# -- policy ----------------------------------------------------------------------


def test_policy_passes_allowed_names_on(tmp_path: Path) -> None:
    pipeline, sink = build(tmp_path)
    for name in ("api.example.com", "img.cdn.example.net", "API.Example.COM"):
        _, reply = ask(pipeline, name)
        assert reply is None, name
    assert sink.alerts == []


def test_policy_enforce_answers_denied_names_itself(tmp_path: Path) -> None:
    pipeline, sink = build(tmp_path)
    _, reply = ask(pipeline, "cdn.example.net")  # a wildcard does not cover its own apex
    assert reply is not None
    assert reply.action == "denied"
    assert rcode(reply) == dns.rcode.NXDOMAIN
    assert [(a.kind, a.action, a.qname) for a in sink.alerts] == [("policy", "blocked", "cdn.example.net")]


@pytest.mark.parametrize(("deny", "expected"), [("nodata", dns.rcode.NOERROR), ("refused", dns.rcode.REFUSED)])
def test_policy_deny_action(tmp_path: Path, deny: str, expected: int) -> None:
    pipeline, _ = build(tmp_path, deny=deny)
    _, reply = ask(pipeline, "other.test")
    assert reply is not None
    assert rcode(reply) == expected
    assert reply.wire is not None
    assert not dns.message.from_wire(reply.wire).answer


def test_policy_drop_sends_nothing(tmp_path: Path) -> None:
    pipeline, _ = build(tmp_path, deny="drop")
    _, reply = ask(pipeline, "other.test")
    assert reply is not None
    assert reply.wire is None
    assert reply.action == "dropped"


def test_policy_observe_forwards_and_alerts(tmp_path: Path) -> None:
    pipeline, sink = build(tmp_path, mode="observe")
    _, reply = ask(pipeline, "other.test")
    assert reply is None
    assert [(a.kind, a.action) for a in sink.alerts] == [("policy", "alerted")]


def test_policy_learn_records_every_name(tmp_path: Path) -> None:
    pipeline, sink = build(tmp_path)
    for name in ("one.test", "two.test", "one.test"):
        _, reply = ask(pipeline, name, client="10.0.1.7")
        assert reply is None
    learned = {qname for (_ns, qname, _qtype, _seen) in pipeline.engine.learned.items("build")}
    assert learned == {b"\x03one\x04test\x00", b"\x03two\x04test\x00"}
    assert sink.alerts == []


# -- detection -------------------------------------------------------------------


def tunnel_names(domain: str, count: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [
        base64.b32encode(rng.randbytes(35)).decode().rstrip("=").lower() + "." + domain for _ in range(count)
    ]


def test_detection_enforce_quarantines_the_domain_even_for_allowed_names(tmp_path: Path) -> None:
    pipeline, sink = build(tmp_path, detection="enforce")
    replies = [ask(pipeline, name, now=1000.0 + i)[1] for i, name in enumerate(tunnel_names("cdn.example.net", 60))]
    blocked = [r for r in replies if r is not None]
    assert blocked
    assert all(r.action == "quarantined" for r in blocked)
    assert any(a.kind == "tunnel" and a.action == "quarantined" for a in sink.alerts)
    # The quarantine covers the registrable domain, allowed names included.
    _, reply = ask(pipeline, "img.cdn.example.net", now=1100.0)
    assert reply is not None
    assert reply.action == "quarantined"
    # Other domains are untouched.
    assert ask(pipeline, "api.example.com", now=1100.0)[1] is None


def test_detection_observe_alerts_but_hands_on(tmp_path: Path) -> None:
    pipeline, sink = build(tmp_path, detection="observe")
    replies = [ask(pipeline, name, now=1000.0 + i)[1] for i, name in enumerate(tunnel_names("cdn.example.net", 60))]
    assert all(r is None for r in replies)
    assert any(a.kind == "tunnel" and a.action == "alerted" for a in sink.alerts)


# -- cache -----------------------------------------------------------------------


def test_cache_answers_after_the_reply_is_stored(tmp_path: Path) -> None:
    pipeline, _ = build(tmp_path)
    query, reply = ask(pipeline, "api.example.com")
    assert reply is None
    assert query.cache_key
    upstream = dns.message.make_response(dns.message.from_wire(query.wire))
    upstream.answer.append(dns.rrset.from_text("api.example.com.", 300, "IN", "A", "192.0.2.7"))
    raw = upstream.to_wire()
    info = inspect_reply(raw, query.question.end, max_ttl=86400, neg_ttl=3600)
    pipeline.engine.cache.put(query.cache_key, raw, query.now, info.ttl, info.ttl_offsets, info.rcode)
    again, cached = ask(pipeline, "api.example.com", now=1010.0)
    assert cached is not None
    assert cached.action == "cached"
    assert cached.wire is not None
    answer = dns.message.from_wire(cached.wire)
    assert answer.id == dns.message.from_wire(again.wire).id
    assert [rrset.ttl for rrset in answer.answer] == [290]
    # A denied name never reaches the cache, whatever it holds.
    _, denied = ask(pipeline, "other.test", now=1010.0)
    assert denied is not None
    assert denied.action == "denied"


# -- the reply side --------------------------------------------------------------


def upstream_answer(query: Query, address: str, *, cname_to: str | None = None) -> bytes:
    """An upstream's reply to the forwarded query (the chain patches the ID back)."""
    msg = dns.message.make_response(dns.message.from_wire(query.wire))
    owner = msg.question[0].name
    if cname_to is not None:
        msg.answer.append(dns.rrset.from_text(owner, 300, "IN", "CNAME", cname_to))
        owner = dns.name.from_text(cname_to)
    msg.answer.append(dns.rrset.from_text(owner, 300, "IN", "A", address))
    return msg.to_wire()


async def forwarded(pipeline: Pipeline, query: Query, raw: bytes) -> Reply:
    """Run the upstream step with an in-process stand-in for the forwarder that returns ``raw``."""

    async def forward(_wire: bytes, _q: object, *, tcp: bool = False, client: str = "") -> bytes:  # noqa: ARG001
        return raw

    pipeline.engine.forwarder.forward = forward  # type: ignore[method-assign]
    return await pipeline.forward(query)


async def test_reply_hooks_let_an_answer_through_and_the_cache_keeps_it(tmp_path: Path) -> None:
    pipeline, _ = build(tmp_path)
    query, reply = ask(pipeline, "api.example.com")
    assert reply is None
    answer = await forwarded(pipeline, query, upstream_answer(query, "192.0.2.7"))
    assert answer.action == "allowed"
    assert answer.wire is not None
    assert [rd.address for rrset in dns.message.from_wire(answer.wire).answer for rd in rrset] == ["192.0.2.7"]
    assert ask(pipeline, "api.example.com", now=1001.0)[1] is not None  # served from the cache now


async def test_a_replaced_answer_never_reaches_the_cache(tmp_path: Path) -> None:
    pipeline, sink = build(tmp_path)
    query, _ = ask(pipeline, "api.example.com")
    answer = await forwarded(pipeline, query, upstream_answer(query, "10.1.2.3"))  # points inside
    assert answer.action != "allowed"
    assert rcode(answer) == dns.rcode.NXDOMAIN
    assert [a.kind for a in sink.alerts] == ["rebinding"]
    assert pipeline.engine.cache.stats()["entries"] == 0
    again, cached = ask(pipeline, "api.example.com", now=1001.0)
    assert cached is None  # asked upstream again, not served the denied answer
    assert again.cache_key


async def test_learn_mode_keeps_the_rcode_of_each_answer(tmp_path: Path) -> None:
    pipeline, _ = build(tmp_path)
    query, _ = ask(pipeline, "build.example.org", client="10.0.1.7")
    msg = dns.message.make_response(dns.message.from_wire(query.wire))
    msg.set_rcode(dns.rcode.NXDOMAIN)
    await forwarded(pipeline, query, msg.to_wire())
    seen = [s for (_ns, _name, _qtype, s) in pipeline.engine.learned.items("build")]
    assert len(seen) == 1
    assert seen[0].rcode == dns.rcode.NXDOMAIN
