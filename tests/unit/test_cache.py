"""Cache: TTLs honoured and aged, negative answers (RFC 2308), entry cap, ID and case patched; TTLs capped at max_ttl."""

from __future__ import annotations

import asyncio
import struct
import tempfile
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
from hypothesis import given, settings
from hypothesis import strategies as st

from resolver import config as config_mod
from resolver.pipeline.cache import Cache, cache_key, serve
from resolver.pipeline.chain import Engine, Pipeline
from resolver.pipeline.query import Query
from resolver.wire.message import inspect_reply, parse_query
from tests.support.harness import wire_ttls


def query_for(name: str, now: float, msg_id: int = 1) -> Query:
    msg = dns.message.make_query(name, "A")
    msg.id = msg_id
    wire = msg.to_wire()
    return Query(wire, parse_query(wire), "127.0.0.1", "udp", now)


def reply_for(name: str, ttl: int = 300, nxdomain: bool = False) -> bytes:
    msg = dns.message.make_query(name, "A")
    resp = dns.message.make_response(msg)
    if nxdomain:
        resp.set_rcode(dns.rcode.NXDOMAIN)
        resp.authority.append(dns.rrset.from_text("test.", 900, "IN", "SOA", "ns. host. 1 2 3 4 120"))
    else:
        resp.answer.append(dns.rrset.from_text(name + ".", ttl + 100, "IN", "CNAME", "target.test."))
        resp.answer.append(dns.rrset.from_text("target.test.", ttl, "IN", "A", "192.0.2.1"))
    return resp.to_wire()


def store(cache: Cache, name: str, now: float, **kw: object) -> None:
    q = query_for(name, now)
    raw = reply_for(name, **kw)  # type: ignore[arg-type]
    info = inspect_reply(raw, q.question.end, max_ttl=86400, neg_ttl=3600)
    cache.put(cache_key(q.question, q.wire[3]), raw, now, info.ttl, info.ttl_offsets, info.rcode)


def test_positive_ttl_is_smallest_and_ages() -> None:
    cache = Cache(10)
    store(cache, "a.test", 1000.0)
    q = query_for("A.Test", 1100.0, msg_id=0xBEEF)
    entry = cache.get(cache_key(q.question, q.wire[3]), q.now)
    assert entry is not None
    reply = dns.message.from_wire(serve(entry, q))
    assert reply.id == 0xBEEF
    assert reply.question[0].name.to_text() == "A.Test."
    assert sorted(r.ttl for r in reply.answer) == [200, 300]
    assert cache.get(cache_key(q.question, q.wire[3]), 1300.0) is None  # 300 s passed: expired


def test_negative_answer_uses_soa_minimum() -> None:
    cache = Cache(10)
    store(cache, "gone.test", 0.0, nxdomain=True)
    q = query_for("gone.test", 119.0)
    entry = cache.get(cache_key(q.question, q.wire[3]), q.now)
    assert entry is not None
    assert entry.rcode == dns.rcode.NXDOMAIN
    assert cache.get(cache_key(q.question, q.wire[3]), 120.5) is None


def test_entry_cap_evicts_least_recently_used() -> None:
    cache = Cache(3)
    for i in range(3):
        store(cache, f"n{i}.test", 0.0)
    first = query_for("n0.test", 1.0)
    assert cache.get(cache_key(first.question, first.wire[3]), 1.0) is not None  # n0 now most recent
    store(cache, "n3.test", 1.0)
    assert len(cache) == 3
    assert cache.evictions == 1
    evicted = query_for("n1.test", 1.0)
    assert cache.get(cache_key(evicted.question, evicted.wire[3]), 1.0) is None


def test_udp_reply_too_large_becomes_truncated() -> None:
    cache = Cache(10)
    name = "big.test"
    msg = dns.message.make_query(name, "A")
    resp = dns.message.make_response(msg)
    resp.answer.append(dns.rrset.from_text(name + ".", 60, "IN", "A", *[f"192.0.2.{i}" for i in range(1, 60)]))
    raw = resp.to_wire()
    q = query_for(name, 0.0)
    info = inspect_reply(raw, q.question.end, max_ttl=86400, neg_ttl=3600)
    cache.put(cache_key(q.question, q.wire[3]), raw, 0.0, info.ttl, info.ttl_offsets, info.rcode)
    entry = cache.get(cache_key(q.question, q.wire[3]), 0.0)
    assert entry is not None
    small = dns.message.from_wire(serve(entry, q))
    assert small.flags & dns.flags.TC
    assert not small.answer
    q.transport = "tcp"
    assert len(dns.message.from_wire(serve(entry, q)).answer[0]) == 59


# -- TTLs a client is handed: never above max_ttl, top bit set read as 0 (RFC 2181 section 8) --

TTL_CONFIG = """
upstreams: [{address: 127.0.0.1, port: 53}]
cache: {max_ttl: 3600, negative_ttl: 600}
namespaces:
  agents:
    clients: [10.0.0.0/24]
    allow: ["*.example.com", example.com]
alerts: []
"""


