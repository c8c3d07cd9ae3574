"""The contract between pipeline stages: a small Query in, a small Reply out.

A stage is an object with one method, ``resolve(query) -> Reply | None``:
it answers (a Reply) or hands the query on (None). Only the last stage, the
upstream forwarder, is asynchronous, so a query answered from policy or cache
never leaves the synchronous fast path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from resolver.wire import Question

if TYPE_CHECKING:
    from resolver.config import Namespace


@dataclass(slots=True)
class Query:
    """One client query moving through the pipeline."""

    wire: bytes
    question: Question
    client: str
    transport: str  # "udp" or "tcp"
    now: float  # wall clock live, capture time in replay
    listener_namespace: str | None = None
    namespace: Namespace | None = None
    domain: str = ""  # registrable domain, filled by the detection stage
    cache_key: bytes = b""  # filled by the cache stage, used to store the upstream's reply


@dataclass(slots=True)
class Reply:
    """What goes back to the client; ``wire`` None means drop silently."""

    wire: bytes | None
    rcode: int
    action: str  # allowed, cached, denied, local, refused, dropped, quarantined, servfail, truncated


def servfail(wire: bytes, question: Question) -> Reply:
    """SERVFAIL with the client's question: no upstream answered, or something broke inside."""
    from resolver.wire import SERVFAIL, header_reply

    return Reply(header_reply(wire, question, SERVFAIL), SERVFAIL, "servfail")


class Stage(Protocol):
    """One step of the pipeline."""

    def resolve(self, query: Query) -> Reply | None:
        """Answer the query, or return None to hand it to the next stage."""
        ...
