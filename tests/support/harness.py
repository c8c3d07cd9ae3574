"""The one harness for tests and benchmarks: free ports, Debian packages, a DNS question asked.

Everything here talks to loopback only.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query

# Command -> the Debian package that provides it.
PACKAGES = {
    "unbound": "unbound", "nsd": "nsd", "named": "bind9", "dig": "dnsutils", "dnsperf": "dnsperf",
    "resperf": "dnsperf", "redis-server": "redis-server", "ip": "iproute2", "tcpdump": "tcpdump",
    "tshark": "tshark", "iodine": "iodine", "dns2tcpc": "dns2tcp",
    "prometheus": "prometheus", "promtool": "prometheus", "prometheus-alertmanager": "prometheus-alertmanager",
    "chromium": "chromium",
}


def stop_process(proc: subprocess.Popen[bytes] | subprocess.Popen[str] | None) -> None:
    """Terminate a server the tests started and reap it; killed when it ignores SIGTERM for 10 s."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def which(command: str) -> str | None:
    """The command's path, looking in the sbin folders too (they are not on every PATH)."""
    found = shutil.which(command)
    if found:
        return found
    for folder in ("/usr/sbin", "/usr/bin", "/sbin"):
        if Path(folder, command).exists():
            return str(Path(folder, command))
    return None


def ensure_packages(*commands: str) -> None:
    """Install the Debian packages providing these commands when absent (services are not started)."""
    missing = sorted({PACKAGES[c] for c in commands if which(c) is None})
    if not missing:
        return
    # The same script as `make system-deps`: no service started, none left enabled.
    subprocess.run(["sh", str(Path(__file__).with_name("debian-packages.sh")), *missing], check=True)


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both UDP and TCP on 127.0.0.1")


def ask(
    port: int, name: str, rdtype: str = "A", *, tcp: bool = False, source: str = "127.0.0.1",
    timeout: float = 3.0, server: str = "127.0.0.1",
) -> dns.message.Message:
    """One question to a DNS server on loopback, over UDP or TCP, with dnspython."""
    query = dns.message.make_query(name, rdtype)
    if tcp:
        return dns.query.tcp(query, server, port=port, timeout=timeout, source=source)
    return dns.query.udp(query, server, port=port, timeout=timeout, source=source)


def wait_for_dns(
    port: int, name: str = "www.allowed.test", *, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None,
    address: str = "127.0.0.1", what: str = "server",
) -> None:
    """Poll until the server at port answers a query (any rcode); readiness, never a sleep."""
    deadline = time.monotonic() + timeout
    query = dns.message.make_query(name, "A")
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            dns.query.udp(query, address, port=port, timeout=0.2)
            return
        except (dns.exception.Timeout, OSError):
            continue
    raise TimeoutError(f"{what}: no DNS answer on port {port} within {timeout}s")


def wire_ttls(wire: bytes) -> list[int]:
    """Every record's TTL field (OPT's aside) as it is on the wire, in message order.

    Read from the octets, not from a decoded message: a decoder may itself read a
    TTL with the top bit set as 0 (RFC 2181 section 8) and hide what was sent.
    """
    from resolver.wire.message import inspect_reply, question_name

    end = question_name(wire)[1] + 4
    info = inspect_reply(wire, end, max_ttl=2**32, neg_ttl=2**32)
    return [int.from_bytes(wire[offset : offset + 4], "big") for offset in info.ttl_offsets]
