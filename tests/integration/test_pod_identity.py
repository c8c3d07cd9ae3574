"""A real dnsgate process identifying clients as pods from the (fake) Kubernetes API.

The API server is the loopback fake of tests/support/fake_kube_api.py (no API
server can run here); dnsgate talks to it through kubernetes-asyncio and a
kubeconfig, as it would to a cluster. Pods get 127.0.0.x addresses, and the
test sends each pod's queries from its address.
"""

from __future__ import annotations

import json
import socket
import struct
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dns.flags
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


TOKEN = "pod-identity-token"

DUAL_CONFIG = """
listen:
  - {{address: 127.0.0.1, port: {port}}}
  - {{address: "::1", port: {port}}}
upstreams: [{{address: 127.0.0.1, port: {upstream}}}]
unknown_clients: refuse
admin: {{address: 127.0.0.1, port: {admin}}}
alerts: [{{type: jsonl, path: alerts.jsonl}}]
tcp_max_connections_per_client: 3
identity:
  kubernetes: {{kubeconfig: kubeconfig, watch_timeout: 5}}
namespaces:
  agents:
    mode: enforce
    allow: [www.allowed.test]
    on_undeclared: {{action: quarantine, duration: 60s}}
  limited:
    mode: enforce
    allow: [www.allowed.test]
    rate_limit: {{qps: 0.01, burst: 3, slip: 1}}
  payments: {{mode: enforce, allow: [api.allowed.test]}}
  ops:
    mode: enforce
    clients: [127.0.0.0/8]
    allow: [www.allowed.test]
    on_undeclared: {{action: quarantine, duration: 60s}}
"""


def ask_from(port: int, name: str, source: str) -> dns.message.Message:
    """A UDP query sent from ``source`` to the listener of its family."""
    server = "::1" if ":" in source else "127.0.0.1"
    return dns.query.udp(dns.message.make_query(name, "A"), server, port=port, timeout=3, source=source)


def rcode(port: int, name: str, source: str) -> str:
    return str(dns.rcode.to_text(ask_from(port, name, source).rcode()))


