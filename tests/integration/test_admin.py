"""The admin HTTP server of a real dnsgate process: metrics, probes, reload, and a real Prometheus."""

from __future__ import annotations

import base64
import json
import random
import signal
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from tests.support.harness import ask
from tests.support.observability import (
    free_tcp_port,
    http_get,
    http_post,
    metric_value,
    poll,
    start_prometheus,
)
from tests.support.upstream_servers import Dnsgate, Unbound, basic_config, free_port, start_dnsgate

pytestmark = pytest.mark.integration

ADMIN_TOKEN = "admin-test-token"


def with_admin(text: str, admin_port: int) -> str:
    return text + f"admin: {{address: 127.0.0.1, port: {admin_port}}}\n"


class Gate:
    def __init__(self, dnsgate: Dnsgate, admin_port: int, upstream_port: int) -> None:
        self.dnsgate = dnsgate
        self.upstream = f"127.0.0.1:{upstream_port}"
        self.port = dnsgate.port
        self.admin = f"http://127.0.0.1:{admin_port}"
        self.admin_port = admin_port

    def metrics(self) -> str:
        status, body = http_get(self.admin + "/metrics")
        assert status == 200
        return body.decode()

    def value(self, name: str, **labels: str) -> float | None:
        return metric_value(self.metrics(), name, **labels)


@pytest.fixture(scope="module")
def gate(unbound_upstream: Unbound, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gate]:
    port, admin_port = free_port(), free_tcp_port()
    workdir = tmp_path_factory.mktemp("admin")
    text = with_admin(basic_config(port, unbound_upstream.port), admin_port)
    server = start_dnsgate(text, workdir, port, env={"DNSGATE_ADMIN_TOKEN": ADMIN_TOKEN})
    poll(lambda: _up(admin_port), what="admin HTTP up")
    yield Gate(server, admin_port, unbound_upstream.port)
    assert server.stop() == 0


def _up(port: int) -> bool:
    try:
        return http_get(f"http://127.0.0.1:{port}/healthz", timeout=0.5)[0] == 200
    except OSError:
        return False


def test_probes(gate: Gate) -> None:
    assert http_get(gate.admin + "/healthz") == (200, b"ok\n")
    assert http_get(gate.admin + "/readyz") == (200, b"ready\n")
    assert http_get(gate.admin + "/nothing")[0] == 404


def test_metrics_count_queries_with_bounded_labels(gate: Gate) -> None:
    assert ask(gate.port, "www.allowed.test").rcode() == dns.rcode.NOERROR
    assert ask(gate.port, "www.allowed.test").rcode() == dns.rcode.NOERROR  # cached
    assert ask(gate.port, "secret-name.denied.test").rcode() == dns.rcode.NXDOMAIN
    assert ask(gate.port, "secret-name.denied.test", "NAPTR").rcode() == dns.rcode.NXDOMAIN
    text = gate.metrics()
    assert metric_value(text, "dnsgate_queries_total", namespace="agents", action="allowed", qtype="A")
    assert metric_value(text, "dnsgate_queries_total", namespace="agents", action="denied", qtype="A")
    # An uncommon query type folds into "other"; a query name is never a label.
    assert metric_value(text, "dnsgate_queries_total", namespace="agents", action="denied", qtype="other")
    assert "NAPTR" not in text
    assert "secret-name" not in text
    assert "denied.test" not in text
    nxdomain = metric_value(text, "dnsgate_responses_total", rcode="NXDOMAIN")
    assert nxdomain is not None
    assert nxdomain >= 2
    assert (metric_value(text, "dnsgate_cache_hits_total") or 0) >= 1
    assert (metric_value(text, "dnsgate_cache_entries") or 0) >= 1
    upstream = gate.upstream
    assert (metric_value(text, "dnsgate_upstream_latency_seconds_count", upstream=upstream) or 0) >= 1
    assert metric_value(text, "dnsgate_upstream_healthy", upstream=upstream) == 1.0
    assert metric_value(text, "dnsgate_state_backend", backend="memory") == 1.0
    # Never-seen names of quiet domains paid only the detector's cheap counters.
    assert (metric_value(text, "dnsgate_detector_queries_total", tier="deferred") or 0) >= 2
    assert metric_value(text, "dnsgate_detector_queries_total", tier="decided") == 0
    policy = metric_value(text, "dnsgate_policy_alerts_total", namespace="agents", action="blocked")
    assert policy is not None
    assert policy >= 1
    assert (metric_value(text, "dnsgate_alerts_delivered_total", sink="jsonl") or 0) >= 1
    assert metric_value(text, "dnsgate_config_generation") is not None
    # The collector's pauses, per generation (none may have run yet: the series exist).
    for generation in ("0", "1", "2"):
        assert metric_value(text, "dnsgate_gc_pause_seconds_count", generation=generation) is not None
        assert metric_value(text, "dnsgate_gc_longest_pause_seconds", generation=generation) is not None


