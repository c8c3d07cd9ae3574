"""A cluster in a box: pods as network namespaces on a bridge, two dnsgate replicas, one Redis.

- Pods of two Kubernetes namespaces (``agents``, ``payments``) are network
  namespaces on one bridge, their addresses drawn from one node CIDR, mixed.
  Each has ``/etc/netns/<pod>/resolv.conf`` naming both replicas, the cluster
  search path and ``ndots:5``: glibc resolves for them.
- Two dnsgate processes (the replicas) listen on two bridge addresses, share a
  real redis-server and learn who each pod is from the fake API server
  (tests/support/fake_kube_api.py: no API server can run here).
- The upstream is the session's Unbound.

The figures (quarantine propagation, payload to detection across replicas,
failover loss) are printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.fake_kube_api import FakeKubeAPI, make_pod
from tests.support.harness import ensure_packages
from tests.support.observability import free_tcp_port, http_get
from tests.support.redis_server import RedisServer
from tests.support.upstream_servers import ROOT, Unbound

pytestmark = pytest.mark.integration

TAG = f"{os.getpid() % 100000}"
NET = f"10.251.{os.getpid() % 250}"
REPLICAS = (f"{NET}.2", f"{NET}.3")
PODS = {  # pod -> (Kubernetes namespace, address): the namespaces' addresses interleave
    "agents-0": ("agents", f"{NET}.11"),
    "payments-0": ("payments", f"{NET}.12"),
    "agents-1": ("agents", f"{NET}.13"),
    "payments-1": ("payments", f"{NET}.14"),
}

CONFIG = """
listen: [{{address: {address}, port: 53}}]
upstreams: [{{address: 127.0.0.1, port: {upstream}}}]
upstream_timeout: 0.5
unknown_clients: refuse
admin: {{address: 127.0.0.1, port: {admin}}}
alerts: [{{type: jsonl, path: alerts.jsonl}}]
identity:
  kubernetes: {{kubeconfig: {kubeconfig}}}
state: {{backend: redis, url: "{redis}"}}
detection: {{mode: enforce}}
namespaces:
  agents:
    mode: enforce
    deny_action: refused
    allow: [www.allowed.test, "*.tunnel.test", "*.one-chan.test", "*.two-chan.test"]
  payments:
    mode: enforce
    deny_action: refused
    allow: [api.allowed.test]
