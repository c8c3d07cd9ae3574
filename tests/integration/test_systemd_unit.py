"""deploy/systemd/dnsgate.service: systemd-analyze accepts it, and its exposure stays where the docs say.

Run against a scratch root holding the documented install layout
(/opt/dnsgate/bin/dnsgate, /etc/dnsgate) and the host's systemd target units,
so nothing is installed on the machine itself.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "systemd" / "dnsgate.service"
DOCUMENTED_EXPOSURE = 1.9  # docs/operations.md#vm-daemon
SYSTEM_UNITS = Path("/usr/lib/systemd/system")


@pytest.fixture
def scratch_root(tmp_path: Path) -> Path:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is needed (Debian package systemd)")
    units = tmp_path / "usr/lib/systemd/system"
    units.mkdir(parents=True)
    for pattern in ("*.target", "*.slice"):
        for unit in SYSTEM_UNITS.glob(pattern):
            if unit.is_file():
                shutil.copy(unit, units / unit.name)
    (tmp_path / "opt/dnsgate/bin").mkdir(parents=True)
    (tmp_path / "opt/dnsgate/bin/dnsgate").write_text("#!/bin/sh\n")
    (tmp_path / "opt/dnsgate/bin/dnsgate").chmod(0o755)
    (tmp_path / "usr/bin").mkdir(parents=True)
    shutil.copy(shutil.which("kill") or "/usr/bin/kill", tmp_path / "usr/bin/kill")
    (tmp_path / "etc/dnsgate").mkdir(parents=True)
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, tmp_path / "etc/systemd/system/dnsgate.service")
    return tmp_path


def analyze(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", *args, f"--root={root}", "/etc/systemd/system/dnsgate.service"],
                          capture_output=True, text=True, timeout=60)


def test_verify_accepts_the_unit(scratch_root: Path) -> None:
    result = analyze(scratch_root, "verify")
    assert result.returncode == 0, result.stderr
    assert "dnsgate.service" not in result.stderr, result.stderr


def test_the_unit_runs_what_the_install_steps_install() -> None:
    text = UNIT.read_text()
    assert "ExecStart=/opt/dnsgate/bin/dnsgate serve --config /etc/dnsgate/dnsgate.yaml" in text
    docs = (ROOT / "docs" / "operations.md").read_text()
    assert "python3 -m venv /opt/dnsgate" in docs
    assert "/etc/dnsgate/dnsgate.yaml" in docs


def test_security_exposure_is_the_documented_figure(scratch_root: Path) -> None:
    result = analyze(scratch_root, "security", "--offline=yes")
    assert result.returncode == 0, result.stderr
    found = re.search(r"Overall exposure level for dnsgate\.service: ([0-9.]+) (\w+)", result.stdout)
    assert found is not None, result.stdout
    assert float(found.group(1)) == DOCUMENTED_EXPOSURE
    assert f"{DOCUMENTED_EXPOSURE} {found.group(2)}" in (ROOT / "docs" / "operations.md").read_text()


def directives() -> dict[str, list[str]]:
    """The unit's Key=value lines (comments skipped), each key with every value it is given."""
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def test_the_unit_keeps_its_hardening() -> None:
    unit = directives()

    def single(key: str) -> str:
        assert len(unit.get(key, [])) == 1, f"{key}: {unit.get(key)}"
        return unit[key][0]

    assert single("DynamicUser") == "yes"
    assert single("AmbientCapabilities") == "CAP_NET_BIND_SERVICE"  # port 53, nothing else
    assert single("CapabilityBoundingSet") == "CAP_NET_BIND_SERVICE"
    assert single("NoNewPrivileges") == "yes"
    assert single("ProtectSystem") == "strict"
    assert single("ProtectHome") == "yes"
    assert single("PrivateTmp") == "yes"
    assert single("PrivateDevices") == "yes"
    assert set(single("RestrictAddressFamilies").split()) <= {"AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"}
    assert "@system-service" in unit["SystemCallFilter"]
    # A dead worker ends the service with a non-zero status (docs/operations.md "Several workers"): restart it.
    assert single("Restart") == "on-failure"
    assert re.fullmatch(r"[0-9]+[KMG]?", single("MemoryMax"))
    # Room for tcp_max_connections (256 by default) and the admin cap, well past systemd's soft 1024.
    assert int(single("LimitNOFILE")) >= 65536
    assert single("LogsDirectory") == "dnsgate"  # where the documented jsonl alert file goes
    assert "/var/log/dnsgate/" in (ROOT / "docs" / "operations.md").read_text()
