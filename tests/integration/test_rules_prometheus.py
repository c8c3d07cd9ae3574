"""The alerting rules: checked and unit-tested by the real promtool, shipped twice identically."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.integration.test_cluster_bundle import build
from tests.support.harness import ensure_packages
from tests.support.upstream_servers import ROOT

pytestmark = pytest.mark.integration

RULES = ROOT / "deploy" / "prometheus" / "dnsgate-rules.yaml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "dnsgate-rules-test.yaml"
PROMETHEUS_RULE = ROOT / "deploy" / "kubernetes" / "components" / "monitoring" / "prometheusrule.yaml"

# What the issue asks the rules to cover, by the alert that covers it.
EXPECTED_ALERTS = {
    "DnsgateDown", "DnsgateNotReady", "DnsgateNoHealthyUpstream", "DnsgateReloadFailed",
    "DnsgateTunnelAlert", "DnsgateQuarantinesActive", "DnsgateStateFellBackToMemory",
    "DnsgateAlertSinkDropping",
}


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        ensure_packages("promtool")
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def alert_names(groups: list[dict[str, object]]) -> list[str]:
    return [rule["alert"] for group in groups for rule in group["rules"]]  # type: ignore[attr-defined]


def test_promtool_check_rules_passes() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in result.stdout


def test_promtool_unit_tests_pass_and_cover_every_rule() -> None:
    result = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test["alert_rule_test"]}
    fired = {
        case["alertname"] for test in tests for case in test["alert_rule_test"] if case["exp_alerts"]
    }
    quiet = {
        case["alertname"] for test in tests for case in test["alert_rule_test"] if not case["exp_alerts"]
    }
    # Every rule is shown both firing and staying quiet.
    assert tested == fired == quiet == EXPECTED_ALERTS


def test_a_broken_rule_fails_the_unit_tests(tmp_path: Path) -> None:
    """The unit tests can fail: a rule that never fires is caught."""
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule["alert"] == "DnsgateQuarantinesActive":
                rule["expr"] = "dnsgate_quarantines_active > 100"
    (tmp_path / RULES.name).write_text(yaml.safe_dump(rules))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0
    assert "DnsgateQuarantinesActive" in result.stdout + result.stderr


def test_prometheusrule_object_carries_the_same_rules(tmp_path: Path) -> None:
    rules = yaml.safe_load(RULES.read_text())
    obj = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert obj["apiVersion"] == "monitoring.coreos.com/v1"
    assert obj["kind"] == "PrometheusRule"
    assert obj["metadata"]["name"] == "dnsgate"
    assert obj["spec"] == rules
    assert set(alert_names(obj["spec"]["groups"])) == EXPECTED_ALERTS
    # What the operator would hand Prometheus passes promtool too.
    extracted = tmp_path / "from-prometheusrule.yaml"
    extracted.write_text(yaml.safe_dump(obj["spec"]))
    result = promtool("check", "rules", str(extracted))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_kustomize_bundle_carries_the_rules_and_the_scrape() -> None:
    """``kubectl kustomize`` of the example overlay: the rules, and a ServiceMonitor that finds the admin port."""
    objects = build(ROOT / "deploy" / "kubernetes" / "overlays" / "example")
    by_kind = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    rule = by_kind[("PrometheusRule", "dnsgate")]
    assert rule["metadata"]["namespace"] == "dnsgate"
    assert rule["spec"] == yaml.safe_load(RULES.read_text())
    monitor = by_kind[("ServiceMonitor", "dnsgate")]
    assert monitor["metadata"]["namespace"] == "dnsgate"
    selected = [
        o for o in objects if o["kind"] == "Service" and o["metadata"].get("namespace") == "dnsgate"
        and monitor["spec"]["selector"]["matchLabels"].items() <= o["metadata"].get("labels", {}).items()
    ]
    assert [s["metadata"]["name"] for s in selected] == ["dnsgate-admin"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in selected[0]["spec"]["ports"]}
    # The job label the rules' `up{job="dnsgate"}` expects.
    assert {"targetLabel": "job", "replacement": "dnsgate"} in endpoint["relabelings"]