"""


def sh(*args: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=timeout)


def netns(pod: str) -> str:
    return f"dg{pod.replace('agents', 'a').replace('payments', 'p').replace('-', '')}{TAG}"


@dataclass
class Replica:
    address: str
    admin: int
    work: Path
    proc: subprocess.Popen[bytes] | None = None

    def alerts(self) -> list[dict[str, Any]]:
        path = self.work / "alerts.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass
class Box:
    api: FakeKubeAPI
    replicas: list[Replica]
    bridge: str
    figures: dict[str, Any] = field(default_factory=dict)

    def run_in(self, pod: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", netns(pod), *args, check=False, timeout=timeout)

    def python_in(self, pod: str, code: str, timeout: float = 60) -> Any:
        out = self.run_in(pod, sys.executable, "-c", code, timeout=timeout)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def resolves(self, pod: str, name: str) -> bool:
        return self.run_in(pod, "getent", "ahostsv4", name).returncode == 0


def wait_ready(replica: Replica) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert replica.proc is not None
        if replica.proc.poll() is not None:
            raise RuntimeError((replica.work / "stderr").read_text())
        try:
            if http_get(f"http://127.0.0.1:{replica.admin}/readyz", timeout=1)[0] == 200:
                return
        except OSError:  # URLError: the admin port is not up yet
            pass
        time.sleep(0.05)  # poll interval
    raise TimeoutError(f"replica {replica.address} not ready")


@pytest.fixture(scope="module")
def box(unbound_upstream: Unbound, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    ensure_packages("ip", "iodine", "redis-server")
    work = tmp_path_factory.mktemp("box")
    bridge = f"dgbr{TAG}"
    redis = RedisServer()
    redis.start()
    api = FakeKubeAPI(bookmark_seconds=1.0)
    api.load([make_pod(ns, pod, address, service_account=f"{ns}-runner") for pod, (ns, address) in PODS.items()])
    api.start()
    kubeconfig = api.write_kubeconfig(work / "kubeconfig")
    replicas = [Replica(address, free_tcp_port(), work / f"replica{i}") for i, address in enumerate(REPLICAS)]
    try:
        sh("ip", "link", "add", bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{NET}.1/24", "dev", bridge)
        for address in REPLICAS:
            sh("ip", "addr", "add", f"{address}/24", "dev", bridge)
        sh("ip", "link", "set", bridge, "up")
        for i, (pod, (_, address)) in enumerate(PODS.items()):
            ns, host_end, pod_end = netns(pod), f"dgh{i}{TAG}", f"dgp{i}{TAG}"
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", pod_end, "netns", ns)
            sh("ip", "link", "set", host_end, "master", bridge, "up")
            sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", pod_end)
            sh("ip", "-n", ns, "link", "set", pod_end, "up")
            etc = Path("/etc/netns") / ns
            etc.mkdir(parents=True, exist_ok=True)
            kube_ns = PODS[pod][0]
            (etc / "resolv.conf").write_text(
                "".join(f"nameserver {a}\n" for a in REPLICAS)
                + f"search {kube_ns}.svc.cluster.local svc.cluster.local cluster.local\n"
                "options ndots:5 timeout:1 attempts:2\n"
            )
        for replica in replicas:
            replica.work.mkdir()
            config = CONFIG.format(address=replica.address, upstream=unbound_upstream.port, admin=replica.admin,
                                   kubeconfig=kubeconfig, redis=redis.url)
            (replica.work / "dnsgate.yaml").write_text(config)
            replica.proc = subprocess.Popen(
                [sys.executable, "-m", "resolver.cli", "serve", "--config", str(replica.work / "dnsgate.yaml")],
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(replica.work / "stderr", "wb"),  # noqa: SIM115
            )
        for replica in replicas:
            wait_ready(replica)
        yield Box(api, replicas, bridge)
    finally:
        for replica in replicas:
            if replica.proc is not None and replica.proc.poll() is None:
                replica.proc.terminate()
                try:
                    replica.proc.wait(10)
                except subprocess.TimeoutExpired:
                    replica.proc.kill()
        for pod in PODS:
            shutil.rmtree(Path("/etc/netns") / netns(pod), ignore_errors=True)
            sh("ip", "netns", "del", netns(pod), check=False)
        sh("ip", "link", "del", bridge, check=False)
        api.stop()
        redis.close()


def test_glibc_resolution_per_namespace_with_mixed_addresses(box: Box) -> None:
    for pod, (ns, _) in PODS.items():
        assert box.resolves(pod, "www.allowed.test") == (ns == "agents"), pod
        assert box.resolves(pod, "api.allowed.test") == (ns == "payments"), pod


def test_search_path_expansions_raise_no_tunnel_alert(box: Box) -> None:
    alerts = [a for r in box.replicas for a in r.alerts()]
    expansions = [a for a in alerts if a["qname"].endswith("svc.cluster.local")]
    assert expansions  # glibc walked the search list (ndots:5), and those were denied...
    assert all(a["kind"] == "policy" for a in expansions)  # ...but never taken for a tunnel
    assert not [a for a in alerts if a["kind"] == "tunnel"]
    # Alerts name the pod and its service account.
    pods = {(a["client"], a.get("pod"), a.get("service_account")) for a in alerts}
    assert (PODS["payments-0"][1], "payments/payments-0", "payments-runner") in pods


CHANNEL = """
import base64, json, random, socket, sys, time
import dns.message, dns.query, dns.rcode
servers, domain, delay = sys.argv[1].split(","), sys.argv[2], float(sys.argv[3])
rng = random.Random(11)
sent = 0
for i in range(400):
    chunk = base64.b32encode(rng.randbytes(30)).decode().rstrip("=").lower()
    server = servers[i % len(servers)]
    sent += len(chunk)
    reply = dns.query.udp(dns.message.make_query(f"{chunk}.t.{domain}", "TXT"), server, timeout=2)
    if reply.rcode() == dns.rcode.REFUSED:
        print(json.dumps({"octets": sent, "queries": i + 1}))
        break
    time.sleep(delay)
else:
    print(json.dumps({"octets": None, "queries": 400}))
