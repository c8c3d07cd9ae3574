"""State backends: memory and Redis give the same verdicts; Redis outages fall back."""

from __future__ import annotations

import base64
import random

import dns.name
import redis

from heuristics import Detector, DetectorSettings, Verdict
from heuristics.state import MemoryState, RedisState
from heuristics.windows import Field
from tests.benign_corpus import benign_day, client_namespace


def wire(text: str) -> bytes:
    return dns.name.from_text(text).to_wire().lower()


def _stream(seed: int) -> list[tuple[float, str, bytes, int]]:
    """Benign traffic with a base32 TXT tunnel and a hex channel mixed in."""
    rng = random.Random(seed)
    rows = benign_day(seed=seed, queries=6000, start=1000.0)
    rows = [(1000.0 + (ts - 1000.0) / 24, c, q, t) for ts, c, q, t in rows]  # one hour
    for i in range(300):
        chunk = base64.b32encode(rng.randbytes(30)).decode().rstrip("=").lower()
        rows.append((1000.0 + i * 10, "10.7.7.7", wire(f"{chunk}.t.tunnel.example"), 16))
        hex_name = wire(f"{rng.randbytes(8).hex()}.h.hex.example")
        rows.append((1001.0 + i * 10, "10.7.7.8", hex_name, 1))
    rows.sort(key=lambda r: r[0])
    return rows


def _key(v: Verdict | None) -> tuple[str, tuple[str, ...], str, bool] | None:
    return None if v is None else (v.domain, v.reasons, v.severity, v.alert)


async def _run(detector: Detector, state: RedisState | None, rows: list) -> list:
    s = DetectorSettings()
    out = []
    for i, (ts, client, qname, qtype) in enumerate(rows):
        ns = client_namespace(client) if client.startswith("10.") and client[3] != "7" else "t"
        out.append(_key(detector.observe(ns, client, qname, qtype, ts, s)))
        if state is not None and i % 500 == 499:
            assert await state.flush(merge=True)
    return out


async def test_memory_and_redis_give_the_same_verdicts(redis_server) -> None:
    redis_server.flushall()
    rows = _stream(21)
    memory = await _run(Detector(MemoryState()), None, rows)
    state = RedisState(str(redis_server), flush_seconds=3600, hot_flush_seconds=3600)  # flushed by hand below
    await state.start()
    try:
        shared = await _run(Detector(state), state, rows)
        assert state.errors == 0
        assert state.flushes > 0
    finally:
        await state.close()
    assert shared == memory
    assert any(v and v[0] == "tunnel.example" for v in memory)
    assert any(v and v[0] == "hex.example" for v in memory)
    # The windows really live in Redis, under hash-tagged keys.
    client = redis.Redis.from_url(str(redis_server))
    keys = [k.decode() for k in client.scan_iter("dnsgate:{t|tunnel.example}:*")]
    client.close()
    assert any(":u:" in k for k in keys)
    assert any(":l:" in k for k in keys)


async def test_two_replicas_share_windows_and_quarantines(redis_server) -> None:
    redis_server.flushall()
    s = DetectorSettings()
    a = RedisState(str(redis_server), flush_seconds=3600, hot_flush_seconds=3600)
    b = RedisState(str(redis_server), flush_seconds=3600, hot_flush_seconds=3600)
    await a.start()
    await b.start()
    try:
        da, db = Detector(a), Detector(b)
        rng = random.Random(3)
        # Each replica alone sees half of a word channel: under budget on both...
        for i in range(560):
            det = da if i % 2 else db
            words = "-".join(rng.choice(["amber", "cedar", "delta", "ember", "fable", "grape",
                                         "harbor", "ivory"]) for _ in range(5))
            det.observe("ns", "10.1.1.1", wire(f"{words}.w.split.example"), 1, 100.0 + i, s)
        assert await a.flush(merge=True)
        assert await b.flush(merge=True)
        assert await a.flush(merge=True)
        # ...but the merged view crosses the client budget.
        pair = a.pair("ns|split.example|10.1.1.1", da._settings(s).geometry)
        local_info = pair.long.totals[Field.INFO]
        assert local_info < s.client_budget_long_bytes <= pair.long.total(Field.INFO)
        name = wire("amber-cedar-ivory-fable.w.split.example")
        v = da.observe("ns", "10.1.1.1", name, 1, 700.0, s)
        assert v is not None, v
        assert "info_budget" in v.reasons, v
        da.quarantine("ns", "split.example", until=10_000.0)
        assert await a.flush(merge=True)
        assert await b.flush(merge=True)
        assert db.quarantined("ns", "split.example", 500.0)
    finally:
        await a.close()
        await b.close()


async def test_redis_outage_falls_back_and_recovers(redis_server) -> None:
    redis_server.flushall()
    # Score every query: a flagged pair otherwise costs a counter and leaves the windows alone.
    s = DetectorSettings(suppress_seconds=0.0)
    state = RedisState(str(redis_server), flush_seconds=3600, hot_flush_seconds=3600, retry_seconds=0.0)
    await state.start()
    det = Detector(state)
    rng = random.Random(9)
    verdicts = 0

    def feed(n: int, t0: float) -> None:
        nonlocal verdicts
        for i in range(n):
            chunk = base64.b32encode(rng.randbytes(30)).decode().rstrip("=").lower()
            if det.observe("ns", "10.2.2.2", wire(f"{chunk}.t.out.example"), 16, t0 + i, s):
                verdicts += 1

    try:
        feed(20, 0.0)
        assert await state.flush(merge=True)
        assert state.backend_in_use == "redis"
        redis_server.stop()
        feed(20, 20.0)  # the query path never awaits Redis: keeps answering
        assert not await state.flush(merge=True)
        assert not await state.flush(merge=True)
        assert state.backend_in_use == "memory"
        assert state.fallbacks == 1
        assert state.errors == 2
        feed(20, 40.0)
        assert verdicts > 0
        redis_server.start()
        assert await state.flush(merge=True)
        assert state.backend_in_use == "redis"
        assert state.recoveries == 1
        feed(5, 60.0)
        assert await state.flush(merge=True)
        client = redis.Redis.from_url(str(redis_server))
        assert list(client.scan_iter("dnsgate:{ns|out.example}:*"))
        client.close()
    finally:
        if not redis_server.running:
            redis_server.start()
        await state.close()


