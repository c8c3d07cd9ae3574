"""What scrubbing costs per upstream reply (it runs once per reply, never per cache hit).

    python -m benchmarks.scrub_cost

Prints the best of ten runs for a plain A answer, a CNAME chain, and an answer
whose OPT is taken off for a client that sent no EDNS.
"""

from __future__ import annotations

import timeit

import dns.message
import dns.rrset

from resolver.pipeline.scrub import scrub
from resolver.wire.message import parse_query


def pair(name: str, edns: bool, *answer: str) -> tuple[bytes, bytes]:
    """A query and its reply, on the wire."""
    q = dns.message.make_query(name, "A", use_edns=0)
    r = dns.message.make_response(q)
    for line in answer:
        n, ttl, t, *rd = line.split()
        r.answer.append(dns.rrset.from_text(n, int(ttl), "IN", t, " ".join(rd)))
    qw = dns.message.make_query(name, "A", use_edns=0 if edns else None).to_wire()
    return qw, r.to_wire()


CASES = {
    "A, client EDNS": pair("www.example.com.", True, "www.example.com. 60 A 192.0.2.1"),
    "CNAME chain + A, client EDNS": pair(
        "www.example.com.", True, "www.example.com. 60 CNAME e.cdn.example.net.",
        "e.cdn.example.net. 60 A 192.0.2.1", "e.cdn.example.net. 60 A 192.0.2.2",
    ),
    "A, client without EDNS (OPT stripped)": pair("www.example.com.", False, "www.example.com. 60 A 192.0.2.1"),
}


def cost(query: bytes, reply: bytes, runs: int = 2000) -> float:
    """Seconds per scrub of ``reply``: the best of ten runs (a loaded machine only adds time)."""
    q = parse_query(query)
    return min(timeit.repeat(lambda: scrub(reply, q, client_edns=q.has_edns), number=runs, repeat=10)) / runs


def main() -> None:
    for label, (query, reply) in CASES.items():
        print(f"{label}: {cost(query, reply) * 1e6:.1f} us per reply")


if __name__ == "__main__":
    main()