"""


def test_channel_across_replicas_detected_within_single_replica_payload(box: Box) -> None:
    def run(servers: tuple[str, ...], domain: str) -> Any:
        argv = ["x", ",".join(servers), domain, "0.05"]
        return box.python_in("agents-1", f"import sys; sys.argv = {argv!r}\n" + CHANNEL, timeout=90)

    single = run(REPLICAS[:1], "one-chan.test")
    both = run(REPLICAS, "two-chan.test")
    box.figures["bulk_channel"] = {"single_replica": single, "alternating_replicas": both}
    print(f"\nbulk channel, payload octets to quarantine: single replica {single}, alternating {both}")
    assert single["octets"] is not None
    assert both["octets"] is not None
    assert both["octets"] <= single["octets"] + 2 * 48  # within two queries of one replica's figure


def test_tunnel_client_quarantined_on_both_replicas(box: Box) -> None:
    first, second = box.replicas
    probe = ["dig", f"@{second.address}", "+time=1", "+tries=1", "probe.tunnel.test", "A"]
    assert "status: NXDOMAIN" in box.run_in("agents-1", *probe).stdout  # forwarded before any tunnel
    iodine = subprocess.Popen(
        ["ip", "netns", "exec", netns("agents-0"), "iodine", "-f", "-P", "secret", first.address, "tunnel.test"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        alert = None
        while alert is None:
            assert time.monotonic() < deadline, "iodine not detected"
            alert = next((a for a in first.alerts() if a["kind"] == "tunnel" and a["domain"] == "tunnel.test"), None)
            time.sleep(0.02)  # poll interval
    finally:
        iodine.terminate()
        iodine.wait(10)
    assert alert["action"] == "quarantined"
    assert alert["pod"] == "agents/agents-0"
    while "status: REFUSED" not in box.run_in("agents-1", *probe).stdout:
        assert time.time() - alert["ts"] < 5, "quarantine never reached the other replica"
    propagation = time.time() - alert["ts"]
    box.figures["quarantine_propagation_s"] = round(propagation, 3)
    print(f"\nquarantine decided on {first.address}, holding on {second.address} after {propagation:.3f} s")
    assert propagation < 2.0  # the figure is reported; the bound leaves room for a loaded CI machine


def test_pod_replaced_by_other_namespace_switches_policy(box: Box) -> None:
    address = PODS["agents-1"][1]
    assert box.resolves("agents-1", "www.allowed.test")
    box.api.delete("agents", "agents-1")
    box.api.add(make_pod("payments", "payments-2", address))
    start = time.monotonic()
    while not box.resolves("agents-1", "api.allowed.test"):  # the same address, now a payments pod
        assert time.monotonic() - start < 2.0, "policy did not follow the address"
    assert not box.resolves("agents-1", "www.allowed.test")


FAILOVER = """
import json, socket, sys, threading, time
results = []
stop = time.monotonic() + float(sys.argv[1])
def lookups():
    while time.monotonic() < stop:
        t = time.monotonic()
        try:
            socket.getaddrinfo("api.allowed.test", 443, socket.AF_INET)
            ok = True
        except OSError:
            ok = False
        results.append((t, time.monotonic() - t, ok))
        time.sleep(0.02)
threads = [threading.Thread(target=lookups) for _ in range(4)]
for th in threads: th.start()
for th in threads: th.join()
print(json.dumps(results))
"""


def test_killing_a_replica_costs_only_glibc_failover(box: Box) -> None:
    first = box.replicas[0]
    load = subprocess.Popen(
        ["ip", "netns", "exec", netns("payments-1"), sys.executable, "-c", "import sys; sys.argv = ['x', '6']\n" + FAILOVER],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    time.sleep(1.5)  # let the load run against both replicas before the kill
    killed_at = time.monotonic()
    assert first.proc is not None
    first.proc.kill()
    first.proc.wait(10)
    sh("ip", "addr", "del", f"{first.address}/24", "dev", box.bridge)  # the pod is gone: no reply, no ICMP
    out, err = load.communicate(timeout=60)
    assert load.returncode == 0, err
    results = json.loads(out)
    after = [r for r in results if r[0] >= killed_at]
    failed = [r for r in results if not r[2]]
    slowest = max(r[1] for r in after)
    box.figures["failover"] = {"lookups": len(results), "after_kill": len(after), "failed": len(failed),
                               "slowest_after_kill_s": round(slowest, 3)}
    print(f"\nfailover: {len(results)} lookups, {len(after)} after the kill, {len(failed)} failed, "
          f"slowest after the kill {slowest:.3f} s")
    assert after
    assert not failed  # glibc moved to the second nameserver: slower, never a failure
    # glibc keeps no memory of a dead nameserver: every query of the search walk (three
    # expansions, then the name) waits timeout:1 on it before the live one answers.
    assert slowest < 4 * 1.0 + 1.0
