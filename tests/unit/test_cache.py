"""Cache: TTLs honoured and aged, negative answers (RFC 2308), entry cap, ID and case patched."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rrset

from resolver.pipeline.cache import Cache, cache_key, serve
from resolver.pipeline.query import Query
from resolver.wire.message import inspect_reply, parse_query


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
