"""A client's EDNS options never reach the upstream: only its UDP size and DO bit do.

Client Subnet, cookies, padding or a private option code are octets a client
could fill with anything; forwarded, they would leave past the detector, which
reads names. The upstream is a dnslib server on loopback that keeps every query
it receives (tests/support/rogue_upstream.py); dnsgate is a real process.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest
from dnslib import DNSRecord

from tests.support.harness import free_port
from tests.support.rogue_upstream import RogueUpstream, reply_with, rogue_upstream
from tests.support.upstream_servers import Dnsgate, basic_config, start_dnsgate

LOOP_OPTION = 65353
RECEIVED: list[bytes] = []
LOCK = threading.Lock()


def answer(request: DNSRecord, data: bytes) -> bytes:
    with LOCK:
        RECEIVED.append(data)
    return reply_with(request, f"an {request.q.qname!s} 60 A 192.0.2.7").pack()


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[RogueUpstream, int]]:
    with rogue_upstream(answer) as pair:
        yield pair


@pytest.fixture(scope="module")
def gate(upstream: tuple[RogueUpstream, int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dnsgate]:
    port = free_port()
    server = start_dnsgate(basic_config(port, upstream[1]), tmp_path_factory.mktemp("edns"), port)
    yield server
    assert server.stop() == 0


def _received_for(name: str) -> list[dns.message.Message]:
    with LOCK:
        raw = list(RECEIVED)
    messages = [dns.message.from_wire(data) for data in raw]
    return [m for m in messages if m.question[0].name.to_text().rstrip(".").lower() == name]


@pytest.mark.integration
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_only_the_loop_mark_leaves_with_the_query(gate: Dnsgate, transport: str) -> None:
    name = f"edns-{transport}.wild.test"
    options = [
        dns.edns.ECSOption("2001:db8:7365:6372:6574:2d64:6174:6121", 128),
        dns.edns.CookieOption(os.urandom(8), b""),
        dns.edns.GenericOption(65001, os.urandom(400)),
        dns.edns.GenericOption(12, b"\x00" * 32),  # padding
    ]
    query = dns.message.make_query(name, "A", use_edns=0, want_dnssec=True, payload=1400, options=options)
    ask = dns.query.udp if transport == "udp" else dns.query.tcp
    reply = ask(query, "127.0.0.1", port=gate.port, timeout=3)
    assert reply.rcode() == dns.rcode.NOERROR
    assert [rr.to_text() for rr in reply.answer] == [f"{name}. 60 IN A 192.0.2.7"]
    forwarded = _received_for(name)
    assert len(forwarded) == 1
    sent = forwarded[0]
    assert [option.otype for option in sent.options] == [LOOP_OPTION]  # dnsgate's own mark, nothing else
    assert sent.ednsflags & dns.flags.DO  # the DO bit is carried as the client sent it
