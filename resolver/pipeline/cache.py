"""Answer cache: upstream replies kept as wire bytes, served with ID, case and TTLs patched.

Positive answers live for their smallest answer TTL, negative ones (NXDOMAIN,
NODATA) for the SOA's negative TTL (RFC 2308), both capped. The entry count is
capped; the least recently used entry makes room.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from resolver.pipeline.query import Query, Reply
from resolver.pipeline.scrub import UpstreamAnswer
from resolver.wire.message import Question, ReplyInfo, fit_udp, patch_ttls


@dataclass(slots=True, init=False)
class Entry:
    wire: bytes
    stored: float
    expires: float
    ttl_offsets: tuple[int, ...]
    rcode: int

    # Written out: compiled, a dataclass's generated __init__ runs in the interpreter.
    def __init__(self, wire: bytes, stored: float, expires: float, ttl_offsets: tuple[int, ...], rcode: int) -> None:
        self.wire = wire
        self.stored = stored
        self.expires = expires
        self.ttl_offsets = ttl_offsets
        self.rcode = rcode


def cache_key(q: Question, flags: int) -> bytes:
    """Name, type, class and the flags that change an answer (DO, CD) and EDNS presence."""
    extra = (2 if q.do else 0) | (4 if q.has_edns else 0) | (8 if flags & 0x0010 else 0)
    return q.qname + ((q.qtype << 24) | (q.qclass << 8) | extra).to_bytes(5, "big")


class Cache:
    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, Entry] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def stats(self) -> dict[str, int]:
        """Counters for metrics: hits, misses, evictions and the entries held now."""
        return {"hits": self.hits, "misses": self.misses, "evictions": self.evictions, "entries": len(self)}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes, now: float) -> Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        if entry.expires <= now:
            del self._entries[key]
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return entry

    def put(self, key: bytes, wire: bytes, now: float, ttl: int, ttl_offsets: tuple[int, ...], rcode: int) -> None:
        if ttl <= 0 or self.max_entries == 0:
            return
        if key not in self._entries and len(self._entries) >= self.max_entries:
            self._entries.popitem(last=False)
            self.evictions += 1
        self._entries[key] = Entry(wire, now, now + ttl, ttl_offsets, rcode)
        self._entries.move_to_end(key)

    def clear(self) -> None:
        self._entries.clear()


def serve(entry: Entry, query: Query) -> bytes:
    """The cached reply for this client: its ID, its question's letter case, TTLs aged."""
    q = query.question
    wire = patch_ttls(entry.wire, entry.ttl_offsets, int(query.now - entry.stored))
    reply = query.wire[:2] + wire[2:12] + query.wire[12 : q.end] + wire[q.end :]
    if query.transport == "udp":
        reply = fit_udp(reply, query.wire, q)
    return reply


class CacheStage:
    """Answers from the cache when it can; the forwarder fills it."""

    def __init__(self, cache: Cache, scopes: dict[str, bytes] | None = None) -> None:
        self.cache = cache
        self.scopes = scopes or {}

    def resolve(self, query: Query) -> Reply | None:
        flags = query.wire[3]
        # Entries are per namespace and per version of its reply-side policy: what the
        # checks on an answer (rebinding guard, CNAME chain policy) let through for one
        # namespace may be denied for another, or for the same one after a reload.
        view = query.view
        scope = b"" if view is None else self.scopes.get(view.name) or view.name.encode() + b"\x00"
        key = scope + cache_key(query.question, flags)
        query.cache_key = key
        entry = self.cache.get(key, query.now)
        if entry is None:
            return None
        return Reply(serve(entry, query), entry.rcode, "cached")

    def on_reply(self, query: Query, answer: UpstreamAnswer, info: ReplyInfo, /) -> Reply | None:
        """Keep the answer every other hook let through (a truncated one is not kept)."""
        if query.cache_key and not info.truncated:
            self.cache.put(query.cache_key, answer.wire, query.now, info.ttl, info.ttl_offsets, info.rcode)
        return None
