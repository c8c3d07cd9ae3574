"""Hot reload of a real dnsgate process under a steady query load.

The policy is swapped ten times, by SIGHUP, by ``POST /reload`` and by editing
the config or its RPZ zone (the watcher), two of them with invalid files.
No query may go unanswered or get SERVFAIL; each valid swap's allowlist must
apply; an invalid swap must change nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest

from tests.support.harness import ask
from tests.support.observability import free_tcp_port, http_get, http_post, metric_value, poll
from tests.support.upstream_servers import ROOT, Dnsgate, Unbound, free_port, start_dnsgate, wait_for_dns

pytestmark = pytest.mark.integration

ADMIN_TOKEN = "reload-test-token"
RPZ_HEAD = """$ORIGIN rpz.local.
$TTL 60
@ SOA localhost. hostmaster.localhost. 1 3600 600 86400 60
@ NS localhost.
"""
RPZ_BLOCK_API = "api.allowed.test CNAME .\n"
RPZ_BROKEN = "api.allowed.test CNAME\n"  # no target: not a valid zone


def config_text(port: int, upstream: int, admin: int, allow_api: bool, broken: bool = False) -> str:
    allow = ["www.allowed.test"] + (["api.allowed.test"] if allow_api else [])
    return f"""
listen:
  - {{address: 127.0.0.1, port: {port}}}
upstreams:
  - {{address: 127.0.0.1, port: {upstream}}}
admin: {{address: 127.0.0.1, port: {admin}, token_file: admin.token}}
unknown_clients: refuse
alerts:
  - {{type: jsonl, path: alerts.jsonl}}
namespaces:
  agents:
    clients: [127.0.0.1/32]
    mode: {"enforcing" if broken else "enforce"}
    allow: {json.dumps(allow)}
    rpz: [policy.rpz]