def test_latency_histogram_is_not_lost_between_scrapes(gate: Gate) -> None:
    upstream = gate.upstream
    before = gate.value("dnsgate_upstream_latency_seconds_count", upstream=upstream) or 0
    assert ask(gate.port, "api.allowed.test", "AAAA").rcode() == dns.rcode.NOERROR
    after = gate.value("dnsgate_upstream_latency_seconds_count", upstream=upstream) or 0
    assert after == before + 1
    assert gate.value("dnsgate_upstream_latency_seconds_count", upstream=upstream) == after


def test_post_reload_bumps_generation(gate: Gate) -> None:
    before = gate.value("dnsgate_config_generation")
    assert before is not None
    status, body = http_post(gate.admin + "/reload", token=ADMIN_TOKEN)
    assert status == 200
    result = json.loads(body)
    assert result == {"ok": True, "generation": before + 1, "error": ""}
    assert gate.value("dnsgate_config_generation") == before + 1
    assert gate.value("dnsgate_reloads_total", result="ok") is not None
    assert http_get(gate.admin + "/reload")[0] == 405


def test_post_reload_asks_who_is_calling(gate: Gate) -> None:
    before = gate.value("dnsgate_config_generation")
    url = gate.admin + "/reload"
    assert http_post(url)[0] == 401  # no credentials
    assert http_post(url, token="not-" + ADMIN_TOKEN)[0] == 401
    # A page on another site posting through the user's browser: the token is not enough.
    status, body = http_post(url, token=ADMIN_TOKEN, headers={"Origin": "http://attacker.example"})
    assert status == 403
    assert b"Origin" in body
    # DNS rebinding: the browser thinks it talks to attacker.example, which now resolves here.
    status, body = http_post(url, token=ADMIN_TOKEN, headers={"Host": f"attacker.example:{gate.admin_port}"})
    assert status == 403
    assert b"Host" in body
    assert http_post(url, token=ADMIN_TOKEN, headers={"Host": f"127.0.0.1:{gate.admin_port + 1}"})[0] == 403
    assert gate.value("dnsgate_config_generation") == before  # nothing refused was applied
    same_origin = {"Origin": f"http://127.0.0.1:{gate.admin_port}"}
    assert http_post(url, token=ADMIN_TOKEN, headers=same_origin)[0] == 200
    assert gate.value("dnsgate_config_generation") == (before or 0) + 1
    # Probes and metrics stay open.
    assert http_get(gate.admin + "/healthz")[0] == 200
    assert http_get(gate.admin + "/readyz")[0] == 200


def test_reload_without_a_token_is_refused_and_sighup_still_works(
    unbound_upstream: Unbound, tmp_path: Path
) -> None:
    port, admin_port = free_port(), free_tcp_port()
    text = with_admin(basic_config(port, unbound_upstream.port), admin_port)
    server = start_dnsgate(text, tmp_path, port, env={"DNSGATE_ADMIN_TOKEN": ""})
    try:
        poll(lambda: _up(admin_port), what="admin HTTP up")
        status, body = http_post(f"http://127.0.0.1:{admin_port}/reload", token="anything")
        assert status == 403
        assert b"no admin token" in body
        server.proc.send_signal(signal.SIGHUP)
        poll(lambda: metric_value(http_get(f"http://127.0.0.1:{admin_port}/metrics")[1].decode(),
                                  "dnsgate_config_generation") == 1.0, what="SIGHUP reload")
    finally:
        assert server.stop() == 0


