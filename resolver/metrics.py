"""Counters kept as plain dict and int increments; Prometheus reads them at scrape time.

Incrementing a prometheus-client Counter with labels costs a few microseconds
per query; a dict increment costs a tenth of that (``benchmarks/metrics_cost.py``
measures both). ``Collector`` turns these counters, and the ones the cache,
forwarder, state backend, sinks and reloads keep, into metric families when
``/metrics`` is scraped (``resolver/admin.py``). Every label set is bounded:
namespaces and upstreams come from the config, query types outside
``COMMON_QTYPES`` fold to ``other``, a query name is never a label.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import dns.rcode
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector as _CollectorBase

from resolver.alerts import Alert

if TYPE_CHECKING:
    from resolver.reload import Reloader
    from resolver.server import Server

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


class AlertCounts:
    """A sink that only counts: alerts by kind, namespace and reason, for metrics."""

    name = "metrics"

    def __init__(self) -> None:
        self.tunnel: defaultdict[tuple[str, str], int] = defaultdict(int)  # (namespace, reason)
        self.policy: defaultdict[tuple[str, str], int] = defaultdict(int)  # (namespace, action)

    def submit(self, alert: Alert) -> None:
        if alert.kind == "tunnel":
            for reason in alert.reasons or ("unspecified",):
                self.tunnel[(alert.namespace, reason)] += 1
        else:
            self.policy[(alert.namespace, alert.action)] += 1

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class LatencyHistogram:
    """Cumulative bucket counts, fed the latencies an upstream kept since the last scrape."""

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.count = 0
        self.sum = 0.0

    def add(self, samples: list[float]) -> None:
        for value in samples:
            self.buckets[bisect_left(LATENCY_BUCKETS, value)] += 1
        self.count += len(samples)
        self.sum += sum(samples)

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip(LATENCY_BUCKETS, self.buckets, strict=False):
            total += n
            out.append((repr(bound), total))
        out.append(("+Inf", self.count))
        return out


def rcode_label(rcode: int) -> str:
    return dns.rcode.to_text(rcode) if 0 <= rcode <= 23 else "other"  # type: ignore[arg-type]


def active_quarantines(state: Any, now: float) -> int:
    """Quarantined (namespace, domain) pairs whose quarantine has not expired."""
    table = getattr(state, "_quarantines", None) or {}
    return sum(1 for until in list(table.values()) if until > now)


Rows = list[tuple[tuple[str, ...], float]]


def counter(name: str, doc: str, value: float) -> Metric:
    return CounterMetricFamily(name, doc, value=value)


def gauge(name: str, doc: str, value: float) -> Metric:
    return GaugeMetricFamily(name, doc, value=value)


def labelled(kind: type[Any], name: str, doc: str, labels: list[str], rows: Rows) -> Metric:
    family = kind(name, doc, labels=labels)
    for values, n in rows:
        family.add_metric(list(values), n)
    return family


class Collector(_CollectorBase):
    """Reads dnsgate's counters at scrape time; the query path never sees prometheus-client."""

    def __init__(
        self, server: Server, alert_counts: AlertCounts, reloader: Reloader | None = None
    ) -> None:
        self.server = server
        self.alert_counts = alert_counts
        self.reloader = reloader
        self.latency: dict[str, LatencyHistogram] = {}

    def collect(self) -> Iterator[Metric]:
        yield from self._queries()
        yield from self._alerts()
        yield from self._upstreams()
        yield from self._cache_and_state()
        yield from self._sinks()
        yield from self._reloads()

    def _queries(self) -> Iterator[Metric]:
        counters = self.server.counters
        yield labelled(
            CounterMetricFamily, "dnsgate_queries",
            "Queries answered, by namespace, action and query type.",
            ["namespace", "action", "qtype"], sorted(counters.by_label().items()),
        )
        by_rcode: defaultdict[str, int] = defaultdict(int)
        for rcode, n in list(counters.rcodes.items()):
            by_rcode[rcode_label(rcode)] += n
        yield labelled(
            CounterMetricFamily, "dnsgate_responses", "Responses by rcode.",
            ["rcode"], [((k,), n) for k, n in sorted(by_rcode.items())],
        )
        yield counter("dnsgate_malformed_queries", "Datagrams that were not a readable query.",
                      counters.malformed)
        yield counter("dnsgate_internal_errors", "SERVFAIL answers after an internal error.",
                      counters.internal_errors)
        yield gauge("dnsgate_inflight_queries", "Queries waiting on an upstream.",
                    len(self.server.inflight))
        yield gauge("dnsgate_tcp_connections", "Open client TCP connections.",
                    self.server.tcp_connections)

    def _alerts(self) -> Iterator[Metric]:
        counts = self.alert_counts
        yield labelled(
            CounterMetricFamily, "dnsgate_tunnel_alerts",
            "Tunnel alerts by namespace and reason (once per reason of an alert).",
            ["namespace", "reason"], sorted(list(counts.tunnel.items())),
        )
        yield labelled(
            CounterMetricFamily, "dnsgate_policy_alerts",
            "Policy alerts (denied by the allowlist) by namespace and action.",
            ["namespace", "action"], sorted(list(counts.policy.items())),
        )
        yield gauge("dnsgate_quarantines_active", "(namespace, domain) pairs quarantined now.",
                    active_quarantines(self.server.engine.state, time.time()))

    def _upstreams(self) -> Iterator[Metric]:
        forwarder = self.server.engine.forwarder
        latency = HistogramMetricFamily(
            "dnsgate_upstream_latency_seconds", "Time to an upstream's answer.", labels=["upstream"]
        )
        queries: Rows = []
        errors: Rows = []
        healthy: Rows = []
        for client in forwarder.clients:
            label = (client.upstream.label,)
            health = client.health
            samples, health.latencies = health.latencies, []
            hist = self.latency.setdefault(label[0], LatencyHistogram())
            hist.add(samples)
            latency.add_metric(list(label), hist.cumulative(), hist.sum)
            queries.append((label, health.queries))
            errors.append((label, health.errors))
            healthy.append((label, 1.0 if health.healthy else 0.0))
        yield latency
        yield labelled(CounterMetricFamily, "dnsgate_upstream_queries",
                       "Attempts sent to an upstream.", ["upstream"], queries)
        yield labelled(CounterMetricFamily, "dnsgate_upstream_errors",
                       "Attempts that failed or timed out.", ["upstream"], errors)
        yield labelled(GaugeMetricFamily, "dnsgate_upstream_healthy",
                       "1 when the upstream is considered healthy.", ["upstream"], healthy)
        yield counter("dnsgate_upstream_servfails", "Queries no upstream answered in time.",
                      forwarder.servfails)

    def _cache_and_state(self) -> Iterator[Metric]:
        engine = self.server.engine
        cache = engine.cache
        yield counter("dnsgate_cache_hits", "Answers served from the cache.", cache.hits)
        yield counter("dnsgate_cache_misses", "Cache lookups that missed.", cache.misses)
        yield counter("dnsgate_cache_evictions", "Entries evicted to make room.", cache.evictions)
        yield gauge("dnsgate_cache_entries", "Entries in the cache.", len(cache))
        state = engine.state
        in_use = str(getattr(state, "backend_in_use", "memory"))
        yield labelled(
            GaugeMetricFamily, "dnsgate_state_backend",
            "1 for the state backend in use (redis falls back to memory).", ["backend"],
            [((name,), 1.0 if name == in_use else 0.0) for name in ("memory", "redis")],
        )
        yield counter("dnsgate_state_redis_errors", "Redis operations that failed.",
                      int(getattr(state, "errors", 0)))
        yield counter("dnsgate_state_redis_fallbacks", "Falls back from Redis to local memory.",
                      int(getattr(state, "fallbacks", 0)))

    def _sinks(self) -> Iterator[Metric]:
        hub = self.server.engine.alerts
        yield counter("dnsgate_alerts_emitted", "Alerts handed to the sinks.", hub.emitted)
        sinks = [s for s in hub.sinks if not isinstance(s, AlertCounts)]

        def rows(attr: str) -> Rows:
            return [((s.name,), int(getattr(s, attr, 0))) for s in sinks]

        yield labelled(CounterMetricFamily, "dnsgate_alerts_delivered",
                       "Alerts a sink delivered.", ["sink"], rows("delivered"))
        yield labelled(CounterMetricFamily, "dnsgate_alerts_retried",
                       "Delivery attempts a sink retried.", ["sink"], rows("retried"))
        yield labelled(CounterMetricFamily, "dnsgate_alerts_dropped",
                       "Alerts a sink gave up on (queue full, retries exhausted, closed).",
                       ["sink"], rows("dropped"))
        yield labelled(GaugeMetricFamily, "dnsgate_alerts_queued",
                       "Alerts waiting in a sink's queue.", ["sink"], rows("queued"))

    def _reloads(self) -> Iterator[Metric]:
        server = self.server
        yield labelled(
            CounterMetricFamily, "dnsgate_reloads", "Config reloads by result.", ["result"],
            [(("ok",), server.reloads_ok), (("failed",), server.reloads_failed)],
        )
        yield gauge("dnsgate_config_generation", "Config generation: 0 at start, +1 per reload.",
                    server.engine.generation)
        if self.reloader is not None:
            yield gauge("dnsgate_config_last_reload_successful",
                        "1 when the last reload attempt succeeded.",
                        1.0 if self.reloader.last_ok else 0.0)
        yield gauge("dnsgate_ready", "1 when /readyz reports ready.", 1.0 if ready(server) else 0.0)


def ready(server: Server) -> bool:
    """Ready once the policy is loaded (listeners up) and at least one upstream is healthy."""
    return server.ready and server.engine.forwarder.any_healthy
