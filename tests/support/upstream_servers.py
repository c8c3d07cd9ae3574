"""Fixtures: a real Unbound upstream and real dnsgate processes on free loopback ports.

Unbound serves a zone the test writes (local-data) and logs every query it
receives, so a test can prove a denied name never reached the upstream.
Readiness is a successful DNS answer, never a sleep.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from tests.support.harness import ensure_packages, free_port, stop_process, wait_for_dns

ROOT = Path(__file__).resolve().parents[2]

UPSTREAM_RECORDS = [
    'www.allowed.test. 300 IN A 192.0.2.1',
    'www.allowed.test. 300 IN AAAA 2001:db8::1',
    'api.allowed.test. 300 IN A 192.0.2.2',
    'denied.test. 300 IN A 192.0.2.66',
    'sub.denied.test. 300 IN A 192.0.2.67',
    'alias.allowed.test. 300 IN CNAME target.elsewhere.test.',
    'target.elsewhere.test. 300 IN A 192.0.2.77',
] + [
    f'big.allowed.test. 300 IN TXT "{i:03d}-{"x" * 200}"' for i in range(20)
]


@dataclass
class Unbound:
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.workdir / "unbound.log"

    def write_config(self, records: list[str]) -> None:
        lines = [
            "server:",
            f"  interface: 127.0.0.1@{self.port}",
            "  do-daemonize: no",
            "  chroot: \"\"",
            "  username: \"\"",
            f"  directory: \"{self.workdir}\"",
            f"  logfile: \"{self.log}\"",
            f"  pidfile: \"{self.workdir}/unbound.pid\"",
            "  use-syslog: no",
            "  log-queries: yes",
            "  verbosity: 1",
            "  num-threads: 1",
            "  access-control: 127.0.0.0/8 allow",
            "  do-ip6: no",
            "  module-config: \"iterator\"",
            "  local-zone: \"test.\" static",
            "  local-zone: \"example.\" static",
        ]
        lines += [f"  local-data: '{r}'" for r in records]
        (self.workdir / "unbound.conf").write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        self.log.write_text("")
        self.proc = subprocess.Popen(
            ["unbound", "-d", "-c", str(self.workdir / "unbound.conf")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        wait_for_dns(self.port, proc=self.proc)

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def queries(self) -> list[str]:
        """Names the upstream was asked for, from its query log (lowercased, no trailing dot)."""
        names = []
        for line in self.log.read_text(errors="replace").splitlines():
            if " info: " in line and " IN" in line:
                parts = line.split(" info: ", 1)[1].split()
                if len(parts) >= 3:
                    names.append(parts[1].rstrip(".").lower())
        return names


@pytest.fixture(scope="session")
def unbound_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Unbound]:
    ensure_packages("unbound", "dig")
    server = Unbound(free_port(), tmp_path_factory.mktemp("unbound"))
    server.write_config(UPSTREAM_RECORDS)
    server.start()
    yield server
    server.stop()


@dataclass
class Dnsgate:
    """A dnsgate process on a free port."""

    port: int
    config_path: Path
    proc: subprocess.Popen[bytes]
    alerts_path: Path

    def alerts(self) -> list[dict[str, object]]:
        import json

        if not self.alerts_path.exists():
            return []
        return [json.loads(line) for line in self.alerts_path.read_text().splitlines() if line.strip()]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


def start_dnsgate(config_text: str, workdir: Path, port: int, probe: str = "www.allowed.test", address: str = "127.0.0.1",
                  env: dict[str, str] | None = None, nofile: tuple[int, int] | None = None) -> Dnsgate:
    """``nofile``: start it under these soft and hard RLIMIT_NOFILE (prlimit execs dnsgate: same pid)."""
    config_path = workdir / "dnsgate.yaml"
    config_path.write_text(config_text)
    stderr = open(workdir / "dnsgate.stderr", "wb")  # noqa: SIM115
    limit = ["prlimit", f"--nofile={nofile[0]}:{nofile[1]}", "--"] if nofile is not None else []
    proc = subprocess.Popen(
        [*limit, sys.executable, "-m", "resolver.cli", "serve", "--config", str(config_path)],
        stdout=subprocess.DEVNULL, stderr=stderr, cwd=ROOT, env={**os.environ, **(env or {})},
    )
    try:
        wait_for_dns(port, name=probe, proc=proc, address=address)
    except Exception:  # noqa: BLE001
        proc.kill()
        raise RuntimeError((workdir / "dnsgate.stderr").read_text()) from None
    return Dnsgate(port, config_path, proc, workdir / "alerts.jsonl")


def basic_config(port: int, upstream_port: int, extra_namespaces: str = "", **over: str) -> str:
    """A config with namespace `agents` for 127.0.0.1 allowing *.allowed.test."""
    text = f"""
listen:
  - {{address: 127.0.0.1, port: {port}}}
upstreams:
  - {{address: 127.0.0.1, port: {upstream_port}}}
upstream_timeout: {over.get('upstream_timeout', '0.5')}
servfail_after: {over.get('servfail_after', '1.5')}
unknown_clients: refuse
cname_check: {over.get('cname_check', 'log')}
alerts:
  - {{type: jsonl, path: alerts.jsonl}}
namespaces:
  agents:
    clients: [127.0.0.1/32]
    mode: {over.get('mode', 'enforce')}
    allow: [www.allowed.test, api.allowed.test, big.allowed.test, alias.allowed.test, "*.wild.test"]
{over.get('agents_extra', '')}
{extra_namespaces}
"""
    return text


def rcode_of(reply: dns.message.Message) -> str:
    return dns.rcode.to_text(reply.rcode())
