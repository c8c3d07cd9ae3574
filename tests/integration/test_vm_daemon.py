"""End to end: dnsgate as the resolver of a "VM", on port 53, unprivileged once bound.

The VM is a network namespace whose ``/etc/netns/<vm>/resolv.conf`` names
127.0.0.1: glibc lookups there (``getent``) go to dnsgate on port 53, and
dnsgate forwards to a real Unbound in the same namespace. dnsgate is started
the two ways a VM starts it:

- as root with ``--user nobody`` (binds, then setuid, empty capability sets);
- as an unprivileged user holding only CAP_NET_BIND_SERVICE as an ambient
  capability, as systemd's ``DynamicUser=yes`` + ``AmbientCapabilities=`` do
  (binds, then gives the capability up).

Either way every thread of the serving process has uid != 0, no capabilities
and no_new_privs, read from /proc.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.test_pod_netns import sh, wait_in_ns
from tests.support.upstream_servers import ROOT, UPSTREAM_RECORDS, Unbound, ensure_packages

pytestmark = pytest.mark.integration

UPSTREAM_PORT = 5300


@dataclass
class Vm:
    ns: str
    work: Path
    unbound: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def vm() -> Iterator[Vm]:
    ensure_packages("ip", "unbound", "dig")
    ns = f"dgvm{os.getpid() % 100000}"
    # Not under pytest's 0700 basetemp: the dropped user must read the config and write alerts.
    work = Path(tempfile.mkdtemp(prefix="dnsgate-vm-"))
    work.chmod(0o755)
    netns_etc = Path("/etc/netns") / ns
    unbound: subprocess.Popen[bytes] | None = None
    try:
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        Unbound(UPSTREAM_PORT, work).write_config(UPSTREAM_RECORDS)
        unbound = subprocess.Popen(["ip", "netns", "exec", ns, "unbound", "-d", "-c", str(work / "unbound.conf")],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_in_ns(ns, UPSTREAM_PORT, unbound)
        netns_etc.mkdir(parents=True, exist_ok=True)
        (netns_etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:2\n")
        yield Vm(ns, work, unbound)
    finally:
        if unbound is not None and unbound.poll() is None:
            unbound.terminate()
            unbound.wait(10)
        shutil.rmtree(netns_etc, ignore_errors=True)
        sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(work, ignore_errors=True)


def start_gate(vm: Vm, launcher: list[str], cli_args: list[str]) -> subprocess.Popen[bytes]:
    nobody = pwd.getpwnam("nobody")
    alerts = vm.work / "alerts.jsonl"
    alerts.touch()
    os.chown(alerts, nobody.pw_uid, nobody.pw_gid)
    (vm.work / "dnsgate.yaml").write_text(f"""
listen: [{{address: 127.0.0.1, port: 53}}]
upstreams: [{{address: 127.0.0.1, port: {UPSTREAM_PORT}}}]
alerts: [{{type: jsonl, path: alerts.jsonl}}]
namespaces:
  vm:
    clients: [127.0.0.1/32]
    allow: [www.allowed.test, api.allowed.test]
""")
    gate = subprocess.Popen(
        ["ip", "netns", "exec", vm.ns, *launcher, sys.executable, "-m", "resolver.cli", "serve",
         "--config", str(vm.work / "dnsgate.yaml"), *cli_args],
        cwd=ROOT, stderr=open(vm.work / "dnsgate.stderr", "wb"),  # noqa: SIM115
    )
    wait_in_ns(vm.ns, 53, gate)
    return gate


def stop(gate: subprocess.Popen[bytes]) -> int:
    gate.terminate()
    try:
        return gate.wait(15)
    except subprocess.TimeoutExpired:
        gate.kill()
        return gate.wait()


def process_status(pid: int) -> list[dict[str, str]]:
    """The /proc status fields of every thread of the process."""
    threads = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = {}
        for line in (task / "status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        threads.append(fields)
    return threads


def assert_unprivileged(pid: int, bounding_empty: bool) -> None:
    nobody = pwd.getpwnam("nobody")
    threads = process_status(pid)
    assert threads
    for status in threads:
        assert status["Uid"].split() == [str(nobody.pw_uid)] * 4
        assert status["Gid"].split() == [str(nobody.pw_gid)] * 4
        assert status["Groups"] == ""
        for capset in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
            assert int(status[capset], 16) == 0, (capset, status[capset])
        if bounding_empty:
            assert int(status["CapBnd"], 16) == 0
        assert status["NoNewPrivs"] == "1"


def glibc_lookup(vm: Vm, name: str) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", vm.ns, "getent", "ahosts", name, check=False)


def test_root_start_drops_to_user_and_glibc_resolves_through_port_53(vm: Vm) -> None:
    gate = start_gate(vm, [], ["--user", "nobody"])
    try:
        # `ip netns exec` execs in place, so this pid is dnsgate itself.
        assert_unprivileged(gate.pid, bounding_empty=True)
        allowed = glibc_lookup(vm, "www.allowed.test")
        assert allowed.returncode == 0, allowed.stderr
        assert "192.0.2.1" in allowed.stdout, allowed.stderr
        denied = glibc_lookup(vm, "denied.test")
        assert denied.returncode == 2
        assert denied.stdout == ""
        assert "denied.test" in (vm.work / "alerts.jsonl").read_text()  # written after the drop
        assert_unprivileged(gate.pid, bounding_empty=True)  # threads started while serving too
    finally:
        assert stop(gate) == 0
    log = (vm.work / "dnsgate.stderr").read_text()
    assert "privileges dropped: running as nobody" in log
    assert f"upstream 127.0.0.1:{UPSTREAM_PORT} (from {vm.work / 'dnsgate.yaml'}:3)" in log


def test_ambient_capability_start_gives_the_capability_up(vm: Vm) -> None:
    nobody = pwd.getpwnam("nobody")
    # What systemd does for DynamicUser=yes with AmbientCapabilities=CAP_NET_BIND_SERVICE.
    launcher = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
                "--inh-caps=+net_bind_service", "--ambient-caps=+net_bind_service"]
    gate = start_gate(vm, launcher, [])
    try:
        allowed = glibc_lookup(vm, "api.allowed.test")
        assert allowed.returncode == 0, allowed.stderr
        assert "192.0.2.2" in allowed.stdout, allowed.stderr
        assert_unprivileged(gate.pid, bounding_empty=False)
    finally:
        assert stop(gate) == 0
