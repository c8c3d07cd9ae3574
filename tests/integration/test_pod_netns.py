"""End to end: a network-namespace "pod" whose glibc resolver points at dnsgate.

Two namespaces joined by a veth pair: `gw` runs Unbound (the upstream) and
dnsgate on port 53; `pod` has `/etc/netns/<pod>/resolv.conf` with the
Kubernetes search path and ndots:5, so glibc walks the search list (each
expansion denied, NXDOMAIN) before it asks for the name itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.upstream_servers import ROOT, UPSTREAM_RECORDS, ensure_packages

pytestmark = pytest.mark.integration

GW_ADDR, POD_ADDR = "10.253.7.1", "10.253.7.2"


def sh(*args: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=timeout)


def wait_in_ns(ns: str, port: int, proc: subprocess.Popen[bytes], name: str = "www.allowed.test") -> None:
    """Readiness: a dig inside the namespace gets an answer (dig's own 1 s timeout per try)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server in {ns} exited with {proc.returncode}")
        out = sh("ip", "netns", "exec", ns, "dig", "@127.0.0.1", "-p", str(port), "+time=1", "+tries=1", name, check=False)
        if "status:" in out.stdout:
            return
    raise TimeoutError(f"nothing answers on port {port} in {ns}")


@pytest.fixture(scope="module")
def pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    ensure_packages("ip", "unbound", "dig")
    tag = f"{os.getpid() % 100000}"
    gw, pod_ns = f"dggw{tag}", f"dgpod{tag}"
    veth_gw, veth_pod = f"dgg{tag}", f"dgp{tag}"
    work = tmp_path_factory.mktemp("pod")
    procs: list[subprocess.Popen[bytes]] = []
    netns_etc = Path("/etc/netns") / pod_ns
    try:
        for ns in (gw, pod_ns):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", veth_gw, "netns", gw, "type", "veth", "peer", "name", veth_pod, "netns", pod_ns)
        sh("ip", "-n", gw, "addr", "add", f"{GW_ADDR}/30", "dev", veth_gw)
        sh("ip", "-n", pod_ns, "addr", "add", f"{POD_ADDR}/30", "dev", veth_pod)
        sh("ip", "-n", gw, "link", "set", veth_gw, "up")
        sh("ip", "-n", pod_ns, "link", "set", veth_pod, "up")

        upstream_port = 5300
        lines = [
            "server:", f"  interface: 127.0.0.1@{upstream_port}", "  do-daemonize: no", '  chroot: ""',
            '  username: ""', f'  directory: "{work}"', "  use-syslog: no", f'  logfile: "{work}/unbound.log"',
            "  log-queries: yes", "  access-control: 127.0.0.0/8 allow", "  do-ip6: no",
            '  module-config: "iterator"', '  local-zone: "test." static',
        ] + [f"  local-data: '{r}'" for r in UPSTREAM_RECORDS]
        (work / "unbound.conf").write_text("\n".join(lines) + "\n")
        unbound = subprocess.Popen(["ip", "netns", "exec", gw, "unbound", "-d", "-c", str(work / "unbound.conf")], stderr=subprocess.DEVNULL)
        procs.append(unbound)
        wait_in_ns(gw, upstream_port, unbound)

        config = f"""
listen:
  - {{address: {GW_ADDR}, port: 53}}
  - {{address: 127.0.0.1, port: 53}}
upstreams: [{{address: 127.0.0.1, port: {upstream_port}}}]
alerts: [{{type: jsonl, path: alerts.jsonl}}]
namespaces:
  agents:
    clients: [{POD_ADDR}/32, 127.0.0.1/32]
    mode: enforce
    allow: [www.allowed.test, api.allowed.test]
"""
        (work / "dnsgate.yaml").write_text(config)
        gate = subprocess.Popen(
            ["ip", "netns", "exec", gw, sys.executable, "-m", "resolver.cli", "serve", "--config", str(work / "dnsgate.yaml")],
            cwd=ROOT, stderr=open(work / "dnsgate.stderr", "wb"),  # noqa: SIM115
        )
        procs.append(gate)
        wait_in_ns(gw, 53, gate)

        netns_etc.mkdir(parents=True, exist_ok=True)
        (netns_etc / "resolv.conf").write_text(
            f"nameserver {GW_ADDR}\n"
            "search agents.svc.cluster.local svc.cluster.local cluster.local\n"
            "options ndots:5 timeout:1 attempts:2\n"
        )
        yield {"ns": pod_ns, "work": work, "unbound_log": work / "unbound.log"}
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        shutil.rmtree(netns_etc, ignore_errors=True)
        for ns in (pod_ns, gw):
            sh("ip", "netns", "del", ns, check=False)


def test_glibc_resolves_allowed_name(pod: dict[str, object]) -> None:
    out = sh("ip", "netns", "exec", str(pod["ns"]), "getent", "ahosts", "www.allowed.test", check=False)
    assert out.returncode == 0, out.stderr
    assert "192.0.2.1" in out.stdout


def test_python_getaddrinfo_in_pod(pod: dict[str, object]) -> None:
    code = "import socket; print(sorted({a[4][0] for a in socket.getaddrinfo('api.allowed.test', 443, socket.AF_INET)}))"
    out = sh("ip", "netns", "exec", str(pod["ns"]), sys.executable, "-c", code, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['192.0.2.2']"


def test_glibc_fails_on_denied_name_and_upstream_never_sees_it(pod: dict[str, object]) -> None:
    out = sh("ip", "netns", "exec", str(pod["ns"]), "getent", "ahosts", "denied.test", check=False)
    assert out.returncode == 2  # getent: key not found
    assert out.stdout == ""
    log = Path(str(pod["unbound_log"])).read_text()
    assert "denied.test." not in log
    alerts = [json.loads(x) for x in (Path(str(pod["work"])) / "alerts.jsonl").read_text().splitlines()]
    denied = {a["qname"] for a in alerts}
    # glibc walked the search path first: every expansion was denied too.
    assert "denied.test" in denied
    assert "denied.test.agents.svc.cluster.local" in denied
    assert all(a["client"] == POD_ADDR and a["namespace"] == "agents" for a in alerts if a["qname"].startswith("denied"))
