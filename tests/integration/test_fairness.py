"""One client cannot starve or exhaust dnsgate: rate limits with slip, TCP caps, write backpressure.

Real dnsgate process, real Unbound upstream, real dnsperf and dig; clients
use distinct loopback source addresses (127.0.0.x) so each is its own client.
Assertions are about behaviour (who is answered, what is closed, memory
bounded), not about timing.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from tests.support.harness import ensure_packages, free_port
from tests.support.observability import free_tcp_port, http_get, metric_value, poll
from tests.support.upstream_servers import Dnsgate, Unbound, start_dnsgate

pytestmark = pytest.mark.integration

CONFIG = """
listen:
  - {{address: 127.0.0.1, port: {port}}}
upstreams:
  - {{address: 127.0.0.1, port: {upstream}}}
unknown_clients: refuse
alerts:
  - {{type: jsonl, path: alerts.jsonl}}
admin: {{address: 127.0.0.1, port: {admin}}}
tcp_max_connections: 6
tcp_max_connections_per_client: 6
tcp_idle_timeout: 30
tcp_max_unsent: 16384
namespaces:
  agents:
    clients: [127.0.0.0/8]
    allow: [www.allowed.test, api.allowed.test]
    rate_limit: {{qps: 50, burst: 50, slip: 1}}
"""


def query_wire(name: str, qid: int) -> bytes:
    q = dns.message.make_query(name, "A")
    q.id = qid
    return q.to_wire()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@pytest.fixture(scope="module")
def gate(unbound_upstream: Unbound, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Dnsgate, int]]:
    ensure_packages("dnsperf", "dig")
    port, admin = free_port(), free_tcp_port()
    workdir = tmp_path_factory.mktemp("fair")
    server = start_dnsgate(CONFIG.format(port=port, upstream=unbound_upstream.port, admin=admin), workdir, port)
    yield server, admin
    assert server.stop() == 0


def metrics(admin: int) -> str:
    status, body = http_get(f"http://127.0.0.1:{admin}/metrics")
    assert status == 200
    return body.decode()


def test_flooding_client_is_limited_and_others_are_not(gate: tuple[Dnsgate, int], tmp_path: Path) -> None:
    server, admin = gate
    qfile = tmp_path / "q.txt"
    qfile.write_text("www.allowed.test A\n")
    flood = subprocess.Popen(
        ["dnsperf", "-s", "127.0.0.1", "-p", str(server.port), "-a", "127.0.0.2", "-d", str(qfile),
         "-l", "3", "-c", "1", "-q", "20", "-t", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        poll(lambda: (metric_value(metrics(admin), "dnsgate_rate_limited_total", namespace="agents", result="slipped") or 0) > 0,
             timeout=10, what="the flood is limited")
        # another client is not limited at all
        for i in range(40):
            reply = dns.query.udp(dns.message.make_query("api.allowed.test", "A"), "127.0.0.1", port=server.port, timeout=3, source="127.0.0.3")
            assert reply.rcode() == dns.rcode.NOERROR, i
            assert reply.answer, i
        # the limited client itself, while its flood runs: dig sees TC=1 and is served over TCP
        out = subprocess.run(
            ["dig", "@127.0.0.1", "-p", str(server.port), "-b", "127.0.0.2", "+tries=1", "+time=3", "www.allowed.test"],
            capture_output=True, text=True, timeout=20, check=False,
        ).stdout
    finally:
        stdout, _ = flood.communicate(timeout=30)
    assert "Truncated, retrying in TCP mode" in out
    assert "192.0.2.1" in out
    sent = int(re.search(r"Queries sent:\s+(\d+)", stdout).group(1))  # type: ignore[union-attr]
    completed = int(re.search(r"Queries completed:\s+(\d+)", stdout).group(1))  # type: ignore[union-attr]
    # slip 1: every limited query is answered with TC=1 (NOERROR, empty), so dnsperf loses none
    assert completed == sent > 300
    text = metrics(admin)
    assert (metric_value(text, "dnsgate_rate_limited_total", namespace="agents", result="slipped") or 0) >= sent - 200
    assert metric_value(text, "dnsgate_rate_limited_clients", namespace="agents") == 1  # the flooder, not 127.0.0.3
    alerts = [a for a in server.alerts() if a["kind"] == "rate_limit"]
    assert [a["client"] for a in alerts] == ["127.0.0.2"]  # one per limited client and window


def test_per_client_tcp_cap_and_idle_eviction(gate: tuple[Dnsgate, int]) -> None:
    server, admin = gate
    hog = []
    for _ in range(10):  # more than the global cap (6) from one address
        s = socket.create_connection(("127.0.0.1", server.port), source_address=("127.0.0.4", 0), timeout=5)
        hog.append(s)
    # a new client asks over TCP while the hog holds every slot: the idlest hog connection is closed for it
    reply = dns.query.tcp(dns.message.make_query("www.allowed.test", "A"), "127.0.0.1", port=server.port, timeout=5, source="127.0.0.5")
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.answer
    poll(lambda: (metric_value(metrics(admin), "dnsgate_tcp_evicted_idle_total") or 0) >= 1, timeout=10, what="eviction counted")
    text = metrics(admin)
    assert (metric_value(text, "dnsgate_tcp_refused_per_client_total") or 0) >= 4
    assert (metric_value(text, "dnsgate_tcp_connections") or 0) <= 6
    for s in hog:
        s.close()


def test_client_that_never_reads_is_paused_with_memory_bounded(gate: tuple[Dnsgate, int]) -> None:
    server, admin = gate
    before = rss_kib(server.proc.pid)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window from the start
    s.bind(("127.0.0.6", 0))
    s.connect(("127.0.0.1", server.port))
    s.setblocking(False)
    batch = b"".join(len(w).to_bytes(2, "big") + w for w in (query_wire("www.allowed.test", i) for i in range(1000)))
    sent = 0
    deadline = time.monotonic() + 120
    next_check = 0.0
    paused = 0.0
    while time.monotonic() < deadline:
        try:
            sent += s.send(batch) // (len(batch) // 1000)
        except BlockingIOError:
            time.sleep(0.01)  # pacing of the sender while the socket is full
        if time.monotonic() > next_check:
            # the kernel's buffers take the first replies; then they pile up in dnsgate and it stops reading
            paused = metric_value(metrics(admin), "dnsgate_tcp_paused_total") or 0
            if paused:
                break
            next_check = time.monotonic() + 0.5
    assert paused >= 1, f"dnsgate kept reading a client that never reads its replies ({sent} queries)"
    grown_mib = (rss_kib(server.proc.pid) - before) / 1024
    assert grown_mib < 32, f"RSS grew {grown_mib:.1f} MiB for a client that never reads"
    # everyone else is still served, over TCP too
    reply = dns.query.tcp(dns.message.make_query("www.allowed.test", "A"), "127.0.0.1", port=server.port, timeout=5, source="127.0.0.7")
    assert reply.rcode() == dns.rcode.NOERROR
    assert not reply.flags & dns.flags.TC
    s.close()
