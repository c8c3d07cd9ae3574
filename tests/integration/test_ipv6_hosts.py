"""A host that owns an IPv6 /64 is one client, not 2^64 of them.

A host on an IPv6 network may source from any address of its prefix (SLAAC
privacy addresses, a routed /64): `ip route add local <prefix> dev lo` gives
this test's network namespace exactly that. Counted per address, such a host
got a fresh rate-limit bucket, a fresh client quarantine and fresh detector
budgets with every address it picked. dnsgate now counts an IPv6 client by its
network of ``ipv6_client_prefix`` bits (64 by default), as it counts a pod by
its key.

Everything runs inside one network namespace the test creates: Unbound on
127.0.0.1 (the upstream), dnsgate on fd00:64:ffff::53, and the clients, which
send with dnspython from as many source addresses as they like.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.test_pod_netns import sh, wait_in_ns
from tests.support.harness import stop_process
from tests.support.upstream_servers import ROOT, UPSTREAM_RECORDS, ensure_packages

pytestmark = pytest.mark.integration

GATE = "fd00:64:ffff::53"
UPSTREAM_PORT = 5300

# Sends queries from many source addresses at once and prints what came back, as JSON:
# {"answered": n, "rcodes": {address: rcode}}. Every socket is bound to its own address
# (the namespace routes all of fd00:64::/32 to lo), every query is sent before any reply
# is read, and replies are collected until none came for ``quiet`` seconds.
CLIENT = textwrap.dedent('''
    import json, select, socket, sys, time
    import dns.message, dns.rcode
    gate, jobs, quiet = sys.argv[1], json.load(open(sys.argv[2])), float(sys.argv[3])
    socks = {}
    for source, name, qtype in jobs:
        s = socks.get(source)
        if s is None:
            s = socks[source] = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_IP, 15, 1)  # IP_FREEBIND: the local route covers it, no address is added
            s.bind((source, 0))
            s.setblocking(False)
        s.sendto(dns.message.make_query(name, qtype).to_wire(), (gate, 53))
    rcodes, answered = {}, 0
    by_fd = {s.fileno(): (a, s) for a, s in socks.items()}
    poller = select.poll()
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    while True:
        ready = poller.poll(quiet * 1000)
        if not ready:
            break
        for fd, _ in ready:
            source, s = by_fd[fd]
            while True:
                try:
                    data = s.recv(65535)
                except BlockingIOError:
                    break
                answered += 1
                rcodes[source] = dns.rcode.to_text(dns.message.from_wire(data).rcode())
    print(json.dumps({"answered": answered, "rcodes": rcodes}))
''')


@dataclass
class Host:
    ns: str
    work: Path
    asked: int = 0

    def ask(self, jobs: list[tuple[str, str, str]], quiet: float = 1.0) -> dict[str, object]:
        """Send ``jobs`` (source address, name, qtype) from inside the namespace."""
        self.asked += 1
        path = self.work / f"jobs-{self.asked}.json"
        path.write_text(json.dumps(jobs))
        out = sh("ip", "netns", "exec", self.ns, sys.executable, "-c", CLIENT, GATE, str(path), str(quiet),
                 timeout=120, check=False)
        assert out.returncode == 0, out.stderr[-2000:]
        result: dict[str, object] = json.loads(out.stdout)
        return result

    def alerts(self) -> list[dict[str, object]]:
        path = self.work / "alerts.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    ensure_packages("ip", "unbound", "dig")
    ns = f"dgv6{os.getpid() % 100000}"
    work = tmp_path_factory.mktemp("v6host")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "-6", "addr", "add", f"{GATE}/128", "dev", "lo", "nodad")
        # Any address of fd00:64::/32 is this namespace's own: bind to it and send from it.
        sh("ip", "-n", ns, "-6", "route", "add", "local", "fd00:64::/32", "dev", "lo")
        lines = [
            "server:", f"  interface: 127.0.0.1@{UPSTREAM_PORT}", "  do-daemonize: no", '  chroot: ""',
            '  username: ""', f'  directory: "{work}"', "  use-syslog: no", "  access-control: 127.0.0.0/8 allow",
            "  do-ip6: no", '  module-config: "iterator"', '  local-zone: "test." static',
        ] + [f"  local-data: '{r}'" for r in UPSTREAM_RECORDS]
        (work / "unbound.conf").write_text("\n".join(lines) + "\n")
        unbound = subprocess.Popen(["ip", "netns", "exec", ns, "unbound", "-d", "-c", str(work / "unbound.conf")],
                                   stderr=subprocess.DEVNULL)
        procs.append(unbound)
        wait_in_ns(ns, UPSTREAM_PORT, unbound)
        (work / "dnsgate.yaml").write_text(textwrap.dedent(f"""
            listen:
              - {{address: "{GATE}", port: 53}}
              - {{address: 127.0.0.1, port: 53, namespace: limited}}
            upstreams: [{{address: 127.0.0.1, port: {UPSTREAM_PORT}}}]
            ipv6_client_prefix: 64
            alerts: [{{type: jsonl, path: {work / "alerts.jsonl"}}}]
            namespaces:
              limited:
                clients: ["fd00:64:1::/48"]
                allow: [www.allowed.test]
                rate_limit: {{qps: 20, burst: 40, slip: 0}}
              guarded:
                clients: ["fd00:64:2::/48"]
                allow: [www.allowed.test]
                on_undeclared: {{action: quarantine, duration: 600}}
              watched:
                clients: ["fd00:64:3::/48"]
                allow: [www.allowed.test]
                detection: {{mode: observe}}
        """))
        gate = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "resolver.cli", "serve", "--config",
             str(work / "dnsgate.yaml")],
            cwd=ROOT, stderr=open(work / "dnsgate.stderr", "wb"),  # noqa: SIM115
        )
        procs.append(gate)
        wait_in_ns(ns, 53, gate)
        yield Host(ns, work)
    finally:
        for proc in reversed(procs):
            stop_process(proc)
        sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(work, ignore_errors=True)


def test_a_host_cycling_addresses_of_its_64_draws_on_one_rate_limit_bucket(host: Host) -> None:
    """300 queries, each from its own address of one /64, at a limit of 20 q/s with a burst of 40: per
    address every one got a full bucket and all 300 were answered. A host of another /64 keeps its own."""
    flood = [(f"fd00:64:1:2::{i + 1:x}", "www.allowed.test", "A") for i in range(300)]
    result = host.ask(flood)
    answered = result["answered"]
    assert isinstance(answered, int)
    # The burst, plus what 20 q/s refills while the 300 are being sent (well under a second).
    assert 40 <= answered <= 80, answered
    neighbour = host.ask([("fd00:64:1:9::1", "www.allowed.test", "A")])
    assert neighbour["rcodes"] == {"fd00:64:1:9::1": "NOERROR"}


def test_a_quarantined_host_cannot_step_to_another_address_of_its_64(host: Host) -> None:
    first = host.ask([("fd00:64:2:2::10", "exfil.undeclared.example", "A")])
    assert first["rcodes"] == {"fd00:64:2:2::10": "NXDOMAIN"}
    [undeclared] = [a for a in host.alerts() if a["kind"] == "undeclared"]
    assert undeclared["client"] == "fd00:64:2:2::10"
    assert undeclared["evidence"]["quarantined"] == "fd00:64:2:2::/64"  # type: ignore[index]
    # The same host, any other address of its /64: still quarantined (the deny action, NXDOMAIN).
    same = host.ask([("fd00:64:2:2::11", "www.allowed.test", "A"), ("fd00:64:2:2:dead:beef:0:1", "www.allowed.test", "A")])
    assert same["rcodes"] == {"fd00:64:2:2::11": "NXDOMAIN", "fd00:64:2:2:dead:beef:0:1": "NXDOMAIN"}
    # Another host (another /64 of the namespace) is served.
    other = host.ask([("fd00:64:2:3::10", "www.allowed.test", "A")])
    assert other["rcodes"] == {"fd00:64:2:3::10": "NOERROR"}


def test_a_channel_spread_over_addresses_of_one_64_is_one_clients_channel(host: Host) -> None:
    """A base32 channel that asks A and AAAA of each name (as a dual-stack SDK does) and sends each
    name from the next of 64 addresses of its /64: per address, each "client" carried 1/64 of it and
    the namespace budget took it for telemetry from a fleet. Counted as one host, its budget flags it."""
    import base64
    import random

    rng = random.Random(5)
    jobs = []
    for i in range(160):
        text = ".".join(base64.b32encode(rng.randbytes(10)).decode().lower().rstrip("=") for _ in range(3))
        source = f"fd00:64:3:2::{i % 64 + 1:x}"
        jobs += [(source, f"{text}.exfil-v6.example", "A"), (source, f"{text}.exfil-v6.example", "AAAA")]
    host.ask(jobs)
    tunnel = [a for a in host.alerts() if a["kind"] == "tunnel" and a["domain"] == "exfil-v6.example"]
    assert tunnel, "the channel was not flagged"
    assert all(str(a["client"]).startswith("fd00:64:3:2::") for a in tunnel)
    first = tunnel[0]
    evidence = first["evidence"]
    assert isinstance(evidence, dict)
    # Flagged on the host's own budget, at the point a single address would have been. Counted per
    # address, only the namespace's unique-name rate caught it, after 100 names, and not at all paced
    # (tests/unit/test_address_owner.py).
    assert (evidence["scope"], evidence["client"]) == ("client", "fd00:64:3:2::/64")
    sent = [name for _, name, qtype in jobs if qtype == "A"]
    assert sent.index(str(first["qname"])) < 70
