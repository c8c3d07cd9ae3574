"""The loop guard's mark on the wire: added to any query, found again, never breaking the message."""

from __future__ import annotations

import logging

import dns.edns
import dns.message
import dns.rcode
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resolver.pipeline.loop import LOOP_OPTION, MARKS_PER_CLIENT, MARKS_RESET_SECONDS, MAX_HOPS, LogLimit, LoopGuard
from resolver.pipeline.query import Query
from resolver.wire.message import edns_options, parse_query

labels = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)


@given(st.lists(labels, min_size=1, max_size=4), st.booleans(),
       st.lists(st.tuples(st.sampled_from([65001, 65300, LOOP_OPTION]), st.binary(max_size=12)), max_size=12),
       st.binary(min_size=8, max_size=8))
def test_the_forwarded_query_carries_each_earlier_mark_once_then_this_one(
    name: list[str], edns: bool, options: list[tuple[int, bytes]], mark: bytes
) -> None:
    query = dns.message.make_query(".".join(name), "A", use_edns=0 if edns or options else None,
                                   options=[dns.edns.GenericOption(c, d) for c, d in options])
    wire = query.to_wire()
    marked = LoopGuard(mark).marked(wire, parse_query(wire))
    decoded = dns.message.from_wire(marked)
    assert decoded.question == query.question
    earlier: list[bytes] = []
    for code, data in options:  # other codes, other sizes and copies stay behind
        if code == LOOP_OPTION and len(data) == 8 and data not in earlier and len(earlier) < MAX_HOPS - 1:
            earlier.append(data)
    assert [(o.otype, o.to_wire()) for o in decoded.options] == [(LOOP_OPTION, m) for m in [*earlier, mark]]
    assert edns_options(marked, parse_query(marked), LOOP_OPTION) == [*earlier, mark]


def query_of(wire: bytes, now: float = 0.0) -> Query:
    return Query(wire, parse_query(wire), "127.0.0.1", "udp", now)


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
    assert guard.stats()["loops"] == 1
    assert guard.stats()["too_many_hops"] == 1


def with_marks(*marks: bytes) -> bytes:
    return dns.message.make_query("a.test", "A", use_edns=0,
                                  options=[dns.edns.GenericOption(LOOP_OPTION, m) for m in marks]).to_wire()


def test_only_distinct_foreign_marks_count_as_hops() -> None:
    """A real chain never repeats a mark (each dnsgate refuses its own), so copies are one hop."""
    guard = LoopGuard(b"12345678")
    assert guard.resolve(query_of(with_marks(*[b"other-01"] * MAX_HOPS))) is None
    assert guard.resolve(query_of(with_marks(*[bytes([i]) * 8 for i in range(MAX_HOPS - 1)] * 2))) is None
    assert guard.resolve(query_of(with_marks(*[bytes([i]) * 8 for i in range(MAX_HOPS)]))) is not None
    assert guard.stats() == {"loops": 0, "too_many_hops": 1}


def test_a_loop_is_logged_at_most_once_a_minute_with_the_count(caplog: pytest.LogCaptureFixture) -> None:
    guard = LoopGuard(b"12345678")
    looped = with_marks(b"12345678")
    caplog.set_level(logging.WARNING, logger="dnsgate.loop")
    for second in (0.0, 1.0, 30.0, 59.9):
        assert guard.resolve(query_of(looped, 1000.0 + second)) is not None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert "carrying its own mark" in lines[0]
    assert lines[0].endswith("such queries since the last line: 1")
    assert guard.resolve(query_of(looped, 1060.0)) is not None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[1].endswith("such queries since the last line: 4")  # the three held back and this one
    assert guard.stats()["loops"] == 5


def test_forged_hops_do_not_use_up_the_loop_log(caplog: pytest.LogCaptureFixture) -> None:
    """A client writing foreign marks gets SERVFAIL for itself; a real loop later is still logged."""
    guard = LoopGuard(b"12345678")
    forged = with_marks(*[bytes([i]) * 8 for i in range(MAX_HOPS)])
    caplog.set_level(logging.WARNING, logger="dnsgate.loop")
    for second in range(100):
        reply = guard.resolve(query_of(forged, float(second)))
        assert reply is not None
        assert reply.rcode == dns.rcode.SERVFAIL
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.WARNING]  # at 0 s and 60 s
    guard.resolve(query_of(with_marks(b"12345678"), 100.0))
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "forwarding loop" in errors[0]
    assert guard.stats() == {"loops": 1, "too_many_hops": 100}


def test_the_log_limit_is_not_silenced_by_a_clock_set_back() -> None:
    limit = LogLimit(60.0)
    assert limit.due(1000.0) == 1
    assert limit.due(1010.0) == 0
    assert limit.due(500.0) == 2  # the wall clock went back: a line now, not in 560 s
    assert limit.due(520.0) == 0
    assert limit.due(560.0) == 2


def carried(guard: LoopGuard, client: str, *marks: bytes) -> list[bytes]:
    """The earlier-hop marks the forwarded query carries (this dnsgate's own left out)."""
    wire = with_marks(*marks)
    sent = guard.marked(wire, parse_query(wire), client)
    return edns_options(sent, parse_query(sent), LOOP_OPTION)[:-1]


def test_a_client_writing_new_marks_on_every_query_gets_only_its_allowance_through() -> None:
    """Loop marks are the one place a client's own octets could pass the question: a client
    that writes fresh ones on every query (a channel of 56 octets a query) gets
    MARKS_PER_CLIENT of them carried on, then none, while another client keeps its own."""
    guard = LoopGuard(b"12345678")
    through: set[bytes] = set()
    for i in range(100):  # 7 fresh marks a query: 700 marks, 5,600 octets
        through.update(carried(guard, "10.0.0.9", *[f"{i:03d}-{k:04d}".encode() for k in range(7)]))
    assert len(through) == MARKS_PER_CLIENT
    assert guard.marks_dropped == 700 - MARKS_PER_CLIENT
    # A real chain's marks are carried on, query after query; and per client.
    chain = [b"hop-aaaa", b"hop-bbbb"]
    for _ in range(50):
        assert carried(guard, "10.0.0.10", *chain) == chain
    assert carried(guard, "10.0.0.9", *sorted(through)[:2]) == sorted(through)[:2]  # its own, still known


def test_the_allowance_starts_again_after_a_day(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("resolver.pipeline.loop.time.monotonic", lambda: clock[0])
    guard = LoopGuard(b"12345678")
    assert len(carried(guard, "c", *[f"a-{k:06d}".encode() for k in range(7)])) == 7
    assert len(carried(guard, "c", *[f"b-{k:06d}".encode() for k in range(7)])) == 1
    clock[0] += MARKS_RESET_SECONDS
    assert len(carried(guard, "c", *[f"c-{k:06d}".encode() for k in range(7)])) == 7