async def test_redis_down_at_start_is_just_an_outage() -> None:
    state = RedisState("redis://127.0.0.1:1/0", retry_seconds=0.0, socket_timeout=0.2)
    await state.start()
    try:
        det = Detector(state)
        assert det.observe("ns", "c", wire("www.example.com"), 1, 1.0, DetectorSettings()) is None
        assert not await state.flush()
        assert state.backend_in_use == "memory"
        assert state.fallbacks == 1
    finally:
        await state.close()


async def test_one_off_domains_cost_no_redis_commands(redis_server: str) -> None:
    """A flood of domains asked once each is decided locally; only pairs with evidence are shared."""
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    state = RedisState(redis_server, prefix="oneoff")
    await state.start()
    try:
        detector = Detector(state)
        s = DetectorSettings(suppress_seconds=0.0)  # every tunnel query reaches the windows
        for i in range(2000):
            detector.observe("ns", "10.0.0.1", wire(f"www.site{i}.example"), 1, 1000.0 + i / 100, s)
        assert await state.flush(merge=True)
        assert client.keys("oneoff:{ns|site*") == []
        rng = random.Random(5)
        for i in range(20):
            chunk = base64.b32encode(rng.randbytes(20)).decode().rstrip("=").lower()
            detector.observe("ns", "10.0.0.1", wire(f"{chunk}.tun.example"), 16, 1030.0 + i, s)
        assert await state.flush(merge=True)
        keys = {k.decode() for k in client.keys("oneoff:*")}
        assert any(k.startswith("oneoff:{ns|tun.example}:n:l:") for k in keys)
        pushed = sum(int(client.hget(k, "new_names") or 0) for k in keys
                     if k.startswith("oneoff:{ns|tun.example}:n:l:"))
        assert pushed == 20  # the whole window, including what came before the pair qualified
    finally:
        await state.close()


def _rotation(rng: random.Random, domains: int, per_domain: int) -> list[tuple[float, bytes]]:
    """One client's channel rotating over rare domains: two 25-character base32 labels a name,
    one name every 10 s (never an encoded-name burst on any one domain)."""
    rows = []
    for d in range(domains):
        for _ in range(per_domain):
            text = base64.b32encode(rng.randbytes(32)).decode().rstrip("=").lower()[:50]
            rows.append((100.0 + 10 * len(rows), wire(f"{text[:25]}.{text[25:]}.rot{d}.example")))
    return rows


async def _first_verdict(replicas: list[tuple[Detector, RedisState]], rows: list[tuple[float, bytes]]) -> int:
    """Queries until the channel's first verdict; the Service alternates replicas, each
    flushing (and merging) every 4 queries as its background task would."""
    s = DetectorSettings()
    for i, (ts, name) in enumerate(rows):
        detector = replicas[i % len(replicas)][0]
        v = detector.observe("ns", "10.1.1.1", name, 1, ts, s)
        if v is not None:
            return i + 1
        if i % 4 == 3:
            for _, other in replicas:
                assert await other.flush(merge=True)
    return len(rows) + 1


async def test_the_all_domain_meters_are_shared_across_replicas(redis_server) -> None:
    """A client rotating its channel over rare domains, spread over two replicas by the
    Service, is charged once, as on one replica: the all-domain meters and the rare-domain
    count are shared like the pairs. Each domain stays far under its own budgets."""
    rows = _rotation(random.Random(9), domains=60, per_domain=12)
    found = []
    for count in (1, 2):
        redis_server.flushall()
        states = [RedisState(str(redis_server), flush_seconds=3600, hot_flush_seconds=3600) for _ in range(count)]
        for state in states:
            await state.start()
        try:
            replicas = [(Detector(state), state) for state in states]
            found.append(await _first_verdict(replicas, rows))
            if count == 2:
                geometry = replicas[0][0]._settings(DetectorSettings()).geometry
                meter = states[0].pair("ns||10.1.1.1|domains", geometry, unique=False)
                assert meter.long.total(Field.INFO) > 1.5 * meter.long.totals[Field.INFO]
                rare = states[0].pair("ns||10.1.1.1", geometry, unique=False)
                assert rare.long.total(Field.NEW_NAMES) > 1.5 * rare.long.totals[Field.NEW_NAMES]
        finally:
            for state in states:
                await state.close()
    one, two = found
    assert one <= len(rows), "the rotation is caught on one replica"
    # The same charged bytes reach the budget either way. What two replicas add: each
    # judges a domain's first names by its own count (a domain's pair is shared from its
    # fourth local new name, so one-off domains cost no Redis command), and a first name
    # pays only beyond spread_free_bytes. Unshared meters needed each replica to fill its own.
    assert two <= 1.4 * one, found