"""


def rcode_of(port: int, name: str) -> int:
    return int(ask(port, name).rcode())


@dataclass
class Load:
    """A client sending a steady stream of queries (bounded) from a thread."""

    port: int
    limit: int = 50_000
    results: Counter[tuple[str, str]] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        names = ("www.allowed.test", "api.allowed.test")
        for i in range(self.limit):
            if self.stop.is_set():
                return
            name = names[i % 2]
            try:
                rcode = dns.rcode.to_text(rcode_of(self.port, name))  # type: ignore[arg-type]
            except (dns.exception.Timeout, OSError) as exc:
                self.failures.append(f"{name}: {type(exc).__name__}")
                continue
            self.results[(name, rcode)] += 1
            if rcode == "SERVFAIL" or (name == "www.allowed.test" and rcode != "NOERROR"):
                self.failures.append(f"{name}: {rcode}")


class Gate:
    def __init__(self, dnsgate: Dnsgate, workdir: Path, upstream: int, admin: int) -> None:
        self.dnsgate = dnsgate
        self.workdir = workdir
        self.upstream = upstream
        self.admin = admin

    def metric(self, name: str, **labels: str) -> float:
        status, body = http_get(f"http://127.0.0.1:{self.admin}/metrics")
        assert status == 200
        return metric_value(body.decode(), name, **labels) or 0.0

    def write_config(self, allow_api: bool, broken: bool = False) -> None:
        text = config_text(self.dnsgate.port, self.upstream, self.admin, allow_api, broken)
        self.dnsgate.config_path.write_text(text)

    def write_zone(self, body: str) -> None:
        (self.workdir / "policy.rpz").write_text(RPZ_HEAD + body)

    def sighup(self) -> None:
        self.dnsgate.proc.send_signal(signal.SIGHUP)

    def post_reload(self) -> None:
        http_post(f"http://127.0.0.1:{self.admin}/reload", token=ADMIN_TOKEN)


def start_gate(unbound: Unbound, workdir: Path) -> Gate:
    port, admin = free_port(), free_tcp_port()
    (workdir / "policy.rpz").write_text(RPZ_HEAD)
    (workdir / "admin.token").write_text(ADMIN_TOKEN + "\n")
    dnsgate = start_dnsgate(config_text(port, unbound.port, admin, allow_api=True), workdir, port)
    gate = Gate(dnsgate, workdir, unbound.port, admin)
    poll(lambda: _admin_up(admin), what="admin HTTP up")
    return gate


def _admin_up(port: int) -> bool:
    try:
        return http_get(f"http://127.0.0.1:{port}/healthz", timeout=0.5)[0] == 200
    except OSError:
        return False


def test_ten_swaps_under_load(unbound_upstream: Unbound, tmp_path: Path) -> None:
    gate = start_gate(unbound_upstream, tmp_path)
    load = Load(gate.dnsgate.port)
    client = threading.Thread(target=load.run, daemon=True)
    client.start()
    nothing = lambda: None  # noqa: E731 - the watcher is the trigger
    # (what the swap writes, how it is triggered, valid?, is api.allowed.test allowed after it?)
    swaps: list[tuple[Callable[[], None], Callable[[], None], bool, bool]] = [
        (lambda: gate.write_config(allow_api=False), gate.post_reload, True, False),
        (lambda: gate.write_config(allow_api=True), gate.sighup, True, True),
        (lambda: gate.write_config(allow_api=False), nothing, True, False),
        (lambda: gate.write_config(allow_api=True, broken=True), gate.sighup, False, False),
        (lambda: gate.write_config(allow_api=True), nothing, True, True),
        (lambda: gate.write_zone(RPZ_BLOCK_API), nothing, True, False),
        (lambda: gate.write_zone(RPZ_BROKEN), gate.post_reload, False, False),
        (lambda: gate.write_zone(""), gate.post_reload, True, True),
        (lambda: gate.write_config(allow_api=False), gate.sighup, True, False),
        (lambda: gate.write_config(allow_api=True), nothing, True, True),
    ]
    try:
        assert rcode_of(gate.dnsgate.port, "api.allowed.test") == dns.rcode.NOERROR
        for number, (write, trigger, valid, api_allowed) in enumerate(swaps, 1):
            ok, failed = gate.metric("dnsgate_reloads_total", result="ok"), gate.metric(
                "dnsgate_reloads_total", result="failed"
            )
            generation = gate.metric("dnsgate_config_generation")
            write()
            trigger()
            if valid:
                poll(lambda: gate.metric("dnsgate_reloads_total", result="ok") > ok,  # noqa: B023
                     what=f"swap {number} applied")
                assert gate.metric("dnsgate_config_generation") > generation
                assert gate.metric("dnsgate_config_last_reload_successful") == 1.0
            else:
                poll(lambda: gate.metric("dnsgate_reloads_total", result="failed") > failed,  # noqa: B023
                     what=f"swap {number} rejected")
                assert gate.metric("dnsgate_config_generation") == generation
                assert gate.metric("dnsgate_config_last_reload_successful") == 0.0
            expected = dns.rcode.NOERROR if api_allowed else dns.rcode.NXDOMAIN
            assert rcode_of(gate.dnsgate.port, "api.allowed.test") == expected, f"after swap {number}"
            assert rcode_of(gate.dnsgate.port, "www.allowed.test") == dns.rcode.NOERROR
    finally:
        load.stop.set()
        client.join(30)
        code = gate.dnsgate.stop()
    assert code == 0
    assert not load.failures, load.failures[:10]
    answered = sum(load.results.values())
    assert answered >= 100, load.results
    assert load.results[("api.allowed.test", "NOERROR")]
    assert load.results[("api.allowed.test", "NXDOMAIN")]
    log = (tmp_path / "dnsgate.stderr").read_text()
    # Rejected files are reported with file, line and key.
    assert f"{tmp_path / 'dnsgate.yaml'}:" in log
    assert "namespaces.agents.mode: must be one of" in log
    assert f"{tmp_path / 'policy.rpz'}:" in log


def test_restart_only_changes_are_reported(unbound_upstream: Unbound, tmp_path: Path) -> None:
    gate = start_gate(unbound_upstream, tmp_path)
    try:
        old_port = gate.dnsgate.port
        text = config_text(free_port(), free_port(), gate.admin, allow_api=False)
        gate.dnsgate.config_path.write_text(text)
        status, body = http_post(f"http://127.0.0.1:{gate.admin}/reload", token=ADMIN_TOKEN)
        assert status == 200
        assert json.loads(body)["ok"] is True
        # The policy applied; the old listener and upstream stay until a restart.
        assert rcode_of(old_port, "api.allowed.test") == dns.rcode.NXDOMAIN
        assert rcode_of(old_port, "www.allowed.test") == dns.rcode.NOERROR
    finally:
        assert gate.dnsgate.stop() == 0
    log = (tmp_path / "dnsgate.stderr").read_text()
    assert "listen addresses changed" in log
    assert "restart dnsgate to apply them" in log
    assert "changes to upstreams need a restart" in log


def test_post_reload_reports_the_error(unbound_upstream: Unbound, tmp_path: Path) -> None:
    gate = start_gate(unbound_upstream, tmp_path)
    try:
        gate.write_config(allow_api=False, broken=True)
        status, body = http_post(f"http://127.0.0.1:{gate.admin}/reload", token=ADMIN_TOKEN)
        result = json.loads(body)
        assert status == 422
        assert result["ok"] is False
        assert result["generation"] == 0
        line = gate.dnsgate.config_path.read_text().splitlines().index("    mode: enforcing") + 1
        assert result["error"].startswith(f"{gate.dnsgate.config_path}:{line}: namespaces.agents.mode:")
        assert rcode_of(gate.dnsgate.port, "api.allowed.test") == dns.rcode.NOERROR  # old policy kept
    finally:
        assert gate.dnsgate.stop() == 0


def test_sighup_reopens_the_jsonl_file_for_logrotate(unbound_upstream: Unbound, tmp_path: Path) -> None:
    gate = start_gate(unbound_upstream, tmp_path)
    try:
        rcode_of(gate.dnsgate.port, "before.denied.test")
        alerts = tmp_path / "alerts.jsonl"
        poll(lambda: alerts.exists() and "before.denied.test" in alerts.read_text(), what="first alert")
        alerts.rename(tmp_path / "alerts.jsonl.1")
        generation = gate.metric("dnsgate_config_generation")
        gate.sighup()
        poll(lambda: gate.metric("dnsgate_config_generation") > generation, what="SIGHUP handled")
        rcode_of(gate.dnsgate.port, "after.denied.test")
        poll(lambda: alerts.exists() and "after.denied.test" in alerts.read_text(), what="alert in new file")
        assert "after.denied.test" not in (tmp_path / "alerts.jsonl.1").read_text()
    finally:
        assert gate.dnsgate.stop() == 0


def test_a_reload_keeps_what_the_command_line_set(unbound_upstream: Unbound, tmp_path: Path) -> None:
    # serve --listen P overrides the file's listen address; a reload reads the file
    # again and must neither move back to the file's address nor warn about it.
    (tmp_path / "policy.rpz").write_text(RPZ_HEAD)
    (tmp_path / "admin.token").write_text(ADMIN_TOKEN + "\n")
    config = tmp_path / "dnsgate.yaml"
    admin, listen = free_tcp_port(), free_port()
    config.write_text(config_text(free_port(), unbound_upstream.port, admin, allow_api=True))
    with open(tmp_path / "dnsgate.stderr", "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "resolver.cli", "serve", "--config", str(config), "--listen", f"127.0.0.1:{listen}"],
            stdout=subprocess.DEVNULL, stderr=stderr, cwd=ROOT, env=dict(os.environ),
        )
    try:
        wait_for_dns(listen, name="www.allowed.test", proc=proc)
        assert rcode_of(listen, "api.allowed.test") == dns.rcode.NOERROR
        config.write_text(config_text(free_port(), unbound_upstream.port, admin, allow_api=False))
        proc.send_signal(signal.SIGHUP)
        poll(lambda: rcode_of(listen, "api.allowed.test") == dns.rcode.NXDOMAIN, what="the new policy on --listen")
        assert rcode_of(listen, "www.allowed.test") == dns.rcode.NOERROR
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    log = (tmp_path / "dnsgate.stderr").read_text()
    assert "reloaded" in log
    assert "listen addresses changed" not in log
