"""The Redis backend's background work is bounded by its settings, not by past traffic,
and what it leaves in Redis expires: checked against a real redis-server."""

from __future__ import annotations

import base64
import random
from typing import Any

import dns.name
import redis

from heuristics import Detector, DetectorSettings
from heuristics.state import QUARANTINE_LOG_SECONDS, QUARANTINE_MARGIN, RedisState


def wire(text: str) -> bytes:
    return dns.name.from_text(text).to_wire().lower()


def announcements_read(state: RedisState) -> list[list[bytes]]:
    """The announcements each of the state's flushes reads from now on, in order."""
    replies: list[list[bytes]] = []
    make = state._client.pipeline

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = make(*args, **kwargs)
        execute = pipe.execute

        async def recorded(*a: Any, **k: Any) -> Any:
            last = pipe.command_stack[-1][0]
            out = await execute(*a, **k)
            if last[:2] == ("ZRANGEBYSCORE", f"{state.prefix}:shared"):
                replies.append([member for member, _ in out[-1]])
            return out

        pipe.execute = recorded
        return pipe

    state._client.pipeline = pipeline
    return replies


def quarantine_changes_read(state: RedisState) -> list[list[bytes]]:
    """The quarantine changes each of the state's flushes reads from now on, in order."""
    read: list[list[bytes]] = []
    make = state._client.pipeline

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = make(*args, **kwargs)
        execute = pipe.execute

        async def recorded(*a: Any, **k: Any) -> Any:
            commands = [args for args, _ in pipe.command_stack]
            out = await execute(*a, **k)
            for i, command in enumerate(commands):
                if command[:2] == ("ZRANGEBYSCORE", f"{state.prefix}:quarantines:log"):
                    read.append([member for member, _ in out[i]])
            return out

        pipe.execute = recorded
        return pipe

    state._client.pipeline = pipeline
    return read


async def commands_of_one_flush(server: redis.Redis, state: RedisState) -> int:
    """Redis commands one merge-round flush sends (from the server's own counters)."""
    server.config_resetstat()
    assert await state.flush(merge=True)
    stats = server.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k not in ("cmdstat_info", "cmdstat_config|resetstat"))


def burst(replicas: list[Detector], domains: int) -> None:
    """One client asking encoded names under many domains, spread over the replicas."""
    rng = random.Random(4)
    s = DetectorSettings()
    for d in range(domains):
        for k in range(4):
            chunk = base64.b32encode(rng.randbytes(20)).decode().rstrip("=").lower()
            replicas[d % len(replicas)].observe(
                "ns", "10.9.9.9", wire(f"{chunk}.d{d}-burst.example"), 16, 1000.0 + d / 100 + k / 1000, s,
            )


async def test_idle_flushes_after_a_burst_fall_to_a_small_bound(redis_server) -> None:
    redis_server.flushall()
    server = redis.Redis.from_url(str(redis_server))
    a = RedisState(str(redis_server), flush_seconds=3600, hot_flush_seconds=3600, max_merge=128)
    b = RedisState(str(redis_server), flush_seconds=3600, hot_flush_seconds=3600, max_merge=128)
    await a.start()
    await b.start()
    try:
        burst([Detector(a), Detector(b)], domains=400)
        for state in (a, b, a):
            assert await state.flush(merge=True)
        assert server.zcard("dnsgate:shared") >= 800  # namespace and client pair of each domain
        read = announcements_read(a)
        counts = [await commands_of_one_flush(server, a) for _ in range(a.merge_rounds + 2)]
        # The burst's newest pairs are merged back at first (HMGET per bucket, PFCOUNT)...
        print("commands per idle flush after the burst:", counts)
        assert counts[0] > 128 * 30, counts
        # ...then, the burst over, a flush is a handful of commands: quarantines and the
        # announcement cursor, nothing that grows with what the client did.
        assert counts[-1] <= 8, counts
        assert counts[-2] <= 8, counts
        # No announcement is read twice: the idle flushes read none.
        assert read == [[]] * len(counts)
        assert not a._touched
    finally:
        await a.close()
        await b.close()
        server.close()


