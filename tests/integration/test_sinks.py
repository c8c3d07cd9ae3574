"""Alert sinks against real receivers: an aiohttp webhook, Alertmanager, redis-server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import pytest
import redis.asyncio
from aiohttp import web

from resolver.config import ConfigError
from resolver.config import Sink as SinkSpec
from resolver.operations.sinks import (
    AlertmanagerSink,
    QueuedSink,
    RedisStreamSink,
    WebhookSink,
    build,
    connect_fallbacks,
)
from resolver.pipeline.alerts import Alert, JsonlSink
from tests.support.http_receiver import PostReceiver
from tests.support.observability import (
    Alertmanager,
    free_tcp_port,
    http_get,
    metric_value,
    poll,
    start_alertmanager,
)
from tests.support.redis_server import RedisServer
from tests.support.upstream_servers import ROOT, Unbound, basic_config, free_port, start_dnsgate

pytestmark = pytest.mark.integration


def tunnel_alert(domain: str = "exfil.example", namespace: str = "agents", ts: float | None = None) -> Alert:
    return Alert(
        ts=time.time() if ts is None else ts,
        kind="tunnel",
        severity="high",
        namespace=namespace,
        client="10.1.2.3",
        qname=f"mzxw6ytboi2dcmrt.{domain}",
        qtype="TXT",
        domain=domain,
        reasons=["entropy", "label_length"],
        action="quarantined",
        evidence={"entropy": 4.1, "label_length": 52},
    )


def spec(kind: str, **options: Any) -> SinkSpec:
    return SinkSpec(kind, options, "dnsgate.yaml", 12)


async def until(check: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout}s")
        await asyncio.sleep(0.02)


class Receiver(PostReceiver):
    """An aiohttp HTTP server recording POSTs; ``statuses`` are answered in turn, then 200."""

    path = "/hook"

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, text="ok")


async def running(sink: QueuedSink, body: Callable[[QueuedSink], Awaitable[None]]) -> None:
    await sink.start()
    try:
        await body(sink)
    finally:
        await sink.close()


# -- webhook -----------------------------------------------------------------


async def test_webhook_posts_the_alert_object_with_bearer_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DNSGATE_TEST_TOKEN", "s3cret")
    async with Receiver() as receiver:
        sink = build(spec("webhook", url=receiver.url, bearer_token_env="DNSGATE_TEST_TOKEN",
                          headers={"X-Team": "soc"}))
        assert isinstance(sink, WebhookSink)
        alert = tunnel_alert()

        async def body(s: QueuedSink) -> None:
            s.submit(alert)
            await until(lambda: s.delivered == 1, what="webhook delivery")

        await running(sink, body)
    headers, payload = receiver.requests[0]
    assert headers["Authorization"] == "Bearer s3cret"
    assert headers["X-Team"] == "soc"
    assert headers["Content-Type"] == "application/json"
    assert json.loads(payload) == alert.to_dict()
    assert (sink.retried, sink.dropped) == (0, 0)


async def test_webhook_retries_server_errors_with_backoff() -> None:
    async with Receiver() as receiver:
        receiver.statuses = [503, 500]
        sink = build(spec("webhook", url=receiver.url, retries=3, backoff=0.05))
        assert isinstance(sink, QueuedSink)

        async def body(s: QueuedSink) -> None:
            s.submit(tunnel_alert())
            await until(lambda: s.delivered == 1, what="delivery after retries")

        await running(sink, body)
    assert len(receiver.requests) == 3
    assert (sink.retried, sink.dropped) == (2, 0)


async def test_webhook_client_error_is_dropped_without_retry(caplog: pytest.LogCaptureFixture) -> None:
    async with Receiver() as receiver:
        receiver.statuses = [400]
        sink = build(spec("webhook", url=receiver.url, retries=3, backoff=0.05))
        assert isinstance(sink, QueuedSink)

        async def body(s: QueuedSink) -> None:
            s.submit(tunnel_alert())
            await until(lambda: s.dropped == 1, what="drop")

        with caplog.at_level(logging.WARNING, "dnsgate.sinks"):
            await running(sink, body)
    assert len(receiver.requests) == 1
    assert sink.retried == 0
    assert "HTTP 400" in caplog.text


async def test_close_finishes_the_batch_being_retried() -> None:
    async with Receiver() as receiver:
        receiver.statuses = [503]
        sink = build(spec("webhook", url=receiver.url, retries=2, backoff=0.3))
        assert isinstance(sink, QueuedSink)
        await sink.start()
        sink.submit(tunnel_alert())
        await until(lambda: len(receiver.requests) == 1, what="first attempt")
        await sink.close()  # during the backoff: the retry still happens within the grace period
    assert (sink.delivered, sink.retried, sink.dropped) == (1, 1, 0)


async def test_receiver_down_drops_are_counted_and_submit_never_blocks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead = free_tcp_port()
    sink = build(spec("webhook", url=f"http://127.0.0.1:{dead}/hook", queue_size=2, retries=1, backoff=0.05))
    assert isinstance(sink, QueuedSink)
    connect_fallbacks([sink])  # no jsonl sink: drops are logged, their count and one of them
    alerts = [tunnel_alert(f"d{i}.example") for i in range(10)]

    async def body(s: QueuedSink) -> None:
        for alert in alerts:
            assert s.submit(alert) is None  # a plain call, never awaited: the server never waits on a sink
        assert s.dropped >= 7  # the queue holds two (one may already be in flight)
        await until(lambda: s.dropped == 10, what="every alert dropped")

    with caplog.at_level(logging.WARNING, "dnsgate.sinks"):
        await running(sink, body)
    assert sink.delivered == 0
    assert sink.retried >= 1
    spilled = [r.getMessage() for r in caplog.records if "not delivered" in r.getMessage()]
    # The first drop is written at once, the other nine when the sink closes: two lines, not ten.
    assert len(spilled) == 2
    counts = [int(m.split()[0]) for m in spilled]
    assert counts == [1, 9]
    assert all('"domain":"d' in m and "sink webhook" in m for m in spilled)


def test_with_a_jsonl_sink_drops_are_not_duplicated_in_the_log(tmp_path: Path) -> None:
    remote = build(spec("webhook", url="http://127.0.0.1:9/hook"))
    jsonl = JsonlSink(str(tmp_path / "alerts.jsonl"))
    other = build(spec("webhook", url="http://127.0.0.1:9/other"))
    connect_fallbacks([jsonl, remote, other])
    assert isinstance(remote, QueuedSink)
    assert remote.spill is None
    assert (remote.name, other.name) == ("webhook", "webhook2")


# -- Alertmanager --------------------------------------------------------------


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Alertmanager]:
    am = start_alertmanager(tmp_path_factory.mktemp("alertmanager"))
    yield am
    am.stop()


async def test_alertmanager_receives_a_tunnel_alert(alertmanager: Alertmanager) -> None:
    sink = build(spec("alertmanager", url=alertmanager.base, resolve_after=600, labels={"cluster": "lab"}))
    assert isinstance(sink, AlertmanagerSink)
    alert = tunnel_alert("am-tunnel.example", namespace="ci")

    async def body(s: QueuedSink) -> None:
        s.submit(alert)
        await until(lambda: s.delivered == 1, what="alertmanager delivery")

    await running(sink, body)

    def found() -> list[dict[str, Any]]:
        return [a for a in alertmanager.alerts() if a["labels"].get("domain") == "am-tunnel.example"]

    held = poll(found, what="alert in Alertmanager")[0]
    assert held["labels"] == {
        "alertname": "DNSTunnel", "namespace": "ci", "domain": "am-tunnel.example",
        "severity": "high", "cluster": "lab",
    }
    assert held["annotations"]["reasons"] == "entropy,label_length"
    assert json.loads(held["annotations"]["evidence"]) == {"entropy": 4.1, "label_length": 52}
    assert held["annotations"]["client"] == "10.1.2.3"
    assert held["status"]["state"] == "active"
    ends = datetime.fromisoformat(held["endsAt"].replace("Z", "+00:00")).timestamp()
    assert alert.ts + 590 < ends < alert.ts + 610


async def test_alertmanager_resolves_by_ends_at(alertmanager: Alertmanager) -> None:
    sink = build(spec("alertmanager", url=alertmanager.base, resolve_after=1))
    assert isinstance(sink, QueuedSink)
    old = tunnel_alert("am-old.example", ts=time.time() - 30)

    async def body(s: QueuedSink) -> None:
        s.submit(old)
        await until(lambda: s.delivered == 1, what="alertmanager delivery")

    await running(sink, body)
    status, raw = http_get(alertmanager.base + "/api/v2/alerts?active=true")
    assert status == 200
    assert not [a for a in json.loads(raw) if a["labels"].get("domain") == "am-old.example"]


# -- Redis stream -----------------------------------------------------------


async def test_redis_stream_xadd_with_approximate_maxlen(redis_server: RedisServer) -> None:
    stream = f"dnsgate:test:{time.monotonic_ns()}"
    sink = build(spec("redis_stream", url=redis_server.url, stream=stream, maxlen=10, batch_size=50))
    assert isinstance(sink, RedisStreamSink)
    alerts = [tunnel_alert(f"r{i}.example") for i in range(300)]

    async def body(s: QueuedSink) -> None:
        for alert in alerts:
            s.submit(alert)
        await until(lambda: s.delivered == 300, what="300 XADDs")

    await running(sink, body)
    client = redis.asyncio.from_url(redis_server.url, decode_responses=True)
    try:
        length = await client.xlen(stream)
        assert 10 <= length < 300  # approximate trimming keeps at least MAXLEN
        [(_, fields)] = await client.xrevrange(stream, count=1)
    finally:
        await client.aclose()
    assert fields["domain"] == "r299.example"
    assert fields["kind"] == "tunnel"
    assert json.loads(fields["reasons"]) == ["entropy", "label_length"]
    assert json.loads(fields["evidence"]) == {"entropy": 4.1, "label_length": 52}


async def test_redis_down_drops_are_counted() -> None:
    sink = build(spec("redis_stream", url=f"redis://127.0.0.1:{free_tcp_port()}/0", retries=1,
                      backoff=0.05, timeout=0.5))
    assert isinstance(sink, QueuedSink)
    connect_fallbacks([sink, JsonlSink(stream=_Null())])

    async def body(s: QueuedSink) -> None:
        for i in range(5):
            s.submit(tunnel_alert(f"x{i}.example"))
        await until(lambda: s.dropped == 5, what="drops")

    await running(sink, body)
    assert sink.delivered == 0


class _Null:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        return None


# -- validation --------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "options", "key", "message"),
    [
        ("webhook", {}, "alerts[webhook].url", "is required"),
        ("webhook", {"url": "ftp://x/"}, "alerts[webhook].url", "must be a http or https URL"),
        ("webhook", {"url": "http://h/", "retry": 2}, "alerts[webhook].retry", "unknown key"),
        ("webhook", {"url": "http://h/", "bearer_token_env": "DNSGATE_UNSET_VAR"},
         "alerts[webhook].bearer_token_env", "DNSGATE_UNSET_VAR is unset"),
        ("webhook", {"url": "http://h/", "headers": {"X": [1]}}, "alerts[webhook].headers.X", "string"),
        ("alertmanager", {"url": "http://h", "resolve_after": 0}, "alerts[alertmanager].resolve_after",
         "greater than 0"),
        ("redis_stream", {"maxlen": "big"}, "alerts[redis_stream].maxlen", "must be an int"),
        ("redis_stream", {"retries": -1}, "alerts[redis_stream].retries", "0 or more"),
        ("redis_stream", {"queue_size": True}, "alerts[redis_stream].queue_size", "must be a number"),
    ],
)
def test_bad_options_name_file_line_and_key(kind: str, options: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        build(spec(kind, **options))
    assert (err.value.path, err.value.line, err.value.key) == ("dnsgate.yaml", 12, key)
    assert message in err.value.message


def test_serve_refuses_a_bad_sink_with_file_line_and_key(tmp_path: Path) -> None:
    config = tmp_path / "dnsgate.yaml"
    text = basic_config(free_port(), free_port()).replace(
        "  - {type: jsonl, path: alerts.jsonl}\n",
        "  - {type: jsonl, path: alerts.jsonl}\n  - {type: webhook, url: 'gopher://nowhere'}\n",
    )
    config.write_text(text)
    line = text.splitlines().index("  - {type: webhook, url: 'gopher://nowhere'}") + 1
    out = subprocess.run(
        [sys.executable, "-m", "resolver.cli", "serve", "--config", str(config)],
        capture_output=True, text=True, timeout=30, cwd=ROOT, check=False,
    )
    assert out.returncode == 2
    assert f"{config}:{line}: alerts[webhook].url: must be a http or https URL" in out.stderr


# -- through dnsgate ---------------------------------------------------------


def test_dead_webhook_leaves_dns_answers_alone(unbound_upstream: Unbound, tmp_path: Path) -> None:
    port, admin_port, dead = free_port(), free_tcp_port(), free_tcp_port()
    text = basic_config(port, unbound_upstream.port).replace(
        "  - {type: jsonl, path: alerts.jsonl}\n",
        "  - {type: jsonl, path: alerts.jsonl}\n"
        f"  - {{type: webhook, url: 'http://127.0.0.1:{dead}/hook', queue_size: 4, retries: 1,"
        " backoff: 0.05}\n",
    ) + f"admin: {{address: 127.0.0.1, port: {admin_port}}}\n"
    server = start_dnsgate(text, tmp_path, port)
    try:
        slowest = 0.0
        # 20 names: the per-client bound of alert lines in a window (more would be folded into one).
        for i in range(20):
            started = time.monotonic()
            denied = dns.query.udp(dns.message.make_query(f"n{i}.denied.test", "A"), "127.0.0.1", port=port,
                                   timeout=2)
            allowed = dns.query.udp(dns.message.make_query("www.allowed.test", "A"), "127.0.0.1", port=port,
                                    timeout=2)
            slowest = max(slowest, time.monotonic() - started)
            assert denied.rcode() == dns.rcode.NXDOMAIN
            assert allowed.rcode() == dns.rcode.NOERROR
        assert slowest < 0.5

        def dropped() -> float | None:
            _status, body = http_get(f"http://127.0.0.1:{admin_port}/metrics")
            value = metric_value(body.decode(), "dnsgate_alerts_dropped_total", sink="webhook")
            return value if value == 20 else None

        assert poll(dropped, what="20 webhook drops counted") == 20
        # Nothing lost: the jsonl sink holds every alert the webhook could not deliver.
        names = {a["qname"] for a in server.alerts()}
        assert {f"n{i}.denied.test" for i in range(20)} <= names
    finally:
        assert server.stop() == 0


def test_dnsgate_policy_alert_reaches_alertmanager(
    unbound_upstream: Unbound, alertmanager: Alertmanager, tmp_path: Path
) -> None:
    port = free_port()
    text = basic_config(port, unbound_upstream.port).replace(
        "  - {type: jsonl, path: alerts.jsonl}\n",
        f"  - {{type: alertmanager, url: '{alertmanager.base}', batch_size: 8}}\n",
    )
    server = start_dnsgate(text, tmp_path, port)
    try:
        reply = dns.query.udp(dns.message.make_query("leak.denied.test", "A"), "127.0.0.1", port=port, timeout=2)
        assert reply.rcode() == dns.rcode.NXDOMAIN

        def found() -> list[dict[str, Any]]:
            return [
                a for a in alertmanager.alerts()
                if a["labels"].get("alertname") == "DNSPolicyDenied" and a["annotations"].get("qname") == "leak.denied.test"
            ]

        held = poll(found, what="policy alert in Alertmanager")[0]
        assert held["labels"]["namespace"] == "agents"
        assert held["labels"]["domain"] == "denied.test"
        assert held["labels"]["severity"] == "warning"
        assert held["annotations"]["reasons"] == "not_allowed"
    finally:
        assert server.stop() == 0


# -- a flooding client and a victim, through dnsgate ------------------------------------

ATTACKER = "127.0.0.2"
VICTIM = "127.0.0.3"
_BASE32 = "abcdefghijklmnopqrstuvwxyz234567"


class SlowReceiver(PostReceiver):
    """A webhook receiver taking 50 ms per POST; keeps (arrival time, alert) of each."""

    path = "/hook"

    def __init__(self) -> None:
        super().__init__()
        self.alerts: list[tuple[float, dict[str, Any]]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        await asyncio.sleep(0.05)
        self.alerts.append((time.monotonic(), json.loads(body)))
        return web.Response(text="ok")


def tunnel_names(tag: str, domains: int, per_domain: int, seed: int) -> list[bytes]:
    """Wire queries of a base32 tunnel: ``per_domain`` TXT names under each of ``domains`` fresh domains."""
    import random

    rng = random.Random(seed)
    out = []
    for i in range(domains):
        domain = f"{tag}{i}x{rng.randrange(10**9)}"
        for _ in range(per_domain):
            label = "".join(rng.choice(_BASE32) for _ in range(50))
            query = dns.message.make_query(f"{label}.{label[:40][::-1]}.{domain}.com", "TXT")
            out.append(query.to_wire())
    return out


def blast(port: int, sources: list[str], queries: list[bytes], seconds: float) -> None:
    """Send ``queries`` round-robin from ``sources`` over about ``seconds``, not waiting for answers."""
    import socket

    socks = []
    for source in sources:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((source, 0))
        sock.setblocking(False)
        socks.append(sock)
    try:
        step = 64
        pause = seconds / max(1, len(queries) / step)
        for start in range(0, len(queries), step):
            for i, wire in enumerate(queries[start:start + step], start):
                with contextlib.suppress(BlockingIOError):
                    socks[(i // 8) % len(socks)].sendto(wire, ("127.0.0.1", port))
            time.sleep(pause)
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.parametrize("attackers", [1, 25], ids=["one-address", "25-addresses"])
async def test_a_flooding_client_cannot_crowd_another_clients_tunnel_alert_out_of_a_webhook(
    unbound_upstream: Unbound, tmp_path: Path, attackers: int,
) -> None:
    """One client raises a tunnel alert per fresh domain (thousands of them) while a slow
    webhook takes 50 ms a POST; another client's tunnel, begun during the flood, reaches the
    webhook within seconds. Every alert is in the jsonl file, every domain quarantined."""
    sources = [ATTACKER] if attackers == 1 else [f"127.0.1.{i}" for i in range(1, attackers + 1)]
    port, admin_port = free_port(), free_tcp_port()
    async with SlowReceiver() as receiver:
        text = f"""
