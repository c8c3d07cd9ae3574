"""The Grafana dashboard: every query it runs, run by a real Prometheus scraping a real dnsgate.

Grafana cannot be installed here, so the dashboard JSON is checked the way
Grafana would use it: its template variables are expanded as Grafana expands
them, each panel's PromQL goes to Prometheus' HTTP API and must return data,
and each variable's ``label_values`` query goes to the label values API. The
same Prometheus evaluates deploy/prometheus/dnsgate-rules.yaml, so the
alerting rules are seen firing on a live dnsgate too.

dnsgate here uses a real redis-server for its state, a real Unbound upstream,
detection in enforce mode, and gets allowed, cached, denied and tunnelling
traffic.
"""

from __future__ import annotations

import base64
import json
import math
import random
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dns.message
import pytest

from tests.support.harness import ask, free_port
from tests.support.observability import Prometheus, http_get, poll, start_prometheus
from tests.support.redis_server import RedisServer
from tests.support.upstream_servers import ROOT, Dnsgate, Unbound, basic_config, start_dnsgate

pytestmark = pytest.mark.integration

DASHBOARD = ROOT / "deploy" / "grafana" / "dnsgate.json"
RULES = ROOT / "deploy" / "prometheus" / "dnsgate-rules.yaml"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def exfiltrate(port: int, domain: str, seed: int, count: int = 60) -> None:
    """Base32 chunks of random bytes as TXT queries: what an exfiltration channel sends."""
    rng = random.Random(seed)
    for _ in range(count):
        chunk = base64.b32encode(rng.randbytes(35)).decode().rstrip("=").lower()
        ask(port, f"{chunk[:50]}.{chunk[50:]}.{domain}", "TXT")


def flood_queries(port: int, source: str, count: int) -> None:
    """``count`` queries from ``source`` at once, not waiting for answers (most are dropped)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        for i in range(count):
            sock.sendto(dns.message.make_query(f"n{i}.flood.test", "A").to_wire(), ("127.0.0.1", port))


@dataclass
class Observed:
    dnsgate: Dnsgate
    prometheus: Prometheus
    instance: str

    def scalar(self, promql: str) -> float:
        result = self.prometheus.query(promql)
        return float(result[0]["value"][1]) if result else math.nan


@pytest.fixture(scope="module")
def observed(
    unbound_upstream: Unbound, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Observed]:
    workdir = tmp_path_factory.mktemp("dashboard")
    port, admin_port = free_port(), free_port()
    flood = "  flood:\n    clients: [127.0.0.2/32]\n    mode: enforce\n    rate_limit: {qps: 5, burst: 5}\n"
    config = basic_config(port, unbound_upstream.port, extra_namespaces=flood) + (
        f"admin: {{address: 127.0.0.1, port: {admin_port}}}\n"
        "detection: {mode: enforce}\n"
        f"state: {{backend: redis, url: \"{redis_server}\"}}\n"
    )
    gate = start_dnsgate(config, workdir, port)
    instance = f"127.0.0.1:{admin_port}"
    prometheus = start_prometheus(workdir, [instance], rule_files=[RULES])
    try:
        view = Observed(gate, prometheus, instance)
        poll(lambda: prometheus.query('up{job="dnsgate"} == 1'), 30, "first scrape")
        for name in ("www.allowed.test", "www.allowed.test", "api.allowed.test"):
            ask(port, name)  # forwarded, then cached
        ask(port, "not-on-the-list.denied.test")
        exfiltrate(port, "exfil.test", seed=1)
        poll(lambda: view.scalar("sum(dnsgate_tunnel_alerts_total)") > 0, 30, "tunnel alerts scraped")
        first = view.scalar("sum(dnsgate_tunnel_alerts_total)")
        # A second channel after a scrape: the counters move between two samples,
        # which is what rate() and increase() (panels and rules) need.
        exfiltrate(port, "exfil2.test", seed=2)
        for name in ("www.allowed.test", "api.allowed.test"):
            ask(port, name)
        flood_queries(port, "127.0.0.2", 60)
        poll(lambda: view.scalar("sum(dnsgate_tunnel_alerts_total)") > first, 30, "more tunnel alerts scraped")
        poll(lambda: view.scalar("sum(dnsgate_cache_hits_total)") >= 2, 30, "cache hits scraped")
        poll(lambda: view.scalar("sum(dnsgate_rate_limited_total)") > 0, 30, "rate limiting scraped")
        limited = view.scalar("sum(dnsgate_rate_limited_total)")
        flood_queries(port, "127.0.0.2", 60)  # a second burst after a scrape: rate() sees it move
        poll(lambda: view.scalar("sum(dnsgate_rate_limited_total)") > limited, 30, "more rate limiting")
        yield view
    finally:
        prometheus.stop()
        assert gate.stop() == 0


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def targets() -> list[tuple[str, str]]:
    """(panel title, expression) of every query the dashboard runs."""
    return [(p["title"], t["expr"]) for p in panels() for t in p["targets"]]


def expand(expr: str, instance: str = ".*", namespace: str = ".*") -> str:
    """Grafana's variable expansion for a Prometheus data source (``All`` is the allValue ``.*``)."""
    out = (
        expr.replace("$__rate_interval", "1m")
        .replace("$__range", "5m")
        .replace("$instance", instance)
        .replace("$namespace", namespace)
    )
    assert "$" not in out, f"a variable the test does not know in {expr!r}"
    return out