async def test_announcements_below_the_cursor_are_not_read_again(redis_server) -> None:
    redis_server.flushall()
    server = redis.Redis.from_url(str(redis_server))
    a = RedisState(str(redis_server), flush_seconds=3600, hot_flush_seconds=3600)
    b = RedisState(str(redis_server), flush_seconds=3600, hot_flush_seconds=3600)
    await a.start()
    await b.start()
    try:
        read = announcements_read(a)
        b._announce["dnsgate:{ns|one.example}:n"] = None
        assert await b.flush()
        assert await a.flush()
        assert read[-1] == [b"dnsgate:{ns|one.example}:n"]
        cursor = a._announced_since
        assert cursor == server.zscore("dnsgate:shared", "dnsgate:{ns|one.example}:n")
        # Written below the cursor (an old entry): never read again.
        server.zadd("dnsgate:shared", {"dnsgate:{ns|old.example}:n": cursor - 10})
        assert await a.flush()
        assert read[-1] == []
        assert "dnsgate:{ns|old.example}:n" not in a._announced
        assert a._announced_since == cursor  # nothing new: the cursor stays, no overlap re-read
        # A replica whose clock is an hour behind still announces above every cursor.
        b.wall = lambda: cursor - 3600.0
        b._announce["dnsgate:{ns|late.example}:n"] = None
        assert await b.flush()
        assert await a.flush()
        assert read[-1] == [b"dnsgate:{ns|late.example}:n"]
        assert "dnsgate:{ns|late.example}:n" in a._announced
        assert a._announced_since > cursor
    finally:
        await a.close()
        await b.close()
        server.close()


async def test_announcements_are_read_in_bounded_chunks(redis_server) -> None:
    redis_server.flushall()
    a = RedisState(str(redis_server), flush_seconds=3600, hot_flush_seconds=3600, max_announce_read=100)
    b = RedisState(str(redis_server), flush_seconds=3600, hot_flush_seconds=3600)
    await a.start()
    await b.start()
    try:
        b._announce.update(dict.fromkeys((f"dnsgate:{{ns|d{i}.example}}:n" for i in range(250)), None))
        assert await b.flush()
        read = announcements_read(a)
        for _ in range(4):
            assert await a.flush()
        assert [len(members) for members in read] == [100, 100, 50, 0]
        assert len(a._announced) == 250
    finally:
        await a.close()
        await b.close()


async def test_ended_domain_quarantines_leave_nothing_in_redis(redis_server) -> None:
    redis_server.flushall()
    server = redis.Redis.from_url(str(redis_server))
    state = RedisState(str(redis_server), flush_seconds=3600, hot_flush_seconds=3600)
    state.wall = lambda: 10_000.0
    await state.start()
    try:
        state.note_time(10_000.0)  # the query clock (capture time in replay)
        state.set_quarantine("ns", "ended.example", 10_000.0 - QUARANTINE_MARGIN - 1)
        state.set_quarantine("ns", "ending.example", 10_030.0)
        state.set_quarantine("ns", "live.example", 10_600.0)
        assert await state.flush()
        assert server.zrange("dnsgate:quarantines", 0, -1) == [b"ns|ending.example", b"ns|live.example"]
        # No per-quarantine key (nothing read it): the index and the change log are all there is.
        assert sorted(server.keys("*")) == [b"dnsgate:quarantines", b"dnsgate:quarantines:log"]
        assert 0 < server.ttl("dnsgate:quarantines:log") <= QUARANTINE_LOG_SECONDS
        state.note_time(10_030.0 + QUARANTINE_MARGIN + 1)
        assert await state.flush()
        assert server.zrange("dnsgate:quarantines", 0, -1) == [b"ns|live.example"]
        state.note_time(10_600.0 + QUARANTINE_MARGIN + 1)
        assert await state.flush()
        assert server.keys("*") == [b"dnsgate:quarantines:log"]
        # The log keeps QUARANTINE_LOG_SECONDS of changes (and expires whole when idle that long).
        state.wall = lambda: 10_000.0 + QUARANTINE_LOG_SECONDS + 1
        state.set_quarantine("ns", "next.example", 20_000.0)
        assert await state.flush()
        assert server.zrange("dnsgate:quarantines:log", 0, -1) == [b"20000.0|ns|next.example"]
    finally:
        await state.close()
        server.close()


async def test_a_replica_reads_only_the_quarantine_changes_after_its_first_pull(redis_server) -> None:
    """The whole live set is read once; then only what changed, however many are live."""
    redis_server.flushall()
    a = RedisState(str(redis_server), flush_seconds=3600, hot_flush_seconds=3600)
    b = RedisState(str(redis_server), flush_seconds=3600, hot_flush_seconds=3600)
    await a.start()
    await b.start()
    try:
        for state in (a, b):
            state.note_time(5_000.0)  # the query clock
        for i in range(500):
            b.set_quarantine("ns", f"q{i}.example", 10_000.0)
        assert await b.flush()
        assert await a.flush()
        assert a.quarantine_until("ns", "q499.example") == 10_000.0
        count = a.active_quarantines(0.0)
        b.set_quarantine("ns", "q7.example", 20_000.0)  # extended
        b.set_quarantine("ns", "new.example", 20_000.0)
        assert await b.flush()
        read = quarantine_changes_read(a)
        assert await a.flush()
        assert await a.flush()
        assert read == [[b"20000.0|ns|q7.example", b"20000.0|ns|new.example"], []]
        assert a.quarantine_until("ns", "q7.example") == 20_000.0
        assert a.active_quarantines(0.0) == count + 1
    finally:
        await a.close()
        await b.close()
