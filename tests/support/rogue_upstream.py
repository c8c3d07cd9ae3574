"""A misbehaving upstream on loopback, built on dnslib's server (UDP and TCP).

A real DNS server process would refuse to send most of what these tests need
(records for other names, cut-short SOA records, echoed queries), so the test
runs this one: dnslib parses the query and the test's ``answer`` function
returns the reply bytes, well formed or not. Every question asked is recorded,
so a test can prove a query never reached the upstream.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from dnslib import QTYPE, RR, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer

from tests.support.harness import free_port

Answer = Callable[[DNSRecord, bytes], bytes]


class _Silent(DNSLogger):
    def __init__(self) -> None:
        super().__init__(log="-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False)


class _Handler(DNSHandler):
    def get_reply(self, data: bytes) -> bytes:
        rogue: RogueUpstream = self.server.resolver  # type: ignore[attr-defined]
        request = DNSRecord.parse(data)
        with rogue.lock:
            rogue.asked.append((str(request.q.qname).rstrip(".").lower(), QTYPE.get(request.q.qtype)))
        return rogue.answer(request, data)


class RogueUpstream(BaseResolver):  # type: ignore[misc]
    """Holds the answer function and the log of questions; dnslib calls it per query."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.asked: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def names(self) -> list[str]:
        with self.lock:
            return [name for name, _ in self.asked]


def reply_with(request: DNSRecord, *zone_lines: str, rcode: int = 0) -> DNSRecord:
    """A reply to ``request`` carrying records written in zone-file syntax (any section)."""
    reply = request.reply()
    reply.header.rcode = rcode
    for line in zone_lines:
        section, text = line.split(" ", 1)
        for rr in RR.fromZone(text):
            {"an": reply.add_answer, "ns": reply.add_auth, "ar": reply.add_ar}[section](rr)
    return reply


@contextmanager
def rogue_upstream(answer: Answer) -> Iterator[tuple[RogueUpstream, int]]:
    """Run the rogue upstream on a free loopback port (UDP and TCP); yield it and the port."""
    rogue = RogueUpstream(answer)
    port = free_port()
    servers = [
        DNSServer(rogue, address="127.0.0.1", port=port, tcp=tcp, logger=_Silent(), handler=_Handler)
        for tcp in (False, True)
    ]
    for server in servers:
        server.start_thread()
    try:
        yield rogue, port
    finally:
        for server in servers:
            server.stop()
            server.server.server_close()
