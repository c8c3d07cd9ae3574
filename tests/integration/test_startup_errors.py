"""Why dnsgate cannot start, in one line with exit status 2: the real CLI in a subprocess."""

from __future__ import annotations

import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.harness import free_port
from tests.support.upstream_servers import ROOT

pytestmark = pytest.mark.integration


def dnsgate(*args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    launcher = []
    if user is not None:
        entry = pwd.getpwnam(user)
        launcher = ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups"]
    return subprocess.run([*launcher, sys.executable, "-m", "resolver.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one line dnsgate printed for the failure (log lines before it are info)."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("dnsgate: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "dnsgate.yaml"
    path.write_text("upstreams: [{address: 127.0.0.1, port: 9}]\n"
                    "namespaces: {vm: {clients: [127.0.0.1/32]}}\n")
    return path


@pytest.fixture
def busy_port() -> Iterator[int]:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
        udp.bind(("127.0.0.1", port))
        tcp.bind(("127.0.0.1", port))
        tcp.listen()
        yield port


def test_listen_port_in_use(config: Path, busy_port: int) -> None:
    line = error_line(dnsgate("serve", "--config", str(config), "--listen", f"127.0.0.1:{busy_port}"))
    assert line == f"dnsgate: cannot listen on 127.0.0.1 port {busy_port}/udp: Address already in use"


def test_admin_port_in_use(config: Path, busy_port: int) -> None:
    config.write_text(config.read_text() + f"admin: {{address: 127.0.0.1, port: {busy_port}}}\n")
    line = error_line(dnsgate("serve", "--config", str(config), "--listen", f"127.0.0.1:{free_port()}"))
    assert line == f"dnsgate: admin: cannot listen on 127.0.0.1 port {busy_port}/tcp: Address already in use"


def test_port_53_without_privileges(config: Path) -> None:
    with tempfile.TemporaryDirectory() as readable:  # pytest's tmp_path sits under a 0700 directory
        Path(readable).chmod(0o755)
        shutil.copy(config, readable)
        result = dnsgate("serve", "--config", f"{readable}/dnsgate.yaml", "--listen", "127.0.0.1:53", user="nobody")
    line = error_line(result)
    assert line.startswith("dnsgate: cannot listen on 127.0.0.1 port 53/udp: Permission denied")
    assert "CAP_NET_BIND_SERVICE" in line


@pytest.mark.parametrize(("listen", "expected"), [
    ("127.0.0.1", "write ADDR:PORT"),
    ("localhost:5353", "'localhost' is not an IP address"),
    ("127.0.0.1:99999", "the port must be 0..65535"),
    ("::1:53", "write ADDR:PORT"),
])
def test_bad_listen(config: Path, listen: str, expected: str) -> None:
    line = error_line(dnsgate("serve", "--config", str(config), "--listen", listen))
    assert line.startswith(f"dnsgate: --listen {listen!r}: ")
    assert expected in line


def test_unreadable_config(tmp_path: Path) -> None:
    missing = tmp_path / "absent.yaml"
    assert error_line(dnsgate("serve", "--config", str(missing))) == \
        f"dnsgate: {missing}: cannot read: No such file or directory"


def test_unknown_user(config: Path) -> None:
    line = error_line(dnsgate("serve", "--config", str(config), "--user", "no-such-user-here",
                              "--listen", f"127.0.0.1:{free_port()}"))
    assert line.startswith("dnsgate: user 'no-such-user-here' does not exist")


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = dnsgate("--debug", "serve", "--config", str(tmp_path / "absent.yaml"))
    assert result.returncode != 0
    assert "Traceback" in result.stderr


def test_version() -> None:
    result = dnsgate("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("dnsgate 0.")


def test_unknown_user_from_the_config(config: Path) -> None:
    config.write_text(config.read_text() + "user: no-such-user-here\n")
    line = error_line(dnsgate("serve", "--config", str(config), "--listen", f"127.0.0.1:{free_port()}"))
    assert line == "dnsgate: user 'no-such-user-here' does not exist (create it, or change user: / --user)"
