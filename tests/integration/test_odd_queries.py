"""A stream of odd queries (meta types, zone transfers, odd classes, junk section counts, other
opcodes) against a real dnsgate and a real Unbound upstream: they are answered by dnsgate, and
the upstream is never marked unhealthy because of them.
"""

from __future__ import annotations

import random
import socket
import struct
from collections.abc import Iterator

import dns.message
import dns.rcode
import pytest

from tests.support.harness import ask, free_port
from tests.support.observability import free_tcp_port, http_get, metric_value, poll
from tests.support.upstream_servers import Dnsgate, Unbound, basic_config, start_dnsgate

ODD_TYPES = [0, 41, 249, 250, 251, 252, 253, 254, *range(128, 249)]
ODD_CLASSES = [3, 4, 254, 255]  # CH, HS, NONE, ANY
SEED = 20261122


def odd_query(rng: random.Random, i: int) -> bytes:
    """One query no upstream should be asked, chosen at random."""
    wire = bytearray(dns.message.make_query(f"odd{i}.wild.test", "A", use_edns=rng.choice([None, 0])).to_wire())
    kind = rng.randrange(5)
    if kind == 0:
        struct.pack_into("!H", wire, wire.index(b"\x04test\x00") + 6, rng.choice(ODD_TYPES))
    elif kind == 1:
        struct.pack_into("!H", wire, wire.index(b"\x04test\x00") + 8, rng.choice(ODD_CLASSES))
    elif kind == 2:
        struct.pack_into("!HH", wire, 6, rng.randrange(4), rng.randrange(1, 4))  # ANCOUNT, NSCOUNT
    elif kind == 3:
        wire[2] = (wire[2] & 0x87) | (rng.randrange(1, 16) << 3)  # an opcode other than QUERY
    else:
        struct.pack_into("!H", wire, 4, rng.choice([0, 2, 3]))  # QDCOUNT
    return bytes(wire)


@pytest.fixture(scope="module")
def gate(unbound_upstream: Unbound, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Dnsgate, str]]:
    port, admin_port = free_port(), free_tcp_port()
    text = basic_config(port, unbound_upstream.port, upstream_timeout="2.0", servfail_after="4.0")
    text += f"admin: {{address: 127.0.0.1, port: {admin_port}}}\n"
    server = start_dnsgate(text, tmp_path_factory.mktemp("odd"), port)
    admin = f"http://127.0.0.1:{admin_port}"
    poll(lambda: http_get(admin + "/healthz", timeout=0.5)[0] == 200, what="admin up")
    yield server, admin
    assert server.stop() == 0


def test_odd_queries_are_answered_locally_and_never_hurt_upstream_health(
    gate: tuple[Dnsgate, str], unbound_upstream: Unbound
) -> None:
    server, admin = gate
    rng = random.Random(SEED)
    before = len(unbound_upstream.queries())
    readyz = []
    answered = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        for i in range(1500):
            sock.sendto(odd_query(rng, i), ("127.0.0.1", server.port))
            try:
                sock.recv(65535)
                answered += 1
            except TimeoutError:
                pass
            if i % 100 == 0:
                readyz.append(http_get(admin + "/readyz")[0])
                assert ask(server.port, "www.allowed.test").rcode() == dns.rcode.NOERROR
    asked = [name for name in unbound_upstream.queries()[before:] if name.startswith("odd")]
    assert asked == []  # none of them reached the upstream
    assert answered == 1500
    assert set(readyz) == {200}
    metrics = http_get(admin + "/metrics")[1].decode()
    upstream = f"127.0.0.1:{unbound_upstream.port}"
    assert metric_value(metrics, "dnsgate_upstream_errors_total", upstream=upstream) == 0
    assert metric_value(metrics, "dnsgate_upstream_healthy", upstream=upstream) == 1
    local = metric_value(metrics, "dnsgate_local_answers_total")
    assert local is not None
    assert local > 0
