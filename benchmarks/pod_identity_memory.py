"""Memory of pod identity: a dnsgate process watching N pods through the (fake) Kubernetes API.

    python -m benchmarks.pod_identity_memory 0 10000

For each N, starts the loopback fake API server (tests/support/fake_kube_api.py:
no real API server can run here) with N Running pods spread over 50
namespaces, starts ``dnsgate serve`` with ``identity: {kubernetes: ...}``,
waits until /readyz says the first list is applied, then reads the process's
VmRSS and VmHWM from /proc and the seconds the first list took. Prints one
JSON line per N.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.fake_kube_api import FakeKubeAPI, make_pod
from tests.support.harness import free_port
from tests.support.observability import free_tcp_port

ROOT = Path(__file__).resolve().parents[1]


def pods(n: int) -> list[dict[str, object]]:
    return [
        make_pod(f"ns{i % 50}", f"pod-{i}", f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}",
                 service_account=f"sa{i % 20}")
        for i in range(n)
    ]


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def measure(n: int) -> dict[str, object]:
    api = FakeKubeAPI()
    api.load(pods(n))
    api.start()
    work = Path(tempfile.mkdtemp(prefix="dnsgate-podmem-"))
    api.write_kubeconfig(work / "kubeconfig")
    port, admin = free_port(), free_tcp_port()
    (work / "dnsgate.yaml").write_text(
        f"listen: [{{address: 127.0.0.1, port: {port}}}]\n"
        "upstreams: [{address: 127.0.0.1, port: 9}]\n"
        f"admin: {{address: 127.0.0.1, port: {admin}}}\n"
        "identity: {kubernetes: {kubeconfig: kubeconfig}}\n"
        "namespaces: {ns0: {allow: [a.test]}, ns1: {allow: [a.test]}}\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "resolver.cli", "serve", "--config", str(work / "dnsgate.yaml")],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        start = time.monotonic()
        # The upstream at port 9 never answers, so readiness is the pod list (and listeners):
        # /metrics dnsgate_kubernetes_synced says when the list is in.
        deadline = start + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=1) as resp:
                    if b"dnsgate_kubernetes_synced 1.0" in resp.read():
                        break
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)  # poll interval
        synced = time.monotonic() - start
        return {
            "pods": n,
            "seconds_to_synced": round(synced, 2),
            "vm_rss_mib": round(status_kib(proc.pid, "VmRSS") / 1024, 1),
            "vm_hwm_mib": round(status_kib(proc.pid, "VmHWM") / 1024, 1),
        }
    finally:
        proc.terminate()
        proc.wait(10)
        api.stop()


def main() -> None:
    for arg in sys.argv[1:] or ["0", "10000"]:
        print(json.dumps(measure(int(arg))), flush=True)


if __name__ == "__main__":
    main()
