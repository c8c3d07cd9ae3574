"""Real DNS traffic on loopback and captures of it: dig, and tcpdump with a readiness check.

Readiness is tcpdump's "listening" line and, on exit, a sentinel reply found in
the capture file, never a sleep.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from resolver.offline.capture import read_dns
from tests.support.harness import ask, ensure_packages


def dig(port: int, *args: str) -> str:
    """dig against 127.0.0.1:port (one try); its stdout."""
    return subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(port), "+tries=1", "+time=3", *args],
        capture_output=True, text=True, timeout=20, check=True,
    ).stdout


@contextmanager
def tcpdump(port: int, path: Path, sentinel_zone: str = "allowed.test") -> Iterator[None]:
    """Capture loopback traffic to/from ``port``; on exit, wait until a sentinel is on disk.

    The sentinel is a query for ``sentinel-PID-PORT.<sentinel_zone>``; its reply
    (any rcode) in the file proves everything before it was written.
    """
    ensure_packages("tcpdump")
    proc = subprocess.Popen(
        ["tcpdump", "-i", "lo", "-U", "-n", "-s", "0", "-w", str(path), f"port {port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()  # "listening on lo, ..." once the capture is live
    assert "listening on" in line, line
    try:
        yield
        label = f"sentinel-{os.getpid()}-{port}"
        ask(port, f"{label}.{sentinel_zone}")
        deadline = time.monotonic() + 10
        while not any(p.is_response and label.encode() in p.wire.lower()
                      for p in read_dns(str(path), ports=frozenset({port}), on_problem=lambda _: None)):
            assert time.monotonic() < deadline, "tcpdump never wrote the sentinel reply"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)
