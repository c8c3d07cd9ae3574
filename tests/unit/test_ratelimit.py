"""Rate-limit stage: token bucket per client, RRL-style slip, one alert per client and window."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resolver import config as config_mod
from resolver.config import ConfigError, Namespace, RateLimit
from resolver.pipeline.alerts import AlertHub, JsonlSink
from resolver.pipeline.identity import PodIdentity, pod_key
from resolver.pipeline.query import Query
from resolver.pipeline.ratelimit import RateLimiter, RateLimitStage
from resolver.wire.message import TC, U16, name_from_text, parse_query

WIRE = U16.pack(0x1234) + bytes.fromhex("0100 0001 0000 0000 0000") + name_from_text("www.allowed.test") + b"\x00\x01\x00\x01"


def query(client: str, now: float, ns: Namespace, transport: str = "udp") -> Query:
    q = Query(WIRE, parse_query(WIRE), client, transport, now)
    q.namespace = ns
    return q


def stage(limit: RateLimit) -> tuple[RateLimitStage, Namespace, io.StringIO, RateLimiter]:
    out = io.StringIO()
    limiter = RateLimiter()
    return RateLimitStage(limiter, AlertHub([JsonlSink(stream=out)], window=60)), Namespace("agents", rate_limit=limit), out, limiter


def test_bucket_allows_burst_then_rate() -> None:
    limiter = RateLimiter()
    allowed = sum(limiter.take("10.0.0.1", 100.0, qps=10, burst=5) is None for _ in range(20))
    assert allowed == 5  # the burst, all at one instant
    # one second later ten more tokens, capped by the burst of five
    allowed = sum(limiter.take("10.0.0.1", 101.0, qps=10, burst=5) is None for _ in range(20))
    assert allowed == 5
    # 0.25 s later: two and a half tokens, so two queries
    allowed = sum(limiter.take("10.0.0.1", 101.25, qps=10, burst=5) is None for _ in range(20))
    assert allowed == 2


def test_clients_have_their_own_buckets() -> None:
    limiter = RateLimiter()
    for _ in range(50):
        limiter.take("10.0.0.1", 0.0, qps=1, burst=2)
    assert limiter.take("10.0.0.2", 0.0, qps=1, burst=2) is None


def test_client_table_is_bounded() -> None:
    limiter = RateLimiter(max_clients=100)
    for i in range(1000):
        limiter.take(f"10.0.{i // 256}.{i % 256}", 0.0, qps=1, burst=1)
    assert len(limiter.buckets) <= 100


def test_slip_two_truncates_every_second_limited_query_and_drops_the_rest() -> None:
    st, ns, _out, limiter = stage(RateLimit(qps=1, burst=3, slip=2))
    replies = [st.resolve(query("10.0.0.1", 50.0, ns)) for _ in range(13)]
    assert replies[:3] == [None, None, None]
    limited = replies[3:]
    assert all(r is not None for r in limited)
    actions = [r.action for r in limited if r is not None]
    assert actions == ["rate_limited", "rate_limited_tc"] * 5
    tc = [r for r in limited if r is not None and r.wire is not None]
    assert len(tc) == 5
    for r in tc:
        assert r.wire is not None
        flags = U16.unpack_from(r.wire, 2)[0]
        assert flags & TC
        assert r.wire[:2] == WIRE[:2]
        assert r.wire[12:] == WIRE[12:]  # the question, so the client can match it
    assert limiter.dropped["agents"] == 5
    assert limiter.slipped["agents"] == 5


def test_slip_zero_drops_all_and_slip_one_truncates_all() -> None:
    st, ns, _out, _ = stage(RateLimit(qps=1, burst=1, slip=0))
    replies = [st.resolve(query("10.0.0.1", 0.0, ns)) for _ in range(5)]
    assert all(r is not None and r.wire is None for r in replies[1:])
    st, ns, _out, _ = stage(RateLimit(qps=1, burst=1, slip=1))
    replies = [st.resolve(query("10.0.0.1", 0.0, ns)) for _ in range(5)]
    assert all(r is not None and r.wire is not None for r in replies[1:])


def test_tcp_and_unlimited_namespaces_pass() -> None:
    st, ns, _out, _ = stage(RateLimit(qps=1, burst=1))
    assert all(st.resolve(query("10.0.0.1", 0.0, ns, "tcp")) is None for _ in range(100))
    st, ns, _out, _ = stage(RateLimit())  # qps 0: off
    assert all(st.resolve(query("10.0.0.1", 0.0, ns)) is None for _ in range(100))


def test_one_alert_per_limited_client_and_window_then_the_count() -> None:
    st, ns, out, _ = stage(RateLimit(qps=1, burst=1, slip=2))
    for i in range(1000):
        st.resolve(query("10.0.0.1", 10.0 + i * 0.001, ns))
    st.resolve(query("10.0.0.2", 10.0, ns))
    st.resolve(query("10.0.0.2", 10.0, ns))
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [(a["kind"], a["client"], a["count"]) for a in lines] == [
        ("rate_limit", "10.0.0.1", 1), ("rate_limit", "10.0.0.2", 1),
    ]
    assert lines[0]["reasons"] == ["rate_limit"]
    assert lines[0]["evidence"]["qps"] == 1.0
    st._alerts.sweep(100.0)
    lines = [json.loads(x) for x in out.getvalue().splitlines()][2:]
    assert len(lines) == 1
    assert lines[0]["client"] == "10.0.0.1"
    assert lines[0]["kind"] == "rate_limit"
    assert lines[0]["count"] > 900  # every later limited query of the window, counted


CONFIG = """\
upstreams: [{address: 127.0.0.1, port: 5400}]
rate_limit: {qps: 100, slip: 3}
namespaces:
  agents:
    clients: [127.0.0.1/32]
    rate_limit: {burst: 500}
  ci:
    clients: [10.0.0.0/8]
