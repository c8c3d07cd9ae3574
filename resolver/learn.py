"""Names seen in ``learn`` mode: (namespace, name, qtype) with counts and first/last seen.

``dnsgate propose`` turns these into an allowlist. The book is capped: when
full, the least recently seen records make room, and the evictions are counted.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(slots=True)
class Seen:
    count: int
    first: float
    last: float
    rcode: int = -1  # last rcode seen in a reply, -1 when none


class LearnBook:
    def __init__(self, max_records: int = 100_000) -> None:
        self.max_records = max_records
        self.records: OrderedDict[tuple[str, bytes, int], Seen] = OrderedDict()
        self.evicted = 0

    def record(self, namespace: str, qname: bytes, qtype: int, now: float) -> None:
        key = (namespace, qname, qtype)
        seen = self.records.get(key)
        if seen is None:
            if len(self.records) >= self.max_records:
                self.records.popitem(last=False)
                self.evicted += 1
            self.records[key] = Seen(1, now, now)
        else:
            seen.count += 1
            seen.last = now
            self.records.move_to_end(key)

    def record_rcode(self, namespace: str, qname: bytes, qtype: int, rcode: int) -> None:
        seen = self.records.get((namespace, qname, qtype))
        if seen is not None:
            seen.rcode = rcode

    def __len__(self) -> int:
        return len(self.records)
