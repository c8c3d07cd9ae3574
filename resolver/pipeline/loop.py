"""The runtime forwarding-loop guard: a query that comes back to dnsgate through an upstream.

Every query dnsgate forwards carries an EDNS option (code 65353, from the
range RFC 6891 leaves to local use) holding this dnsgate's mark; a client
query without EDNS gets an OPT record for it, and the scrubber removes the OPT
from the reply again. A query that arrives carrying this dnsgate's own mark,
or the marks of ``MAX_HOPS`` forwarders (dnsgates chained on purpose add one
each), has gone round: it is answered SERVFAIL at once, and the loop is logged
once. The mark is the same for every worker of one dnsgate (it is derived
from the host name and the listen addresses), so a loop through a sibling
worker is caught on its first return.

A loop through a resolver that drops unknown EDNS options (none of the
common ones do) is caught by the forwarder instead: a cap on in-flight
queries for the same question.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket

from heuristics import name_to_text
from resolver.config import Config
from resolver.pipeline.query import Query, Reply, servfail
from resolver.wire.message import MalformedMessage, Question, add_edns_option, edns_options

log = logging.getLogger("dnsgate.loop")

LOOP_OPTION = 65353
MAX_HOPS = 8


def dnsgate_mark(config: Config) -> bytes:
    """Eight octets naming this dnsgate: its host and listen addresses."""
    listen = ",".join(sorted(f"{lst.address}:{lst.port}" for lst in config.listen))
    return hashlib.blake2b(f"{socket.gethostname()}|{listen}".encode(), digest_size=8).digest()


class LoopGuard:
    """Marks forwarded queries and answers SERVFAIL to the ones that come back."""

    def __init__(self, mark: bytes | None = None) -> None:
        self.mark = mark if mark is not None else os.urandom(8)
        self.loops = 0
        self.unmarked = 0  # queries that could not carry the mark (a record after OPT)

    def stats(self) -> dict[str, int]:
        return {"loops": self.loops, "unmarked": self.unmarked}

    def marked(self, wire: bytes, question: Question) -> bytes:
        """The query as it leaves for an upstream, carrying this dnsgate's mark."""
        try:
            out = add_edns_option(wire, question, LOOP_OPTION, self.mark)
        except MalformedMessage:
            out = None
        if out is None:
            self.unmarked += 1
            return wire
        return out

    def resolve(self, query: Query) -> Reply | None:
        q = query.question
        if not q.has_edns:
            return None
        try:
            marks = edns_options(query.wire, q, LOOP_OPTION)
        except MalformedMessage:
            return None
        if not marks or (self.mark not in marks and len(marks) < MAX_HOPS):
            return None
        self.loops += 1
        if self.loops == 1:
            how = "its own mark" if self.mark in marks else f"{len(marks)} forwarders' marks"
            log.error("forwarding loop: a query for %s came back from %s carrying %s; answering SERVFAIL "
                      "(check upstreams: and the upstreams' own forwarders)",
                      name_to_text(q.qname), query.client, how)
        reply = servfail(query.wire, q)
        reply.action = "loop"
        return reply
