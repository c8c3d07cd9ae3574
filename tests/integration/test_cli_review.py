"""Bad input and odd outputs at the console command: one line naming the problem, never a
traceback, and exit statuses that keep their documented meaning.

Each case runs the real ``dnsgate`` command (``python -m resolver.cli``) as a
subprocess: a closed stdout, a capture whose timestamps are out of range or
reversed, files that are not UTF-8 or not regular files.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TUNNEL = ROOT / "tests" / "data" / "tunnels" / "synth_hex16.pcap"  # one tunnel: alerts on stdout
BENIGN = ROOT / "tests" / "data" / "captures" / "eth.pcap"  # no alert at all
HOSTS = ROOT / "tests" / "data" / "declared" / "hosts.txt"
STDOUT_CLOSED = 141


def dnsgate(*args: str, closed_stdout: bool = False, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run the command; with ``closed_stdout``, stdout is a pipe whose reader is already gone."""
    if not closed_stdout:
        return subprocess.run([sys.executable, "-m", "resolver.cli", *args], capture_output=True, text=True,
                              cwd=cwd, timeout=120)
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "resolver.cli", *args], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, cwd=cwd, timeout=120)
    finally:
        os.close(write_end)
    return subprocess.CompletedProcess(done.args, done.returncode, "", done.stderr)


def no_traceback(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stderr, done.stderr
    assert "Exception ignored" not in done.stderr, done.stderr


# --- a closed stdout -----------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    ("replay", str(TUNNEL)),
    ("replay", str(TUNNEL), "--format", "table"),
    ("replay", str(TUNNEL), "--sweep", "unique_short=1,2", "--jobs", "1"),
    ("propose", str(TUNNEL)),
    ("diff", "--declared", str(HOSTS), "--", str(TUNNEL)),
    ("check-config", "zones/default.yaml"),
    ("import", str(HOSTS)),
])
def test_a_closed_stdout_ends_quietly_with_its_own_status(args: tuple[str, ...]) -> None:
    done = dnsgate(*args, closed_stdout=True)
    no_traceback(done)
    assert done.returncode == STDOUT_CLOSED, done.stderr


def test_a_closed_stdout_nothing_was_written_to_keeps_the_status() -> None:
    # No alert to write: nothing was lost, so the replay's own status (0: queries were replayed).
    done = dnsgate("replay", str(BENIGN), closed_stdout=True)
    no_traceback(done)
    assert done.returncode == 0, done.stderr
    assert "dnsgate replay:" in done.stderr  # the summary still goes to stderr


def test_help_names_the_closed_stdout_status() -> None:
    assert "141" in dnsgate("--help").stdout