def test_token_file_is_read_relative_to_the_config(unbound_upstream: Unbound, tmp_path: Path) -> None:
    port, admin_port = free_port(), free_tcp_port()
    (tmp_path / "admin.token").write_text("from-a-file\n")
    text = basic_config(port, unbound_upstream.port) + (
        f"admin: {{address: 127.0.0.1, port: {admin_port}, token_file: admin.token}}\n")
    server = start_dnsgate(text, tmp_path, port, env={"DNSGATE_ADMIN_TOKEN": ""})
    try:
        poll(lambda: _up(admin_port), what="admin HTTP up")
        assert http_post(f"http://127.0.0.1:{admin_port}/reload", token="from-a-file")[0] == 200
    finally:
        assert server.stop() == 0


def test_prometheus_scrapes_dnsgate(gate: Gate, tmp_path: Path) -> None:
    for _ in range(3):
        ask(gate.port, "scraped.denied.test")
    prometheus = start_prometheus(tmp_path, [f"127.0.0.1:{gate.admin_port}"])
    try:
        promql = 'dnsgate_queries_total{namespace="agents",action="denied",qtype="A"}'
        result = poll(lambda: prometheus.query(promql), timeout=30, what="series in Prometheus")
        assert result[0]["metric"]["job"] == "dnsgate"
        assert float(result[0]["value"][1]) >= 3
        up = poll(lambda: prometheus.query('up{job="dnsgate"} == 1'), timeout=30, what="target up")
        assert up[0]["metric"]["instance"] == f"127.0.0.1:{gate.admin_port}"
    finally:
        prometheus.stop()


@pytest.mark.usefixtures("unbound_upstream")
def test_readyz_fails_without_a_healthy_upstream(tmp_path: Path) -> None:
    port, admin_port, dead = free_port(), free_tcp_port(), free_port()
    text = with_admin(basic_config(port, dead, servfail_after="0.6", upstream_timeout="0.2"), admin_port)
    server = start_dnsgate(text, tmp_path, port, probe="denied.test")
    try:
        base = f"http://127.0.0.1:{admin_port}"
        poll(lambda: _up(admin_port), what="admin HTTP up")
        assert http_get(base + "/readyz")[0] == 200  # healthy until proven otherwise

        def unready() -> bool:
            ask(port, "www.allowed.test")  # SERVFAIL: each one is an upstream failure
            return http_get(base + "/readyz")[0] == 503

        poll(unready, timeout=20, what="readyz 503")
        status, body = http_get(base + "/readyz")
        assert (status, body) == (503, b"not ready: no healthy upstream\n")
        assert http_get(base + "/healthz")[0] == 200
        assert metric_value(http_get(base + "/metrics")[1].decode(), "dnsgate_ready") == 0.0
    finally:
        assert server.stop() == 0


def test_tunnel_alerts_and_quarantines_are_counted(unbound_upstream: Unbound, tmp_path: Path) -> None:
    port, admin_port = free_port(), free_tcp_port()
    text = with_admin(basic_config(port, unbound_upstream.port), admin_port) + "detection: {mode: enforce}\n"
    server = start_dnsgate(text, tmp_path, port)
    try:
        rng = random.Random(5)
        for _ in range(60):  # base32 chunks of 35 random bytes: an exfiltration channel
            chunk = base64.b32encode(rng.randbytes(35)).decode().rstrip("=").lower()
            ask(port, f"{chunk[:50]}.{chunk[50:]}.t.exfil.test", "TXT")
        text = http_get(f"http://127.0.0.1:{admin_port}/metrics")[1].decode()
        assert (metric_value(text, "dnsgate_tunnel_alerts_total", namespace="agents", reason="entropy") or 0) >= 1
        assert metric_value(text, "dnsgate_quarantines_active") == 1.0
        quarantined = metric_value(text, "dnsgate_queries_total", namespace="agents", action="quarantined",
                                   qtype="TXT")
        assert quarantined is not None
        assert quarantined >= 1
        assert "exfil" not in text
    finally:
        assert server.stop() == 0
