"""The runtime forwarding-loop guard: a query that comes back to dnsgate through an upstream.

Every query dnsgate forwards carries an EDNS option (code 65353, from the
range RFC 6891 leaves to local use) holding this dnsgate's mark; a client
query without EDNS gets an OPT record for it, and the scrubber removes the OPT
from the reply again. The scrubber also strips the option from every upstream
reply (an upstream may echo the query's options), so the mark never reaches a
client or the cache. A query that arrives carrying this dnsgate's own mark has
gone round: it is answered SERVFAIL at once. The mark is the same for every
worker of one dnsgate (it is derived from the host name and the listen
addresses), so a loop through a sibling worker is caught on its first return.

A query carrying the marks of ``MAX_HOPS`` other forwarders (dnsgates chained
on purpose add one each) is answered SERVFAIL too. Those marks count whoever
wrote them: on the wire a dnsgate downstream is just another client, so marks
a client wrote itself cannot be told from a real chain's and are not ignored.
That costs nothing: such a query only fails its own sender, as a query through
too many forwarders would. Only distinct marks count (a dnsgate refuses a query
with its own mark, so a real chain never repeats one), and the two cases are
counted and logged apart: a client writing foreign marks cannot hide a loop
through this dnsgate, whose own mark no client sees. Each is logged at most
once a ``LOG_INTERVAL``, with the count since the last line.

What leaves is built anew (resolver/wire/message.py, ``upstream_query``):
of the client's EDNS options only the marks of earlier hops go on, each an
8-octet option 65353 (the size every dnsgate writes), each once, at most
``MAX_HOPS - 1`` of them (a query carrying more is refused above), then this
dnsgate's mark. A client can write such marks itself, so they would be a
channel of client-chosen octets past the question (56 octets a query) that the
detector never reads. A real chain presents the same few marks on every query;
so each client gets ``MARKS_PER_CLIENT`` distinct marks carried on per
``MARKS_RESET_SECONDS``, and others it writes are dropped: 64 octets a client a
day at most.

A loop through a resolver that drops unknown EDNS options (none of the
common ones do) is caught by the forwarder instead: a cap on in-flight
queries for the same question.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import struct
import time
from typing import Final

from heuristics import name_to_text
from resolver.config import Config
from resolver.pipeline.query import Query, Reply, servfail
from resolver.wire.message import MalformedMessage, Question, edns_options, upstream_query

log = logging.getLogger("dnsgate.loop")

LOOP_OPTION: Final = 65353
MARK_SIZE: Final = 8  # octets of a mark, as dnsgate_mark writes it
MAX_HOPS: Final = 8
MARKS_PER_CLIENT: Final = MAX_HOPS  # distinct earlier-hop marks carried on for one client...
MARKS_RESET_SECONDS: Final = 86400.0  # ... per this many seconds (then every client starts again)
MARK_CLIENTS: Final = 10_000  # clients whose marks are remembered; past it, all start again
LOG_INTERVAL: Final = 60.0  # seconds between two log lines of one kind; the count in between rides on the next


def dnsgate_mark(config: Config) -> bytes:
    """Eight octets naming this dnsgate: its host and listen addresses."""
    listen = ",".join(sorted(f"{lst.address}:{lst.port}" for lst in config.listen))
    return hashlib.blake2b(f"{socket.gethostname()}|{listen}".encode(), digest_size=8).digest()


class LogLimit:
    """At most one log line per ``interval`` seconds of query time; counts the events in between."""

    def __init__(self, interval: float = LOG_INTERVAL) -> None:
        self.interval = interval
        self.last_line = float("-inf")
        self.held = 0  # events since the last line

    def due(self, now: float) -> int:
        """Count one event; when a line is due, how many it reports (this one included), else 0."""
        self.held += 1
        # Only the interval after the last line is quiet: a clock set back does not silence the log.
        if self.last_line <= now < self.last_line + self.interval:
            return 0
        self.last_line = now
        count = self.held
        self.held = 0
        return count


class LoopGuard:
    """Marks forwarded queries and answers SERVFAIL to the ones that come back."""

    def __init__(self, mark: bytes | None = None) -> None:
        self.mark = mark if mark is not None else os.urandom(8)
        self.loops = 0  # queries that came back carrying this dnsgate's own mark
        self.too_many_hops = 0  # queries carrying the marks of MAX_HOPS other forwarders
        self.loop_log = LogLimit()
        self.hops_log = LogLimit()
        self._option = struct.pack("!HH", LOOP_OPTION, len(self.mark)) + self.mark
        # client -> the earlier-hop marks carried on for it since ``_marks_since``
        self._client_marks: dict[str, set[bytes]] = {}
        self._marks_since = time.monotonic()
        self.marks_dropped = 0  # earlier-hop marks not carried on: past a client's allowance

    def stats(self) -> dict[str, int]:
        return {"loops": self.loops, "too_many_hops": self.too_many_hops}

    def marked(self, wire: bytes, question: Question, client: str = "") -> bytes:
        """The query as it leaves for an upstream (``upstream_query``): its OPT record holds
        the distinct marks of earlier hops the client's had (within the client's
        allowance, :meth:`_allowed`), then this dnsgate's mark."""
        options = b""
        if question.has_edns:
            try:
                marks = edns_options(wire, question, LOOP_OPTION)
            except MalformedMessage:
                marks = []
            kept: list[bytes] = []
            for mark in marks:
                if len(mark) == MARK_SIZE and mark not in kept and len(kept) < MAX_HOPS - 1:
                    if not self._allowed(client, mark):
                        self.marks_dropped += 1
                        continue
                    kept.append(mark)
                    options += struct.pack("!HH", LOOP_OPTION, MARK_SIZE) + mark
        return upstream_query(wire, question, options + self._option)

    def _allowed(self, client: str, mark: bytes) -> bool:
        """Whether ``mark`` is one of the ``MARKS_PER_CLIENT`` marks carried on for ``client``."""
        now = time.monotonic()
        marks = self._client_marks
        if now - self._marks_since >= MARKS_RESET_SECONDS or len(marks) > MARK_CLIENTS:
            marks.clear()
            self._marks_since = now
        known = marks.get(client)
        if known is None:
            known = marks[client] = set()
        if mark in known:
            return True
        if len(known) >= MARKS_PER_CLIENT:
            return False
        known.add(mark)
        return True

    def resolve(self, query: Query) -> Reply | None:
        q = query.question
        if not q.has_edns:
            return None
        try:
            marks = edns_options(query.wire, q, LOOP_OPTION)
        except MalformedMessage:
            return None
        if not marks:
            return None
        if self.mark in marks:
            self.loops += 1
            count = self.loop_log.due(query.now)
            if count:
                log.error("forwarding loop: a query for %s came back from %s carrying its own mark; answering "
                          "SERVFAIL (check upstreams: and the upstreams' own forwarders); such queries since the "
                          "last line: %d", name_to_text(q.qname), query.client, count)
        else:
            hops = len(set(marks))
            if hops < MAX_HOPS:
                return None
            self.too_many_hops += 1
            count = self.hops_log.due(query.now)
            if count:
                log.warning("a query for %s from %s carries the marks of %d forwarders; answering SERVFAIL (a "
                            "chain of forwarders that long is a mistake, or the client wrote the marks itself); "
                            "such queries since the last line: %d", name_to_text(q.qname), query.client, hops, count)
        reply = servfail(query.wire, q)
        reply.action = "loop"
        return reply
