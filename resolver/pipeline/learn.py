"""Names seen in ``learn`` mode: (namespace, name, qtype) with counts and first/last seen.

``dnsgate propose`` turns these into an allowlist. The book is capped: when
full, the least recently seen records make room, and the evictions are counted.

With several replicas the books are shared through Redis (:class:`RedisLearnStore`).
Key layout, one Redis Cluster hash tag per namespace so a namespace's keys share
a slot (``<p>`` is the prefix, ``dnsgate:learn`` by default)::

    <p>:namespaces            SET   namespace names that have learned records
    <p>:{<ns>}:count          HASH  field -> query count      (HINCRBY of deltas)
    <p>:{<ns>}:first          ZSET  field, score first seen    (ZADD LT: keeps the minimum)
    <p>:{<ns>}:last           ZSET  field, score last seen     (ZADD GT: keeps the maximum)
    <p>:{<ns>}:rcode          HASH  field -> last reply rcode  (absent: no reply seen)
    <p>:{<ns>}:workload       HASH  field -> "<pod> <service account>" that last asked (pod identity on)
    <p>:{<ns>}:flagged        ZSET  domain the detector flagged as a tunnel, score last flagged (ZADD GT)

``flagged`` is kept because a namespace learning with detection ``enforce`` does
not record the queries of a quarantined domain: the names recorded before the
flag are too few for ``propose`` to flag the domain again, and the quarantine
itself ends. A domain is written as the detector's text of it.

A field is ``"<name> <qtype>"``: the name in presentation form without the
trailing dot (non-printable octets as ``\\DDD``, so no space can occur in it) and
the numeric query type, e.g. ``"api.github.com 28"``. Pushes send deltas, so
replicas add up instead of overwriting each other.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from heuristics import name_to_text
from resolver.wire.message import name_from_text

DEFAULT_PREFIX = "dnsgate:learn"


@dataclass(slots=True, init=False)
class Seen:
    count: int
    first: float
    last: float
    rcode: int = -1  # last rcode seen in a reply, -1 when none
    pushed: int = 0  # part of ``count`` already sent to Redis
    pod: str = ""  # "namespace/name" of the pod that last asked, with pod identity on
    service_account: str = ""

    def __init__(
        self, count: int, first: float, last: float, rcode: int = -1, pushed: int = 0, pod: str = "",
        service_account: str = "",
    ) -> None:
        self.count = count
        self.first = first
        self.last = last
        self.rcode = rcode
        self.pushed = pushed
        self.pod = pod
        self.service_account = service_account


class LearnBook:
    def __init__(self, max_records: int = 100_000) -> None:
        self.max_records = max_records
        self.records: OrderedDict[tuple[str, bytes, int], Seen] = OrderedDict()
        self.evicted = 0
        # (namespace, domain) -> when the detector last flagged it as a tunnel in a learning
        # namespace; at most max_records, the oldest flag dropped first.
        self.flagged: OrderedDict[tuple[str, str], float] = OrderedDict()
        self.flags_unpushed: set[tuple[str, str]] = set()

    def record(
        self, namespace: str, qname: bytes, qtype: int, now: float, pod: str = "", service_account: str = ""
    ) -> None:
        key = (namespace, qname, qtype)
        seen = self.records.get(key)
        if seen is None:
            if len(self.records) >= self.max_records:
                self.records.popitem(last=False)
                self.evicted += 1
            self.records[key] = Seen(1, now, now, pod=pod, service_account=service_account)
        else:
            seen.count += 1
            seen.last = now
            if pod:
                seen.pod, seen.service_account = pod, service_account
            self.records.move_to_end(key)

    def flag(self, namespace: str, domain: str, now: float) -> None:
        """The detector flagged ``domain`` as a tunnel in ``namespace`` (learning): propose
        never allows it, whatever it learned of the names under it."""
        key = (namespace, domain)
        last = self.flagged.get(key)
        if last is None:
            if len(self.flagged) >= self.max_records:
                old, _ = self.flagged.popitem(last=False)
                self.flags_unpushed.discard(old)
            self.flagged[key] = now
            self.flags_unpushed.add(key)
        elif now > last:
            self.flagged[key] = now
            self.flagged.move_to_end(key)
            self.flags_unpushed.add(key)

    def merge_flag(self, namespace: str, domain: str, last: float) -> None:
        """Fold in a flag learned elsewhere (Redis): already pushed."""
        key = (namespace, domain)
        if last > self.flagged.get(key, float("-inf")):
            if key not in self.flagged and len(self.flagged) >= self.max_records:
                self.flagged.popitem(last=False)
            self.flagged[key] = last

    def flagged_in(self, namespace: str) -> list[str]:
        """The domains flagged in ``namespace``, sorted."""
        return sorted(domain for ns, domain in self.flagged if ns == namespace)

    def record_rcode(self, namespace: str, qname: bytes, qtype: int, rcode: int) -> None:
        seen = self.records.get((namespace, qname, qtype))
        if seen is not None:
            seen.rcode = rcode

    def merge(self, namespace: str, qname: bytes, qtype: int, seen: Seen) -> None:
        """Fold in a record learned elsewhere (another replica, Redis)."""
        key = (namespace, qname, qtype)
        mine = self.records.get(key)
        if mine is None:
            if len(self.records) >= self.max_records:
                self.records.popitem(last=False)
                self.evicted += 1
            self.records[key] = Seen(
                seen.count, seen.first, seen.last, seen.rcode, seen.count, seen.pod, seen.service_account
            )
            return
        mine.count += seen.count
        mine.pushed += seen.count
        mine.first = min(mine.first, seen.first)
        if seen.last >= mine.last:
            mine.last = seen.last
            if seen.rcode >= 0:
                mine.rcode = seen.rcode
            if seen.pod:
                mine.pod, mine.service_account = seen.pod, seen.service_account

    def namespaces(self) -> list[str]:
        return sorted({ns for ns, _, _ in self.records} | {ns for ns, _ in self.flagged})

    def items(self, namespace: str | None = None) -> Iterator[tuple[str, bytes, int, Seen]]:
        """(namespace, qname, qtype, seen) for every record, oldest use first."""
        for (ns, qname, qtype), seen in self.records.items():
            if namespace is None or ns == namespace:
                yield ns, qname, qtype, seen

    def __len__(self) -> int:
        return len(self.records)


def field_of(qname: bytes, qtype: int) -> str:
    return f"{name_to_text(qname)} {qtype}"


def parse_field(field: str) -> tuple[bytes, int]:
    """Inverse of :func:`field_of`; raises ValueError on a field it did not write."""
    text, _, qtype = field.rpartition(" ")
    if not text:
        raise ValueError(f"not a learned-name field: {field!r}")
    return name_from_text(text), int(qtype)


class RedisLearnStore:
    """Push a LearnBook's deltas to Redis and read every replica's names back.

    ``push`` and ``pull`` take a *synchronous* ``redis.Redis`` client; the live
    server uses ``apush`` with a ``redis.asyncio`` client from a background task,
    never per query.
    """

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = prefix

    def key(self, namespace: str, part: str) -> str:
        return f"{self.prefix}:{{{namespace}}}:{part}"

    def _queue(self, pipe: Any, book: LearnBook) -> tuple[list[Seen], list[tuple[str, str]]]:
        sent: list[Seen] = []
        namespaces: set[str] = set()
        flags: list[tuple[str, str]] = []
        for ns, domain in sorted(book.flags_unpushed):
            last = book.flagged.get((ns, domain))
            if last is not None:
                pipe.zadd(self.key(ns, "flagged"), {domain: last}, gt=True)
                namespaces.add(ns)
                flags.append((ns, domain))
        for ns, qname, qtype, seen in book.items():
            delta = seen.count - seen.pushed
            if delta <= 0:
                continue
            field = field_of(qname, qtype)
            pipe.hincrby(self.key(ns, "count"), field, delta)
            pipe.zadd(self.key(ns, "first"), {field: seen.first}, lt=True)
            pipe.zadd(self.key(ns, "last"), {field: seen.last}, gt=True)
            if seen.rcode >= 0:
                pipe.hset(self.key(ns, "rcode"), field, seen.rcode)
            if seen.pod:
                pipe.hset(self.key(ns, "workload"), field, f"{seen.pod} {seen.service_account}")
            namespaces.add(ns)
            sent.append(seen)
        if namespaces:
            pipe.sadd(f"{self.prefix}:namespaces", *sorted(namespaces))
        return sent, flags

    @staticmethod
    def _mark(book: LearnBook, sent: list[Seen], flags: list[tuple[str, str]]) -> None:
        for seen in sent:
            seen.pushed = seen.count
        book.flags_unpushed.difference_update(flags)

    def push(self, client: Any, book: LearnBook) -> int:
        """Send what changed since the last push (records and flags); return how many records were sent."""
        pipe = client.pipeline(transaction=False)
        sent, flags = self._queue(pipe, book)
        if sent or flags:
            pipe.execute()
            self._mark(book, sent, flags)
        return len(sent)

    async def apush(self, client: Any, book: LearnBook) -> int:
        """``push`` for a ``redis.asyncio`` client."""
        pipe = client.pipeline(transaction=False)
        sent, flags = self._queue(pipe, book)
        if sent or flags:
            await pipe.execute()
            self._mark(book, sent, flags)
        return len(sent)

    def pull(self, client: Any, max_records: int = 1_000_000) -> LearnBook:
        """Every namespace's learned names, as one book (records already pushed)."""
        book = LearnBook(max_records)
        raw = client.smembers(f"{self.prefix}:namespaces")
        for ns in sorted(_text(n) for n in raw):
            counts = client.hgetall(self.key(ns, "count"))
            firsts = dict(client.zscan_iter(self.key(ns, "first")))
            lasts = dict(client.zscan_iter(self.key(ns, "last")))
            rcodes = client.hgetall(self.key(ns, "rcode"))
            workloads = client.hgetall(self.key(ns, "workload"))
            for raw_domain, last in client.zscan_iter(self.key(ns, "flagged")):
                book.merge_flag(ns, _text(raw_domain), float(last))
            for raw_field, raw_count in counts.items():
                try:
                    qname, qtype = parse_field(_text(raw_field))
                except ValueError:
                    continue
                first = float(firsts.get(raw_field, 0.0))
                last = float(lasts.get(raw_field, first))
                rcode = int(rcodes.get(raw_field, -1))
                pod, _, account = _text(workloads.get(raw_field, b"")).partition(" ")
                book.merge(ns, qname, qtype, Seen(int(raw_count), first, last, rcode, pod=pod, service_account=account))
        return book


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value