def admin_call(admin: int, method: str, path: str) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(f"http://127.0.0.1:{admin}{path}", method=method,
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:  # noqa: S310 - loopback only
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def dual_stack(unbound_upstream: Unbound, tmp_path: Path) -> Iterator[tuple[Dnsgate, FakeKubeAPI, int]]:
    """dnsgate on 127.0.0.1 and ::1, its pods served by the FAKE API server of tests/support/fake_kube_api.py."""
    api = FakeKubeAPI(port=free_tcp_port(), bookmark_seconds=0.5).start()
    api.write_kubeconfig(tmp_path / "kubeconfig")
    port, admin = free_port(), free_tcp_port()
    gate = start_dnsgate(DUAL_CONFIG.format(port=port, upstream=unbound_upstream.port, admin=admin), tmp_path, port,
                         env={"DNSGATE_ADMIN_TOKEN": TOKEN})
    try:
        poll(lambda: http_get(f"http://127.0.0.1:{admin}/readyz")[0] == 200, timeout=15, what="first pod list")
        yield gate, api, admin
    finally:
        gate.stop()
        api.stop()


def test_a_dual_stack_pod_is_quarantined_on_both_addresses(dual_stack: tuple[Dnsgate, FakeKubeAPI, int]) -> None:
    """Pod agents/dual-0 has 127.0.0.40 and ::1 (the fake API's podIPs): an undeclared query over IPv4
    quarantines the pod, so its queries over IPv6 are denied too. A CIDR client stays per address."""
    gate, api, admin = dual_stack
    api.add(make_pod("agents", "dual-0", "127.0.0.40", extra_ips=("::1",)))
    poll(lambda: rcode(gate.port, "www.allowed.test", "::1") == "NOERROR", timeout=5, what="the pod maps")
    assert rcode(gate.port, "www.allowed.test", "127.0.0.40") == "NOERROR"

    assert rcode(gate.port, "exfil.example.biz", "127.0.0.40") == "NXDOMAIN"  # undeclared: quarantined
    assert rcode(gate.port, "www.allowed.test", "127.0.0.40") == "NXDOMAIN"
    assert rcode(gate.port, "www.allowed.test", "::1") == "NXDOMAIN"  # the same pod, its other address

    status, body = admin_call(admin, "GET", "/quarantines/clients")
    assert status == 200
    assert [(q["namespace"], q["client"]) for q in body["quarantines"]] == [("agents", "pod:agents/dual-0")]  # type: ignore[union-attr,index]
    alerts = [json.loads(x) for x in Path(gate.alerts_path).read_text().splitlines()]
    undeclared = next(a for a in alerts if a["kind"] == "undeclared")
    assert (undeclared["client"], undeclared["pod"]) == ("127.0.0.40", "agents/dual-0")
    assert undeclared["evidence"]["quarantined"] == "pod:agents/dual-0"

    # CIDR clients (ops, 127.0.0.0/8) are quarantined per address: a neighbour is not.
    assert rcode(gate.port, "exfil.example.biz", "127.0.0.60") == "NXDOMAIN"
    assert rcode(gate.port, "www.allowed.test", "127.0.0.60") == "NXDOMAIN"
    assert rcode(gate.port, "www.allowed.test", "127.0.0.61") == "NOERROR"

    # Lifted by the pod's key (the slash is part of it): both addresses are free again.
    assert admin_call(admin, "DELETE", "/quarantines/clients/agents/pod:agents/dual-0")[0] == 200
    assert rcode(gate.port, "www.allowed.test", "127.0.0.40") == "NOERROR"
    assert rcode(gate.port, "www.allowed.test", "::1") == "NOERROR"
    assert admin_call(admin, "DELETE", "/quarantines/clients/agents/pod:agents/dual-0")[0] == 404


def test_a_dual_stack_pod_has_one_rate_limit_bucket(dual_stack: tuple[Dnsgate, FakeKubeAPI, int]) -> None:
    """Namespace ``limited`` allows a burst of 3 (and next to nothing after): a pod asking over 127.0.0.41
    and ::1 gets 3 in all, not 3 per address. Limited queries are slipped (TC=1) with slip 1."""
    gate, api, _ = dual_stack
    api.add(make_pod("limited", "dual-1", "127.0.0.41", extra_ips=("::1",)))
    # ::1 is in no CIDR rule: REFUSED (before any bucket) until the pod maps, then its first token.
    poll(lambda: rcode(gate.port, "www.allowed.test", "::1") == "NOERROR", timeout=5, what="the pod maps")
    truncated = []
    for source in ("127.0.0.41", "::1", "127.0.0.41", "::1"):
        truncated.append(bool(ask_from(gate.port, "www.allowed.test", source).flags & dns.flags.TC))
    assert truncated == [False, False, True, True]


def test_relist_keeps_a_reused_address_with_the_new_pod(dual_stack: tuple[Dnsgate, FakeKubeAPI, int]) -> None:
    """payments/old holds 127.0.0.50 and is being deleted; the address is handed to agents/new. The watch
    expires (410 Gone) and dnsgate lists again: the list names agents/new first (namespace order), and the
    address must stay with it rather than go back to payments/old."""
    gate, api, admin = dual_stack
    api.add(make_pod("payments", "old", "127.0.0.50", created="2025-03-01T10:00:00Z"))
    # www.allowed.test: NXDOMAIN in payments, NOERROR in agents (asking agents for api.allowed.test would quarantine)
    poll(lambda: rcode(gate.port, "www.allowed.test", "127.0.0.50") == "NXDOMAIN", timeout=5, what="old maps")
    api.terminate("payments", "old")
    api.add(make_pod("agents", "new", "127.0.0.50", created="2025-03-01T10:05:00Z"))
    poll(lambda: rcode(gate.port, "www.allowed.test", "127.0.0.50") == "NOERROR", timeout=5, what="new maps")
    api.modify(api.pods[("payments", "old")])  # a late status update of the terminating pod
    api.end_watches()
    api.add(make_pod("misc", "filler", None))  # a change only a list can see
    api.compact()
    base = f"http://127.0.0.1:{admin}"
    poll(lambda: (metric_value(http_get(f"{base}/metrics")[1].decode(), "dnsgate_kubernetes_relists_total") or 0) >= 1,
         timeout=15, what="a relist")
    assert rcode(gate.port, "www.allowed.test", "127.0.0.50") == "NOERROR"  # agents/new, not payments/old


def tcp_served(port: int, source: str) -> socket.socket | None:
    """A TCP connection from ``source`` that dnsgate kept and answered a query on (left open); None when
    dnsgate closed it at once (a per-client cap reached)."""
    server = "::1" if ":" in source else "127.0.0.1"
    sock = socket.create_connection((server, port), timeout=3, source_address=(source, 0))
    wire = dns.message.make_query("www.allowed.test", "A").to_wire()
    try:
        sock.sendall(struct.pack("!H", len(wire)) + wire)
        head = sock.recv(2)
    except ConnectionResetError:
        head = b""
    if len(head) < 2:
        sock.close()
        return None
    length = struct.unpack("!H", head)[0]
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        assert chunk, "closed in the middle of a reply"
        body += chunk
    dns.message.from_wire(body)
    return sock


def tcp_metrics(admin: int) -> tuple[float, float]:
    """dnsgate_tcp_connections and dnsgate_tcp_refused_per_client_total."""
    text = http_get(f"http://127.0.0.1:{admin}/metrics")[1].decode()
    return (
        metric_value(text, "dnsgate_tcp_connections") or 0.0,
        metric_value(text, "dnsgate_tcp_refused_per_client_total") or 0.0,
    )


def mapped_pods(admin: int) -> float | None:
    return metric_value(http_get(f"http://127.0.0.1:{admin}/metrics")[1].decode(), "dnsgate_kubernetes_mapped_pods")


def test_a_pod_holds_one_tcp_connection_cap_for_all_its_addresses(dual_stack: tuple[Dnsgate, FakeKubeAPI, int]) -> None:
    """tcp_max_connections_per_client is 3. Pod agents/multi-0 has 127.0.0.42, 127.0.0.43 and ::1 and opens
    two connections from each: 3 are served in all, not 3 per address. A CIDR client keeps its own 3 per
    address, and the pod gets its slots back when its connections close."""
    gate, api, admin = dual_stack
    api.add(make_pod("agents", "multi-0", "127.0.0.42", extra_ips=("127.0.0.43", "::1")))
    poll(lambda: rcode(gate.port, "www.allowed.test", "::1") == "NOERROR", timeout=5, what="the pod maps")
    held: list[socket.socket] = []
    try:
        served = []
        for source in ("127.0.0.42", "127.0.0.43", "::1") * 2:
            sock = tcp_served(gate.port, source)
            served.append(sock is not None)
            if sock is not None:
                held.append(sock)
        assert served == [True, True, True, False, False, False]
        assert tcp_metrics(admin) == (3.0, 3.0)

        # Clients mapped by CIDR (ops) are one client per address, as before.
        cidr = [tcp_served(gate.port, source) for source in ["127.0.0.60"] * 4 + ["127.0.0.61"]]
        held.extend(sock for sock in cidr if sock is not None)
        assert [sock is not None for sock in cidr] == [True, True, True, False, True]
        assert tcp_metrics(admin) == (7.0, 4.0)

        for sock in held[:3]:  # the pod's
            sock.close()
        poll(lambda: tcp_metrics(admin)[0] == 4.0, timeout=5, what="the pod's connections released")
        again = [tcp_served(gate.port, source) for source in ("::1", "127.0.0.43", "127.0.0.42", "127.0.0.42")]
        held.extend(sock for sock in again if sock is not None)
        assert [sock is not None for sock in again] == [True, True, True, False]
    finally:
        for sock in held:
            sock.close()


def test_a_tcp_slot_is_released_under_the_key_it_was_taken_with(dual_stack: tuple[Dnsgate, FakeKubeAPI, int]) -> None:
    """Pod agents/move-0 (127.0.0.44 and ::1) holds its 3 connections; then it is deleted and its
    addresses go to payments/pay-0 while those connections are still open. Closing them frees
    move-0's slots (not pay-0's, which never had any): both pods then get exactly their cap."""
    gate, api, admin = dual_stack
    api.add(make_pod("agents", "move-0", "127.0.0.44", extra_ips=("::1",)))
    poll(lambda: rcode(gate.port, "www.allowed.test", "::1") == "NOERROR", timeout=5, what="move-0 maps")
    held = [tcp_served(gate.port, source) for source in ("127.0.0.44", "::1", "127.0.0.44", "::1")]
    try:
        assert [sock is not None for sock in held] == [True, True, True, False]

        api.delete("agents", "move-0")
        api.add(make_pod("payments", "pay-0", "127.0.0.44", extra_ips=("::1",)))
        # www.allowed.test: NOERROR in agents, NXDOMAIN in payments
        poll(lambda: rcode(gate.port, "www.allowed.test", "::1") == "NXDOMAIN", timeout=5, what="pay-0 maps")
        for sock in held:
            if sock is not None:
                sock.close()
        poll(lambda: tcp_metrics(admin)[0] == 0.0, timeout=5, what="every slot released")

        held = [tcp_served(gate.port, source) for source in ("127.0.0.44", "::1", "::1", "127.0.0.44")]
        assert [sock is not None for sock in held] == [True, True, True, False]  # pay-0: its own 3

        api.add(make_pod("agents", "move-0", "127.0.0.45"))  # move-0 again, elsewhere: its old slots are free
        poll(lambda: mapped_pods(admin) == 2.0, timeout=5, what="move-0 maps again")
        moved = [tcp_served(gate.port, "127.0.0.45") for _ in range(4)]
        held.extend(moved)
        assert [sock is not None for sock in moved] == [True, True, True, False]
    finally:
        for sock in held:
            if sock is not None:
                sock.close()
    assert "Traceback" not in (gate.config_path.parent / "dnsgate.stderr").read_text()
