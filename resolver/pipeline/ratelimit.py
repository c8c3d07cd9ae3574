"""The rate-limit stage: a token bucket per client, RRL-style slip on UDP.

A client over its namespace's ``rate_limit`` is answered as cheaply as
possible, right after identity and before detection, policy or cache see the
query: most limited queries are dropped, every ``slip``-th one gets an empty
reply with TC=1 so a real resolver library retries over TCP (and is served
there). A flooding client therefore costs a parse, a dict lookup and a few
float operations per query, and cannot make the other clients wait.

A token is one ordinary query. The expensive path is the detector's estimate
of a never-seen name (deflate charge, encoding test, HyperLogLog: several
times an ordinary query); every name estimated costs its client
``ESTIMATE_TOKENS`` more, charged after the query (``RateLimitStage.charge``).
A client asking cheap, cached names gets its ``qps``, one asking a new name
each time gets fewer, so the limit bounds the work a client causes, not only
its packets. The charge counts work, not time: a server preempted by the
machine never charges an innocent client for the stall. Only the live server
charges (``Pipeline.handle``); replay decides the same way it always did.

A client the identity stage named as a pod has one bucket for the pod (key
``pod:<namespace>/<name>``, see ``pod_key``), not one per address: a
dual-stack pod does not get twice the rate by asking over IPv4 and IPv6.
Other clients have one bucket per IPv4 address and one per IPv6 network of
``ipv6_client_prefix`` bits (64 by default): a host may source from any
address of its /64, and must not get a fresh bucket with each
(``query.owner``, set by the identity stage).

TCP queries are not limited by the bucket: a TCP client has proved its
address with the handshake, is where slipped queries are meant to land, and
is bounded by the listener's per-client connection cap and write backpressure
(resolver/operations/listeners.py).

Buckets live in ``RateLimiter`` (owned by the Engine, so a reload keeps them)
and the table of clients is bounded: when it is full the least recently
limited-or-seen half is forgotten, which can only ever give a client a full
bucket again, never take one away from a well-behaved client.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from resolver.pipeline.alerts import AlertHub
from resolver.pipeline.query import Query, Reply
from resolver.wire.message import NOERROR, truncated

LIMITED_RECENTLY = 60.0  # seconds: a client refused a query this recently counts as limited (metrics)
ESTIMATE_TOKENS = 1.0  # extra tokens a never-seen name's estimate costs its client


@dataclass(slots=True, init=False)
class Bucket:
    """One client's tokens; ``limited`` counts queries refused so far (it drives the slip)."""

    tokens: float
    stamp: float
    limited: int
    limited_at: float  # when it was last refused a query (0: never)
    namespace: str  # the namespace whose limit refused it last

    # Written out: compiled, a dataclass's generated __init__ runs in the interpreter.
    def __init__(
        self, tokens: float, stamp: float, limited: int = 0, limited_at: float = 0.0, namespace: str = ""
    ) -> None:
        self.tokens = tokens
        self.stamp = stamp
        self.limited = limited
        self.limited_at = limited_at
        self.namespace = namespace


class RateLimiter:
    """Token buckets per client (an address, or a pod's key), and what was limited, for the metrics."""

    def __init__(self, max_clients: int = 100_000) -> None:
        self.max_clients = max_clients
        self.buckets: dict[str, Bucket] = {}
        self.dropped: defaultdict[str, int] = defaultdict(int)  # namespace -> queries dropped
        self.slipped: defaultdict[str, int] = defaultdict(int)  # namespace -> TC=1 answers

    def stats(self, now: float | None = None) -> dict[str, Any]:
        """Limited queries per namespace (dropped, slipped), the clients holding a bucket, and
        per namespace the clients refused a query within the last ``LIMITED_RECENTLY`` seconds."""
        return {
            "dropped": dict(self.dropped),
            "slipped": dict(self.slipped),
            "clients": len(self.buckets),
            "limited_clients": self.limited_clients(time.time() if now is None else now),
        }

    def limited_clients(self, now: float, within: float = LIMITED_RECENTLY) -> dict[str, int]:
        """Namespace -> client addresses refused a query in the ``within`` seconds before ``now``."""
        since = now - within
        found: defaultdict[str, int] = defaultdict(int)
        for bucket in self.buckets.values():
            if bucket.limited_at and bucket.limited_at >= since:
                found[bucket.namespace] += 1
        return dict(found)

    def take(self, client: str, now: float, qps: float, burst: float) -> Bucket | None:
        """Take one token for ``client``; None when it had one, else its (empty) bucket."""
        bucket = self.buckets.get(client)
        if bucket is None:
            if len(self.buckets) >= self.max_clients:
                self._forget_half()
            self.buckets[client] = Bucket(burst - 1.0, now)
            return None
        elapsed = now - bucket.stamp
        if elapsed > 0:
            tokens = bucket.tokens + elapsed * qps
            bucket.tokens = burst if tokens > burst else tokens
            bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        bucket.limited += 1
        bucket.limited_at = now
        return bucket

    def charge(self, client: str, tokens: float, burst: float) -> None:
        """Take ``tokens`` more from a client's bucket (work done beyond one token); at most one burst of debt."""
        bucket = self.buckets.get(client)
        if bucket is not None:
            bucket.tokens = max(-burst, bucket.tokens - tokens)

    def _forget_half(self) -> None:
        # Insertion order is first-seen order; the oldest half goes. A forgotten
        # client simply starts again with a full bucket.
        for key in list(self.buckets)[: max(1, len(self.buckets) // 2)]:
            del self.buckets[key]


class RateLimitStage:
    """Drops or truncates (TC=1) a client's UDP queries beyond its namespace's rate
    (the bucket of ``query.owner``)."""

    def __init__(self, limiter: RateLimiter, alerts: AlertHub) -> None:
        self.limiter = limiter
        self._alerts = alerts

    def resolve(self, query: Query) -> Reply | None:
        view = query.view
        assert view is not None
        if view.qps <= 0 or query.transport != "udp":
            return None
        burst = view.burst
        bucket = self.limiter.take(query.owner, query.now, view.qps, burst)
        if bucket is None:
            return None
        bucket.namespace = view.name
        limit = view.rate_limit
        q = query.question
        self._alerts.rate_limit(
            query.now, view.name, query.client, q.qname, q.qtype,
            {"qps": limit.qps, "burst": burst, "slip": limit.slip},
        )
        if limit.slip and bucket.limited % limit.slip == 0:
            self.limiter.slipped[view.name] += 1
            return Reply(truncated(query.wire, q), NOERROR, "rate_limited_tc")
        self.limiter.dropped[view.name] += 1
        return Reply(None, NOERROR, "rate_limited")

    def charge(self, query: Query, clients: list[str]) -> None:
        """Charge ``ESTIMATE_TOKENS`` to each client in ``clients`` (one entry per name estimated).

        The names were estimated while ``query`` was decided; a deferred pair's
        names may belong to other clients of the same namespace, and each pays
        for its own. The detector counts clients by ``query.owner``, the bucket's
        key. Debt is bounded by one burst.
        """
        view = query.view
        if view is None or view.qps <= 0:
            return
        for client in clients:
            self.limiter.charge(client, ESTIMATE_TOKENS, view.burst)