def ttl_pipeline(tmp_path: Path) -> Pipeline:
    path = tmp_path / "dnsgate.yaml"
    path.write_text(TTL_CONFIG)
    config = config_mod.load(path)
    return Pipeline(config, Engine.from_config(config, []))


def upstream_reply(query: Query, ttls: list[int], *, nxdomain: bool = False) -> bytes:
    """A reply in every section whose TTL fields are ``ttls`` in turn (written on the wire, so any 32-bit value)."""
    msg = dns.message.make_response(dns.message.from_wire(query.wire))
    name = msg.question[0].name
    if nxdomain:
        msg.set_rcode(dns.rcode.NXDOMAIN)
        msg.authority.append(dns.rrset.from_text("example.com.", 60, "IN", "SOA", "ns.example.com. h. 1 2 3 4 4294967295"))
    else:
        msg.answer.append(dns.rrset.from_text(name, 60, "IN", "CNAME", "t.example.com."))
        msg.answer.append(dns.rrset.from_text("t.example.com.", 60, "IN", "A", "192.0.2.1"))
        msg.authority.append(dns.rrset.from_text("example.com.", 60, "IN", "NS", "ns.example.com."))
        msg.additional.append(dns.rrset.from_text("ns.example.com.", 60, "IN", "A", "192.0.2.53"))
    wire = bytearray(msg.to_wire())
    info = inspect_reply(bytes(wire), query.question.end, max_ttl=2**32, neg_ttl=2**32)
    for i, offset in enumerate(info.ttl_offsets):
        struct.pack_into("!I", wire, offset, ttls[i % len(ttls)])
    return bytes(wire)


def expected_ttl(sent: int, max_ttl: int = 3600) -> int:
    return 0 if sent >= 2**31 else min(sent, max_ttl)


def relay(pipeline: Pipeline, name: str, raw: bytes, now: float) -> tuple[Query, bytes]:
    wire = dns.message.make_query(name, "A").to_wire()
    query = Query(wire, parse_query(wire), "10.0.0.5", "udp", now)
    assert pipeline.decide(query) is None

    async def forward(_wire: bytes, _q: object, *, tcp: bool = False, client: str = "") -> bytes:  # noqa: ARG001
        return raw

    pipeline.engine.forwarder.forward = forward  # type: ignore[method-assign]
    reply = asyncio.run(pipeline.forward(query))
    assert reply.action == "allowed"
    assert reply.wire is not None
    return query, reply.wire


def test_a_ttl_above_max_ttl_is_lowered_relayed_and_cached(tmp_path: Path) -> None:
    pipeline = ttl_pipeline(tmp_path)
    wire = dns.message.make_query("big.example.com", "A").to_wire()
    probe = Query(wire, parse_query(wire), "10.0.0.5", "udp", 0.0)
    raw = upstream_reply(probe, [4294967295, 2**31 - 1, 86400 * 30, 7200])
    _, relayed = relay(pipeline, "big.example.com", raw, 1000.0)
    assert wire_ttls(relayed) == [0, 3600, 3600, 3600]
    # One TTL read as 0 makes the whole reply uncacheable; without it, the cache serves 3600 aged.
    raw = upstream_reply(probe, [2**31 - 1, 86400 * 30, 7200, 4000])
    _, relayed = relay(pipeline, "big.example.com", raw, 1000.0)
    assert wire_ttls(relayed) == [3600, 3600, 3600, 3600]
    again = Query(wire, parse_query(wire), "10.0.0.5", "udp", 1002.0)
    cached = pipeline.decide(again)
    assert cached is not None
    assert cached.action == "cached"
    assert cached.wire is not None
    assert wire_ttls(cached.wire) == [3598] * 4


@settings(max_examples=300, deadline=None)
@given(
    ttls=st.lists(st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 3599, 3600, 3601, 2**31 - 1, 2**31,
                                                                          2**32 - 1])), min_size=1, max_size=4),
    elapsed=st.integers(0, 5000),
    nxdomain=st.booleans(),
)
def test_no_ttl_the_upstream_sends_reaches_a_client_above_max_ttl(
    ttls: list[int], elapsed: int, nxdomain: bool
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pipeline = ttl_pipeline(Path(tmp))
        wire = dns.message.make_query("p.example.com", "A").to_wire()
        probe = Query(wire, parse_query(wire), "10.0.0.5", "udp", 0.0)
        raw = upstream_reply(probe, ttls, nxdomain=nxdomain)
        _, relayed = relay(pipeline, "p.example.com", raw, 1000.0)
        seen = wire_ttls(relayed)
        assert seen == [expected_ttl(ttls[i % len(ttls)]) for i in range(len(seen))]
        again = Query(wire, parse_query(wire), "10.0.0.5", "udp", 1000.0 + elapsed)
        cached = pipeline.decide(again)
        if cached is not None:  # still in the cache
            assert cached.wire is not None
            assert all(0 <= ttl <= 3600 - elapsed for ttl in wire_ttls(cached.wire))
            assert elapsed < (600 if nxdomain else 3600)
