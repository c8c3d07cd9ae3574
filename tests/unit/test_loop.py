"""The loop guard's mark on the wire: added to any query, found again, never breaking the message."""

from __future__ import annotations

import dns.edns
import dns.message
import dns.rcode
from hypothesis import given
from hypothesis import strategies as st

from resolver.pipeline.loop import LOOP_OPTION, MAX_HOPS, LoopGuard
from resolver.pipeline.query import Query
from resolver.wire.message import add_edns_option, edns_options, parse_query

labels = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)


@given(st.lists(labels, min_size=1, max_size=4), st.booleans(),
       st.lists(st.tuples(st.integers(65001, 65300), st.binary(max_size=20)), max_size=3), st.binary(min_size=8, max_size=8))
def test_a_mark_is_added_and_found_and_the_query_still_decodes(
    name: list[str], edns: bool, options: list[tuple[int, bytes]], mark: bytes
) -> None:
    query = dns.message.make_query(".".join(name), "A", use_edns=0 if edns or options else None,
                                   options=[dns.edns.GenericOption(c, d) for c, d in options])
    wire = query.to_wire()
    marked = add_edns_option(wire, parse_query(wire), LOOP_OPTION, mark)
    assert marked is not None
    decoded = dns.message.from_wire(marked)
    assert decoded.question == query.question
    assert [(o.otype, o.to_wire()) for o in decoded.options][:-1] == [(c, d) for c, d in options]
    assert edns_options(marked, parse_query(marked), LOOP_OPTION) == [mark]


def query_of(wire: bytes) -> Query:
    return Query(wire, parse_query(wire), "127.0.0.1", "udp", 0.0)


def test_own_mark_or_too_many_hops_is_a_loop() -> None:
    guard = LoopGuard(b"12345678")
    plain = dns.message.make_query("a.test", "A").to_wire()
    assert guard.resolve(query_of(plain)) is None
    once = guard.marked(plain, parse_query(plain))
    reply = guard.resolve(query_of(once))
    assert reply is not None
    assert reply.rcode == dns.rcode.SERVFAIL
    other = plain
    for hop in range(MAX_HOPS):
        other = LoopGuard(bytes([hop]) * 8).marked(other, parse_query(other))
        looped = guard.resolve(query_of(other)) is not None
        assert looped == (hop + 1 >= MAX_HOPS), hop
    assert guard.stats()["loops"] == 2