listen:
  - {{address: 127.0.0.1, port: {port}}}
upstreams:
  - {{address: 127.0.0.1, port: {unbound_upstream.port}}}
unknown_clients: refuse
policy_alert_window: 3
alerts:
  - {{type: jsonl, path: alerts.jsonl}}
  - {{type: webhook, url: '{receiver.url}', queue_size: 200, retries: 0, timeout: 2}}
admin: {{address: 127.0.0.1, port: {admin_port}}}
detection: {{mode: enforce}}
namespaces:
  agents:
    clients: [127.0.0.0/8]
    mode: enforce
    allow: [www.allowed.test]
"""
        server = await asyncio.to_thread(start_dnsgate, text, tmp_path, port)
        try:
            flood = tunnel_names("decoy", 1200, 8, seed=1)
            attack = asyncio.create_task(asyncio.to_thread(blast, port, sources, flood, 4.0))

            def flooded() -> bool:
                return sum(1 for a in server.alerts() if a["kind"] == "tunnel" and a["client"] != VICTIM) >= 300

            await until(flooded, 10, "300 tunnel alerts from the flood")
            await asyncio.to_thread(blast, port, [VICTIM], tunnel_names("victim", 1, 12, seed=2), 0.05)
            sent = time.monotonic()
            assert not attack.done()  # the flood goes on meanwhile

            def victim_alert() -> float | None:
                return next((at for at, a in receiver.alerts if a["client"] == VICTIM and a["kind"] == "tunnel"),
                            None)

            with contextlib.suppress(TimeoutError):
                await until(lambda: victim_alert() is not None, 15, "the victim's tunnel alert at the webhook")
            [victim_local] = [a for a in server.alerts() if a["client"] == VICTIM and a["kind"] == "tunnel"]
            arrived = victim_alert()
            assert arrived is not None, "the victim's tunnel alert never reached the webhook"
            assert arrived - sent < 3.0, f"the victim's tunnel alert reached the webhook {arrived - sent:.1f}s late"
            assert victim_local["severity"] in ("high", "critical")
            await attack

            # Every domain alerted is quarantined: only the alert text is folded, not the decision.
            local = [a for a in server.alerts() if a["kind"] == "tunnel"]
            flagged = {a["domain"] for a in local}
            assert len(flagged) > 600

            def metrics() -> str:
                return http_get(f"http://127.0.0.1:{admin_port}/metrics")[1].decode()

            assert metric_value(metrics(), "dnsgate_quarantines_active") == len(flagged)
            if attackers == 1:
                # Nothing lost: once the last window has closed, the webhook's tunnel alerts
                # (one by one, then an aggregate with the count) add up to the jsonl file's.
                def added_up() -> bool:
                    remote = sum(a["count"] for _, a in receiver.alerts if a["kind"] == "tunnel")
                    return remote == len(local)

                await until(added_up, 15, "the webhook's tunnel counts adding up to the jsonl lines")
                assert metric_value(metrics(), "dnsgate_alerts_dropped_by_severity_total", sink="webhook",
                                    severity="high") == 0
                aggregates = [a for _, a in receiver.alerts if a["kind"] == "tunnel" and "alerts_folded" in a["evidence"]]
                assert aggregates
                assert metric_value(metrics(), "dnsgate_alerts_folded_total", kind="tunnel") == sum(
                    a["count"] for a in aggregates)
        finally:
            assert await asyncio.to_thread(server.stop) == 0
