"""Query counters kept as plain dict increments; Prometheus reads them at scrape time.

Incrementing a prometheus-client Counter with labels costs a few microseconds
per query; a dict increment costs a tenth of that. The collector in
``resolver/admin.py`` turns these into metric families when scraped.
"""

from __future__ import annotations

from collections import defaultdict

COMMON_QTYPES = {
    1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT",
    28: "AAAA", 33: "SRV", 64: "SVCB", 65: "HTTPS", 255: "ANY",
}


class QueryCounters:
    """Per (namespace, action, qtype) query counts and per-rcode response counts."""

    def __init__(self) -> None:
        self.queries: defaultdict[tuple[str, str, int], int] = defaultdict(int)
        self.rcodes: defaultdict[int, int] = defaultdict(int)
        self.malformed = 0
        self.internal_errors = 0

    def count(self, namespace: str, action: str, qtype: int, rcode: int) -> None:
        self.queries[(namespace, action, qtype)] += 1
        self.rcodes[rcode] += 1

    def by_label(self) -> dict[tuple[str, str, str], int]:
        """Counts folded to bounded labels: uncommon query types become ``other``."""
        out: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        for (ns, action, qtype), n in list(self.queries.items()):
            out[(ns, action, COMMON_QTYPES.get(qtype, "other"))] += n
        return out