"""


def test_config_default_and_per_namespace(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG)
    config = config_mod.load(path)
    assert config.namespaces["agents"].rate_limit == RateLimit(100.0, 500, 3)
    assert config.namespaces["ci"].rate_limit == RateLimit(100.0, 0, 3)


@pytest.mark.parametrize(
    ("snippet", "message"),
    [
        ("rate_limit: {qps: -1}", "c.yaml:2: rate_limit.qps: must be 0 (off) or more"),
        ("rate_limit: {slip: x}", "c.yaml:2: rate_limit.slip: must be an int"),
        ("rate_limit: {rate: 5}", "c.yaml:2: rate_limit.rate: unknown key"),
    ],
)
def test_config_errors_name_line_and_key(tmp_path: Path, snippet: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"upstreams: [{{address: 127.0.0.1, port: 5400}}]\n{snippet}\nnamespaces: {{}}\n")
    with pytest.raises(ConfigError) as err:
        config_mod.load(path)
    assert str(err.value).startswith(str(tmp_path / message.split(":")[0]) + message[len(message.split(":")[0]):])


def test_estimated_names_are_charged_to_their_clients() -> None:
    """Each never-seen name the detector estimated costs its own client one token more."""
    st, ns, _out, limiter = stage(RateLimit(qps=10, burst=100, slip=2))
    q = query("10.0.0.1", 0.0, ns)
    other = query("10.0.0.2", 0.0, ns)
    assert st.resolve(q) is None
    assert st.resolve(other) is None
    st.charge(q, ["10.0.0.1"] * 9)
    assert limiter.buckets["10.0.0.1"].tokens == pytest.approx(100 - 1 - 9)
    # a deferred pair's names estimated now: each client pays for its own
    st.charge(q, ["10.0.0.2", "10.0.0.1"])
    assert limiter.buckets["10.0.0.1"].tokens == pytest.approx(89)
    assert limiter.buckets["10.0.0.2"].tokens == pytest.approx(98)
    st.charge(q, ["10.0.0.1"] * 1000)  # debt is bounded by one burst
    assert limiter.buckets["10.0.0.1"].tokens == -100
    st.charge(q, ["10.9.9.9"])  # a client with no bucket (TCP only, say) has nothing to charge
    assert "10.9.9.9" not in limiter.buckets
    st2, ns2, _o, limiter2 = stage(RateLimit())  # no limit: nothing kept
    q2 = query("10.0.0.1", 0.0, ns2)
    st2.resolve(q2)
    st2.charge(q2, ["10.0.0.1"])
    assert limiter2.buckets == {}


@settings(max_examples=200, deadline=None)
@given(
    qps=st.floats(min_value=0.5, max_value=1000),
    burst=st.integers(min_value=1, max_value=200),
    steps=st.lists(
        st.tuples(st.integers(0, 3), st.floats(min_value=0, max_value=0.5), st.floats(min_value=0, max_value=0.01)),
        max_size=300,
    ),
)
def test_no_client_gets_more_than_burst_plus_rate(qps: float, burst: int, steps: list[tuple[int, float, float]]) -> None:
    """However a client times its queries, whatever the others do and whatever it is charged,
    in any interval [a, b] it is served at most burst + qps x (b - a) queries."""
    limiter = RateLimiter()
    now = 1000.0
    served: dict[str, list[float]] = {}
    for who, gap, cost in steps:
        now += gap
        client = f"10.0.0.{who}"
        if limiter.take(client, now, qps, burst) is None:
            served.setdefault(client, []).append(now)
            limiter.charge(client, cost / 50e-6, burst)
    for times in served.values():
        for i, start in enumerate(times):
            for j in range(i, len(times)):
                assert j - i + 1 <= burst + qps * (times[j] - start) + 1e-6


@settings(max_examples=50, deadline=None)
@given(clients=st.lists(st.integers(0, 2**32 - 1), max_size=500), cap=st.integers(1, 50))
def test_client_table_never_exceeds_its_cap(clients: list[int], cap: int) -> None:
    limiter = RateLimiter(max_clients=cap)
    for c in clients:
        limiter.take(str(c), 0.0, 1.0, 1.0)
        assert len(limiter.buckets) <= cap


def test_limited_clients_are_counted_per_namespace_for_a_minute() -> None:
    """The dnsgate_rate_limited_clients gauge: clients refused a query in the last 60 s."""
    st_, ns, _out, limiter = stage(RateLimit(qps=1, burst=1, slip=0))
    other = Namespace("builds", rate_limit=RateLimit(qps=1, burst=1, slip=0))
    for client, space in (("10.0.0.1", ns), ("10.0.0.2", ns), ("10.0.0.3", other)):
        st_.resolve(query(client, 100.0, space))  # the one token
        assert st_.resolve(query(client, 100.0, space)) is not None  # refused
    st_.resolve(query("10.0.0.4", 100.0, ns))  # within its limit: not counted
    assert limiter.limited_clients(130.0) == {"agents": 2, "builds": 1}
    assert limiter.stats(130.0)["limited_clients"] == {"agents": 2, "builds": 1}
    assert limiter.limited_clients(161.0) == {}  # a minute later nobody is limited any more


def test_only_the_live_server_charges_the_detectors_work() -> None:
    """The live server turns on the detector's record of estimated names (Pipeline.handle
    charges them to the clients' buckets); replay's engine records nothing."""
    from resolver.offline.replay import Replay, replay_config
    from resolver.operations.listeners import Server

    config = replay_config(None)
    server = Server(config)
    assert server.engine.detector.estimated_for == []
    replay = Replay(config, [])
    assert replay.engine.detector.estimated_for is None


def test_a_pod_has_one_bucket_for_all_its_addresses() -> None:
    """A client named as a pod (dual stack: an IPv4 and an IPv6 address) draws on one bucket, the pod's
    (query.owner, as the identity stage sets it); the detector's charges, counted by owner, land there too."""
    dual = PodIdentity("agents", "dual-0", "sa", "u1")
    out = io.StringIO()
    limiter = RateLimiter()
    st_, ns = RateLimitStage(limiter, AlertHub([JsonlSink(stream=out)], window=60)), \
        Namespace("agents", rate_limit=RateLimit(qps=1, burst=4, slip=0))
    passed = []
    for client in ("10.0.0.40", "fd00::40", "10.0.0.40", "fd00::40", "10.0.0.40", "fd00::40"):
        q = query(client, 0.0, ns)
        q.pod = dual
        q.owner = pod_key(dual)
        passed.append(st_.resolve(q) is None)
    assert passed == [True, True, True, True, False, False]
    assert list(limiter.buckets) == [pod_key(dual)]
    q = query("10.0.0.40", 1.0, ns)
    q.pod = dual
    q.owner = pod_key(dual)
    st_.charge(q, [pod_key(dual), pod_key(dual), "10.0.0.99"])  # the pod's two names, and a stranger's
    assert limiter.buckets[pod_key(dual)].tokens == pytest.approx(-2.0)
    assert "10.0.0.99" not in limiter.buckets