def grafana_regex(value: str) -> str:
    """A selected value as Grafana writes it into a ``=~`` matcher: regex-escaped, in a PromQL string."""
    return re.escape(value).replace("\\", "\\\\")


def has_data(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(series["value"][1])) for series in result)


def test_every_panel_query_returns_data(observed: Observed) -> None:
    missing = []
    for title, expr in targets():
        result = observed.prometheus.query(expand(expr, instance=grafana_regex(observed.instance)))
        if not has_data(result):
            missing.append(f"{title}: {expr} -> {result}")
    assert not missing, "panels without data:\n" + "\n".join(missing)


def test_namespace_variable_selects_one_namespace(observed: Observed) -> None:
    with_namespace = [(t, e) for t, e in targets() if "$namespace" in e]
    assert with_namespace
    for title, expr in with_namespace:
        # The flooding client has its own namespace; every panel shows one of the two.
        one = [observed.prometheus.query(expand(expr, namespace=ns)) for ns in ("agents", "flood")]
        assert any(has_data(r) for r in one), f"{title}: no data for a single namespace"
        both = observed.prometheus.query(expand(expr, namespace="agents|flood"))
        assert has_data(both), title
        nobody = observed.prometheus.query(expand(expr, namespace="no-such-namespace"))
        assert not has_data(nobody), title


def test_variable_queries_list_the_instance_and_namespaces(observed: Observed) -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    found = {}
    for name in ("instance", "namespace"):
        query = variables[name]["query"]["query"]
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", query)
        assert match, query
        selector, label = match.groups()
        found[name] = observed.prometheus.get(
            f"/api/v1/label/{label}/values", **{"match[]": expand(selector)}
        )
    assert found["instance"] == [observed.instance]
    assert {"agents", "flood"} <= set(found["namespace"])


def test_panels_show_what_happened(observed: Observed) -> None:
    """A few panels read back the state the traffic left: the numbers, not just any data."""
    by_title = {p["title"]: p for p in panels() if p["type"] == "stat"}

    def stat(title: str) -> float:
        return observed.scalar(expand(by_title[title]["targets"][0]["expr"]))

    assert stat("Ready") == 1.0
    assert stat("Instances up") == 1.0
    assert stat("Active quarantines") == 2.0  # exfil.test and exfil2.test
    assert stat("Tunnel alerts in range") > 0
    assert 0 < stat("Cache hit ratio") < 1
    backend = observed.prometheus.query(
        expand('max by (instance, backend) (dnsgate_state_backend{instance=~"$instance"})')
    )
    assert {s["metric"]["backend"]: s["value"][1] for s in backend} == {"redis": "1", "memory": "0"}
    # The flooding client's rate_limit alerts are counted by kind, not as policy alerts.
    assert observed.scalar('sum(dnsgate_alerts_raised_total{namespace="flood", kind="rate_limit"})') >= 1
    # Its few unlimited queries were denied (policy alerts); one instant query, so one scrape's values.
    assert observed.scalar(
        'sum(dnsgate_alerts_raised_total{namespace="flood"}) - sum(dnsgate_policy_alerts_total{namespace="flood"})'
        ' - sum(dnsgate_alerts_raised_total{namespace="flood", kind="rate_limit"})'
    ) == 0
    assert observed.scalar('sum(dnsgate_alerts_raised_total{namespace="agents", kind="tunnel"})') >= 2


def test_alerting_rules_fire_on_the_live_dnsgate(observed: Observed) -> None:
    def firing() -> set[str]:
        alerts = observed.prometheus.get("/api/v1/alerts")["alerts"]
        return {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}

    poll(lambda: {"DnsgateTunnelAlert", "DnsgateQuarantinesActive"} <= firing(), 30, "rules firing")
    names = firing()
    assert not names & {"DnsgateDown", "DnsgateNoHealthyUpstream", "DnsgateStateFellBackToMemory",
                        "DnsgateAlertSinkDropping", "DnsgateReloadFailed"}
    rules = observed.prometheus.get("/api/v1/rules")["groups"]
    assert all(r["health"] == "ok" for g in rules for r in g["rules"]), rules


def test_dashboard_is_well_formed() -> None:
    board = dashboard()
    assert board["uid"] == "dnsgate"
    assert board["schemaVersion"] >= 36
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        area = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["description"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        assert refs, panel["title"]
        assert all(t["datasource"] == DATASOURCE for t in panel["targets"]), panel["title"]
    # What the dashboard is asked to show, by panel title.
    titles = {p["title"] for p in panels()}
    assert {
        "Queries by action", "Queries by namespace", "Denials by namespace", "Tunnel alerts by reason",
        "Active quarantines", "Upstream latency", "Upstream health", "Cache hit ratio",
        "Redis backend state", "Rate limiting",
    } <= titles


def test_a_query_of_a_metric_dnsgate_lacks_would_be_caught(observed: Observed) -> None:
    """The data check can fail: a misspelt metric returns nothing."""
    assert not has_data(observed.prometheus.query(expand('sum(rate(dnsgate_querys_total[$__rate_interval]))')))
    assert http_get(observed.prometheus.base + "/-/ready")[0] == 200


def test_operations_doc_lists_every_panel_query() -> None:
    doc = (ROOT / "docs" / "operations.md").read_text()
    for title, expr in targets():
        assert f"`{expr.replace('|', chr(92) + '|')}`" in doc, f"docs/operations.md lacks {title}: {expr}"
