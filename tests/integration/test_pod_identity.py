"""A real dnsgate process identifying clients as pods from the (fake) Kubernetes API.

The API server is the loopback fake of tests/support/fake_kube_api.py (no API
server can run here); dnsgate talks to it through kubernetes-asyncio and a
kubeconfig, as it would to a cluster. Pods get 127.0.0.x addresses, and the
test sends each pod's queries from its address.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from tests.support.fake_kube_api import FakeKubeAPI, make_pod
from tests.support.observability import free_tcp_port, http_get, metric_value, poll
from tests.support.upstream_servers import Dnsgate, Unbound, free_port, start_dnsgate

pytestmark = pytest.mark.integration


def ask(port: int, name: str, source: str) -> str:
    reply = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=3, source=source)
    return str(dns.rcode.to_text(reply.rcode()))


CONFIG = """
listen: [{{address: 127.0.0.1, port: {port}}}]
upstreams: [{{address: 127.0.0.1, port: {upstream}}}]
unknown_clients: refuse
admin: {{address: 127.0.0.1, port: {admin}}}
alerts: [{{type: jsonl, path: alerts.jsonl}}]
identity:
  kubernetes: {{kubeconfig: kubeconfig, watch_timeout: 5}}
namespaces:
  agents: {{mode: enforce, allow: [www.allowed.test]}}
  payments:
    mode: enforce
    allow: [api.allowed.test]
    kubernetes_namespaces: [payments, payments-batch]
  ops: {{mode: enforce, clients: [127.0.0.0/8], allow: [denied.test]}}
"""


@pytest.fixture(scope="module")
def cluster(unbound_upstream: Unbound, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Dnsgate, FakeKubeAPI, int]]:
    work = tmp_path_factory.mktemp("podid")
    api_port = free_tcp_port()
    api = FakeKubeAPI(port=api_port, bookmark_seconds=0.5)
    api.write_kubeconfig(work / "kubeconfig")  # the API is not up yet: dnsgate must wait for its first list
    port, admin = free_port(), free_tcp_port()
    gate = start_dnsgate(CONFIG.format(port=port, upstream=unbound_upstream.port, admin=admin), work, port)
    try:
        yield gate, api, admin
    finally:
        gate.stop()
        api.stop()


def test_pod_identity_end_to_end(cluster: tuple[Dnsgate, FakeKubeAPI, int]) -> None:
    gate, api, admin = cluster
    base = f"http://127.0.0.1:{admin}"
    # Before the first list: not ready, and a pod's address falls through to the CIDR rule.
    status, body = http_get(f"{base}/readyz")
    assert status == 503
    assert b"pod list" in body
    assert ask(gate.port, "denied.test", "127.0.0.5") == "NOERROR"  # ops (CIDR) allows it

    api.load([
        make_pod("agents", "agent-0", "127.0.0.5", service_account="agent-runner"),
        make_pod("payments-batch", "batch-0", "127.0.0.6"),
        make_pod("kube-system", "node-agent", "127.0.0.7", host_network=True),
        make_pod("other", "unserved", "127.0.0.8"),
    ])
    api.start()
    poll(lambda: http_get(f"{base}/readyz")[0] == 200, timeout=15, what="ready after the first list")

    assert ask(gate.port, "www.allowed.test", "127.0.0.5") == "NOERROR"
    assert ask(gate.port, "api.allowed.test", "127.0.0.5") == "NXDOMAIN"  # agents: not allowed
    assert ask(gate.port, "api.allowed.test", "127.0.0.6") == "NOERROR"  # payments serves payments-batch
    assert ask(gate.port, "denied.test", "127.0.0.7") == "NOERROR"  # hostNetwork: CIDR rule (ops)
    assert ask(gate.port, "denied.test", "127.0.0.8") == "NOERROR"  # no dnsgate namespace: CIDR rule

    alerts = [json.loads(x) for x in Path(gate.alerts_path).read_text().splitlines()]
    denial = next(a for a in alerts if a["qname"] == "api.allowed.test" and a["client"] == "127.0.0.5")
    assert denial["namespace"] == "agents"
    assert denial["pod"] == "agents/agent-0"
    assert denial["service_account"] == "agent-runner"

    # The pod is deleted and its address goes to a pod of another namespace: policy follows.
    api.delete("agents", "agent-0")
    api.add(make_pod("payments", "pay-1", "127.0.0.5"))
    poll(lambda: ask(gate.port, "api.allowed.test", "127.0.0.5") == "NOERROR", timeout=2, what="policy switch")
    assert ask(gate.port, "www.allowed.test", "127.0.0.5") == "NXDOMAIN"

    metrics = http_get(f"{base}/metrics")[1].decode()
    assert metric_value(metrics, "dnsgate_kubernetes_watch_state", state="watching") == 1.0
    assert metric_value(metrics, "dnsgate_kubernetes_mapped_pods") == 3.0
    assert (metric_value(metrics, "dnsgate_kubernetes_watch_events_total", type="ADDED") or 0) >= 1.0
    assert metric_value(metrics, "dnsgate_kubernetes_synced") == 1.0
