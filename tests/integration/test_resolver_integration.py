"""dnsgate between real clients (dig, dnspython) and a real Unbound upstream."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from tests.support.harness import ask
from tests.support.observability import free_tcp_port, http_get, http_post, poll
from tests.support.upstream_servers import (
    Dnsgate,
    Unbound,
    basic_config,
    free_port,
    start_dnsgate,
)

pytestmark = pytest.mark.integration


def dig(port: int, *args: str) -> str:
    out = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(port), "+tries=1", "+time=3", *args],
        capture_output=True, text=True, timeout=20, check=False,
    )
    return out.stdout


@pytest.fixture(scope="module")
def gate(unbound_upstream: Unbound, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dnsgate]:
    port = free_port()
    workdir = tmp_path_factory.mktemp("gate")
    server = start_dnsgate(basic_config(port, unbound_upstream.port), workdir, port)
    yield server
    assert server.stop() == 0


def test_allowed_name_resolves_to_upstream_data_over_udp_and_tcp(gate: Dnsgate) -> None:
    for tcp in (False, True):
        reply = ask(gate.port, "www.allowed.test", tcp=tcp)
        assert reply.rcode() == dns.rcode.NOERROR
        assert [r.address for r in reply.answer[0]] == ["192.0.2.1"]
    out = dig(gate.port, "www.allowed.test", "AAAA", "+short")
    assert out.strip() == "2001:db8::1"


def test_denied_name_is_nxdomain_and_never_reaches_upstream(gate: Dnsgate, unbound_upstream: Unbound) -> None:
    before = unbound_upstream.queries()
    assert "www.allowed.test" in before  # the log does record what is forwarded
    start = len(before)  # the upstream is shared with other tests: look only at what comes now
    reply = ask(gate.port, "denied.test")
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert "status: NXDOMAIN" in dig(gate.port, "sub.denied.test")
    assert "status: NXDOMAIN" in dig(gate.port, "+tcp", "denied.test", "TXT")
    ask(gate.port, "api.allowed.test")  # forwarded after the denials: the log has caught up when it shows
    deadline = time.monotonic() + 5
    while "api.allowed.test" not in unbound_upstream.queries()[start:] and time.monotonic() < deadline:
        time.sleep(0.05)
    seen = unbound_upstream.queries()[start:]
    assert "api.allowed.test" in seen
    assert "denied.test" not in seen
    assert "sub.denied.test" not in seen


def test_policy_alert_is_written_once_per_retry_storm(gate: Dnsgate) -> None:
    for _ in range(5):
        ask(gate.port, "storm.denied.test")
    deadline = time.monotonic() + 5
    alerts: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        alerts = [a for a in gate.alerts() if a["qname"] == "storm.denied.test"]
        if alerts:
            break
        time.sleep(0.05)
    assert len(alerts) == 1
    alert = alerts[0]
    assert alert["kind"] == "policy"
    assert alert["action"] == "blocked"
    assert alert["namespace"] == "agents"
    assert alert["client"] == "127.0.0.1"
    assert alert["qtype"] == "A"
    assert alert["domain"] == "denied.test"
    assert alert["reasons"] == ["not_allowed"]


def test_large_txt_comes_back_whole_through_tcp_fallback(gate: Dnsgate) -> None:
    out = dig(gate.port, "big.allowed.test", "TXT", "+noedns", "+short")
    lines = [ln for ln in out.splitlines() if ln.startswith('"')]
    assert len(lines) == 20
    assert sorted(ln[1:4] for ln in lines) == [f"{i:03d}" for i in range(20)]
    # Over UDP without EDNS the reply cannot fit: the client is told to use TCP.
    reply = ask(gate.port, "big.allowed.test", "TXT")
    assert reply.flags & dns.flags.TC


def test_unknown_client_is_refused(gate: Dnsgate) -> None:
    reply = ask(gate.port, "www.allowed.test", source="127.0.0.2")
    assert reply.rcode() == dns.rcode.REFUSED


def test_cache_serves_patched_ids_and_case(gate: Dnsgate) -> None:
    first = ask(gate.port, "WwW.AlLoWeD.TeSt")
    second = ask(gate.port, "www.ALLOWED.test")
    assert first.question[0].name.to_text() == "WwW.AlLoWeD.TeSt."
    assert second.question[0].name.to_text() == "www.ALLOWED.test."
    assert second.answer[0][0].address == "192.0.2.1"
    assert second.answer[0].ttl <= 300


@pytest.mark.usefixtures("unbound_upstream")
def test_upstream_down_gives_servfail_within_bound(tmp_path: Path) -> None:
    dead = free_port()  # nothing listens here
    port = free_port()
    text = basic_config(port, dead, servfail_after="1.0", upstream_timeout="0.4")
    server = start_dnsgate(text, tmp_path, port, probe="denied.test")
    try:
        started = time.monotonic()
        reply = ask(server.port, "www.allowed.test", timeout=5)
        elapsed = time.monotonic() - started
        assert reply.rcode() == dns.rcode.SERVFAIL
        assert elapsed < 1.8
    finally:
        assert server.stop() == 0


def test_failover_to_second_upstream(unbound_upstream: Unbound, tmp_path: Path) -> None:
    dead = free_port()
    port = free_port()
    text = basic_config(port, dead).replace(
        "upstreams:\n", f"upstreams:\n  - {{address: 127.0.0.1, port: {unbound_upstream.port}}}\n", 1
    )
    # The dead upstream is listed first: answers still come, from the second.
    text = text.replace(
        f"  - {{address: 127.0.0.1, port: {unbound_upstream.port}}}\n  - {{address: 127.0.0.1, port: {dead}}}",
        f"  - {{address: 127.0.0.1, port: {dead}}}\n  - {{address: 127.0.0.1, port: {unbound_upstream.port}}}",
    )
    server = start_dnsgate(text, tmp_path, port, probe="denied.test")
    try:
        for _ in range(5):
            reply = ask(server.port, "api.allowed.test", timeout=5)
            assert reply.rcode() == dns.rcode.NOERROR
    finally:
        assert server.stop() == 0


def test_observe_mode_forwards_and_alerts(unbound_upstream: Unbound, tmp_path: Path) -> None:
    port = free_port()
    server = start_dnsgate(basic_config(port, unbound_upstream.port, mode="observe"), tmp_path, port)
    try:
        reply = ask(server.port, "denied.test")
        assert reply.rcode() == dns.rcode.NOERROR
        assert reply.answer[0][0].address == "192.0.2.66"
        deadline = time.monotonic() + 5
        while not server.alerts() and time.monotonic() < deadline:
            time.sleep(0.05)
        alert = server.alerts()[0]
        assert alert["action"] == "alerted"
        assert alert["qname"] == "denied.test"
    finally:
        assert server.stop() == 0


def test_cname_strict_denies_target_not_allowed(unbound_upstream: Unbound, tmp_path: Path) -> None:
    port = free_port()
    server = start_dnsgate(basic_config(port, unbound_upstream.port, cname_check="strict"), tmp_path, port)
    try:
        assert ask(server.port, "alias.allowed.test").rcode() == dns.rcode.NXDOMAIN
        assert ask(server.port, "www.allowed.test").rcode() == dns.rcode.NOERROR
    finally:
        assert server.stop() == 0
    port = free_port()
    server = start_dnsgate(basic_config(port, unbound_upstream.port), tmp_path, port)
    try:
        reply = ask(server.port, "alias.allowed.test")
        assert reply.rcode() == dns.rcode.NOERROR
        assert any(r.rdtype == dns.rdatatype.CNAME for r in reply.answer)
    finally:
        assert server.stop() == 0


def test_sigterm_exits_zero(unbound_upstream: Unbound, tmp_path: Path) -> None:
    port = free_port()
    server = start_dnsgate(basic_config(port, unbound_upstream.port), tmp_path, port)
    ask(server.port, "www.allowed.test")
    assert server.stop() == 0


def test_workers_share_the_port_and_stop_together(unbound_upstream: Unbound, tmp_path: Path) -> None:
    port = free_port()
    server = start_dnsgate(basic_config(port, unbound_upstream.port) + "workers: 2\n", tmp_path, port)
    try:
        children = subprocess.run(["pgrep", "-P", str(server.proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) == 2
        for i in range(20):
            assert ask(gate_port := server.port, "www.allowed.test").rcode() == dns.rcode.NOERROR
            assert ask(gate_port, f"n{i}.denied.test").rcode() == dns.rcode.NXDOMAIN
    finally:
        assert server.stop() == 0
    assert all(not Path(f"/proc/{pid}").exists() for pid in children)


def _workers_of(server: Dnsgate) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(server.proc.pid)], capture_output=True, text=True, check=False).stdout
    return [int(pid) for pid in out.split()]


@pytest.mark.parametrize("victim", [0, 1])
def test_a_killed_worker_ends_the_service_for_the_supervisor_to_restart(
    unbound_upstream: Unbound, tmp_path: Path, victim: int
) -> None:
    """kill -9 of either worker: the parent notices at once, names the worker, stops the other
    and exits non-zero, rather than serving on half its workers with /healthz still OK."""
    port = free_port()
    server = start_dnsgate(basic_config(port, unbound_upstream.port) + "workers: 2\n", tmp_path, port)
    try:
        workers = poll(lambda: (w if len(w := _workers_of(server)) == 2 else None), what="two workers")
        started = poll(lambda: re.search(r"started 2 workers: (\d+) (\d+)", (tmp_path / "dnsgate.stderr").read_text()),
                       what="the parent's line naming its workers")
        order = [int(started[1]), int(started[2])]
        assert sorted(order) == sorted(workers)
        killed, other = order[victim], order[1 - victim]
        os.kill(killed, signal.SIGKILL)
        poll(lambda: server.proc.poll() is not None, timeout=15, what="dnsgate exited")
        status = server.proc.returncode
    finally:
        server.stop()
    assert status == 1
    log = (tmp_path / "dnsgate.stderr").read_text()
    line = f"worker {victim} (pid {killed}) was killed by signal SIGKILL; stopping the other 1 and exiting with status 1"
    assert sum(line in text for text in log.splitlines()) == 1, log
    assert not Path(f"/proc/{other}").exists()  # the other worker was stopped and reaped, not orphaned
    assert not Path(f"/proc/{killed}").exists()  # no <defunct> left


def test_post_reload_reaches_every_worker(unbound_upstream: Unbound, tmp_path: Path) -> None:
    port, admin_port = free_port(), free_tcp_port()
    text = basic_config(port, unbound_upstream.port) + f"workers: 2\nadmin: {{address: 127.0.0.1, port: {admin_port}}}\n"
    server = start_dnsgate(text, tmp_path, port, env={"DNSGATE_ADMIN_TOKEN": "t0ken"})
    log = tmp_path / "dnsgate.stderr"
    try:
        poll(lambda: _admin_up(admin_port), what="admin HTTP up")
        status, body = http_post(f"http://127.0.0.1:{admin_port}/reload", token="t0ken")
        assert status == 200, body
        # The first worker answered the POST; the other was sent SIGHUP by the parent.
        poll(lambda: "reload by POST /reload: generation 1" in log.read_text(), what="first worker reloaded")
        poll(lambda: "reload by SIGHUP: generation 1" in log.read_text(), what="second worker reloaded")
        assert server.proc.poll() is None
        assert ask(port, "www.allowed.test").rcode() == dns.rcode.NOERROR
    finally:
        assert server.stop() == 0
    assert log.read_text().count("reload by") == 2  # each worker once
    assert "need a restart" not in log.read_text()  # the second worker does not take admin: as changed


def _admin_up(port: int) -> bool:
    try:
        return http_get(f"http://127.0.0.1:{port}/healthz", timeout=0.5)[0] == 200
    except OSError:
        return False


def _udp_sockets_on(port: int) -> int:
    """UDP sockets bound to ``port`` on this host (/proc/net/udp), to know every worker is in the group."""
    lines = Path("/proc/net/udp").read_text().splitlines()[1:]
    return sum(1 for line in lines if int(line.split()[1].rsplit(":", 1)[1], 16) == port)


def test_workers_give_a_client_one_rate_limit_whatever_its_source_ports(
    unbound_upstream: Unbound, tmp_path: Path
) -> None:
    """With `workers: 2` each client address is steered to one worker, so a flooder that
    changes its source port on every query still meets one token bucket, not one per worker."""
    port = free_port()
    flooder = "127.0.0.9"
    extra = ("  flood:\n    clients: [127.0.0.9/32]\n    allow: [www.allowed.test]\n"
             "    rate_limit: {qps: 1, burst: 30, slip: 1}\n")
    server = start_dnsgate(basic_config(port, unbound_upstream.port, extra) + "workers: 2\n", tmp_path, port)
    try:
        poll(lambda: _udp_sockets_on(port) == 2, what="both workers bound")
        answered = limited = 0
        started = time.monotonic()
        for i in range(150):
            query = dns.message.make_query("www.allowed.test", "A")
            query.id = i
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind((flooder, 0))  # a fresh source port each time
                sock.settimeout(3)
                sock.sendto(query.to_wire(), ("127.0.0.1", port))
                reply = dns.message.from_wire(sock.recv(4096))
            if reply.flags & dns.flags.TC:
                limited += 1
            else:
                assert reply.rcode() == dns.rcode.NOERROR
                answered += 1
        elapsed = time.monotonic() - started
        # One bucket: its burst plus what one query a second refills. Two buckets
        # (the kernel's 4-tuple hash) would answer about twice the burst.
        assert answered <= 30 + elapsed + 1, (answered, elapsed)
        assert answered >= 30
        assert limited == 150 - answered
        assert ask(port, "www.allowed.test").rcode() == dns.rcode.NOERROR  # another client is served
    finally:
        assert server.stop() == 0


def test_ipv6_listener_and_listener_bound_namespace(unbound_upstream: Unbound, tmp_path: Path) -> None:
    port, bound_port = free_port(), free_port()
    text = basic_config(port, unbound_upstream.port).replace(
        "listen:\n",
        f"listen:\n  - {{address: '::1', port: {port}}}\n  - {{address: 127.0.0.1, port: {bound_port}, namespace: open}}\n",
        1,
    ).replace("clients: [127.0.0.1/32]", "clients: [127.0.0.1/32, '::1/128']") + "  open:\n    mode: enforce\n    allow: [denied.test]\n"
    server = start_dnsgate(text, tmp_path, port)
    try:
        query = dns.message.make_query("www.allowed.test", "A")
        reply = dns.query.udp(query, "::1", port=port, timeout=3)
        assert reply.rcode() == dns.rcode.NOERROR
        assert reply.answer[0][0].address == "192.0.2.1"
        reply = dns.query.tcp(query, "::1", port=port, timeout=3)
        assert reply.rcode() == dns.rcode.NOERROR
        assert ask(port, "denied.test").rcode() == dns.rcode.NXDOMAIN
        # On the bound listener every client is in `open`, whatever its address.
        assert ask(bound_port, "denied.test").answer[0][0].address == "192.0.2.66"
        assert ask(bound_port, "www.allowed.test").rcode() == dns.rcode.NXDOMAIN
    finally:
        assert server.stop() == 0
