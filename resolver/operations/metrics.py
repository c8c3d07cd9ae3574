"""Counters kept as plain dict and int increments; Prometheus reads them at scrape time.

Incrementing a prometheus-client Counter with labels costs a few microseconds
per query; a dict increment costs a tenth of that (``benchmarks/metrics_cost.py``
measures both). ``Collector`` turns these counters, and the ones the cache,
forwarder, state backend, sinks and reloads keep, into metric families when
``/metrics`` is scraped (``resolver/operations/admin.py``). Every label set is bounded:
namespaces and upstreams come from the config, query types outside
``COMMON_QTYPES`` fold to ``other``, a query name is never a label.
"""

from __future__ import annotations

import gc
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

from resolver.pipeline.alerts import Alert
from resolver.pipeline.loop import MAX_HOPS

if TYPE_CHECKING:
    from resolver.operations.kubernetes import PodWatch
    from resolver.operations.listeners import Server
    from resolver.operations.reload import Reloader

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
        self.kinds: defaultdict[tuple[str, str], int] = defaultdict(int)  # (namespace, kind)

    def submit(self, alert: Alert) -> None:
        self.kinds[(alert.namespace, alert.kind)] += 1
        if alert.kind == "tunnel":
            for reason in alert.reasons or ("unspecified",):
                self.tunnel[(alert.namespace, reason)] += 1
        elif alert.kind == "policy":
            self.policy[(alert.namespace, alert.action)] += 1

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class LatencyHistogram:
    """Cumulative bucket counts, fed the latencies an upstream kept since the last scrape."""

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.buckets = [0] * (len(bounds) + 1)
        self.count = 0
        self.sum = 0.0

    def add(self, samples: list[float]) -> None:
        for value in samples:
            self.buckets[bisect_left(self.bounds, value)] += 1
        self.count += len(samples)
        self.sum += sum(samples)

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip(self.bounds, self.buckets, strict=False):
            total += n
            out.append((repr(bound), total))
        out.append(("+Inf", self.count))
        return out


GC_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class GcPauses:
    """How long the cyclic garbage collector held the process, per generation.

    Every query waits while a collection runs: the detector's state is millions
    of long-lived objects, and a collection of the older generations walks them
    all. ``install`` adds a ``gc.callbacks`` hook (two clock reads per
    collection); ``remove`` takes it off again.
    """

    def __init__(self) -> None:
        self.histograms = [LatencyHistogram(GC_BUCKETS) for _ in range(3)]
        self.longest = [0.0, 0.0, 0.0]
        self._started = 0.0

    def install(self) -> None:
        if self._hook not in gc.callbacks:
            gc.callbacks.append(self._hook)

    def remove(self) -> None:
        if self._hook in gc.callbacks:
            gc.callbacks.remove(self._hook)

    def _hook(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        generation = info.get("generation", 2)
        self.histograms[generation].add([pause])
        if pause > self.longest[generation]:
            self.longest[generation] = pause


def rcode_label(rcode: int) -> str:
    return dns.rcode.to_text(rcode) if 0 <= rcode <= 23 else "other"  # type: ignore[arg-type]


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


# Listener counters exported as they are: (metric, help, key in Server.stats() / its "tcp").
_UDP_COUNTERS = (
    ("dnsgate_udp_shed", "UDP queries read and dropped: their client already had UDP_QUEUE_PER_CLIENT waiting.",
     "udp_shed"),
    ("dnsgate_udp_send_errors", "UDP replies the socket refused (send buffer full).", "udp_send_errors"),
)
_TCP_COUNTERS = (
    ("dnsgate_tcp_refused_per_client",
     "TCP connections closed at once: the client already held its per-client cap.", "refused_per_client"),
    ("dnsgate_tcp_evicted_idle",
     "Idle TCP connections closed to make room for a new one at the global cap.", "evicted_idle"),
    ("dnsgate_tcp_refused_full",
     "TCP connections closed at once: global cap reached and no connection was idle.", "refused_full"),
    ("dnsgate_tcp_paused",
     "Times a TCP connection stopped being read because its unsent replies passed tcp_max_unsent.", "paused"),
)


class Collector(_CollectorBase):
    """Reads dnsgate's counters at scrape time; the query path never sees prometheus-client."""

    def __init__(
        self, server: Server, alert_counts: AlertCounts, reloader: Reloader | None = None,
        pod_watch: PodWatch | None = None,
    ) -> None:
        self.server = server
        self.pod_watch = pod_watch
        self.alert_counts = alert_counts
        self.reloader = reloader
        self.latency: dict[str, LatencyHistogram] = {}
        self.gc_pauses = GcPauses()

    def collect(self) -> Iterator[Metric]:
        yield from self._gc()
        yield from self._queries()
        yield from self._alerts()
        yield from self._limits()
        yield from self._client_quarantines()
        yield from self._upstreams()
        yield from self._cache_and_state()
        yield from self._sinks()
        yield from self._reloads()
        if self.pod_watch is not None:
            yield from self._pods(self.pod_watch.stats())

    def _gc(self) -> Iterator[Metric]:
        pauses = HistogramMetricFamily(
            "dnsgate_gc_pause_seconds",
            "Time the cyclic garbage collector held the process (every query waits), by generation.",
            labels=["generation"],
        )
        for generation, hist in enumerate(self.gc_pauses.histograms):
            pauses.add_metric([str(generation)], hist.cumulative(), sum_value=hist.sum)
        yield pauses
        yield labelled(
            GaugeMetricFamily, "dnsgate_gc_longest_pause_seconds",
            "The longest collection since start, by generation.", ["generation"],
            [((str(g),), v) for g, v in enumerate(self.gc_pauses.longest)],
        )

    @staticmethod
    def _pods(stats: dict[str, Any]) -> Iterator[Metric]:
        from resolver.operations.kubernetes import STATES

        yield labelled(
            GaugeMetricFamily, "dnsgate_kubernetes_watch_state", "1 for the Pods watch's current state.",
            ["state"], [((state,), 1.0 if state == stats["state"] else 0.0) for state in STATES],
        )
        yield labelled(
            CounterMetricFamily, "dnsgate_kubernetes_watch_events", "Pod watch events applied, by type.",
            ["type"], sorted(((kind,), n) for kind, n in stats["events"].items()),
        )
        yield counter("dnsgate_kubernetes_relists", "Full Pod lists after the first (410 Gone, recovery).",
                      stats["relists"])
        yield counter("dnsgate_kubernetes_watch_errors", "Failed Pod list or watch requests (retried).",
                      stats["errors"])
        yield gauge("dnsgate_kubernetes_mapped_pods", "Pods whose addresses map to a client now.",
                    stats["mapped_pods"])
        yield gauge("dnsgate_kubernetes_synced", "1 once the first Pod list has been applied.",
                    1.0 if stats["synced"] else 0.0)

    def _queries(self) -> Iterator[Metric]:
        stats = self.server.stats()
        yield labelled(
            CounterMetricFamily, "dnsgate_queries",
            "Queries answered, by namespace, action and query type.",
            ["namespace", "action", "qtype"], sorted(stats["queries"].items()),
        )
        by_rcode: defaultdict[str, int] = defaultdict(int)
        for rcode, n in stats["rcodes"].items():
            by_rcode[rcode_label(rcode)] += n
        yield labelled(
            CounterMetricFamily, "dnsgate_responses", "Responses by rcode.",
            ["rcode"], [((k,), n) for k, n in sorted(by_rcode.items())],
        )
        yield counter("dnsgate_malformed_queries", "Datagrams that were not a readable query.",
                      stats["malformed"])
        yield counter("dnsgate_internal_errors", "SERVFAIL answers after an internal error.",
                      stats["internal_errors"])
        yield gauge("dnsgate_inflight_queries", "Queries waiting on an upstream.", stats["inflight"])
        yield gauge("dnsgate_tcp_connections", "Open client TCP connections.", stats["tcp"]["connections"])

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
        yield labelled(
            CounterMetricFamily, "dnsgate_alerts_raised",
            "Alerts raised, by namespace and kind (policy, tunnel, rate_limit, rebinding, undeclared).",
            ["namespace", "kind"], sorted(list(counts.kinds.items())),
        )
        yield gauge("dnsgate_quarantines_active", "(namespace, domain) pairs quarantined now.",
                    self.server.engine.state.stats()["quarantines_active"])

    def _limits(self) -> Iterator[Metric]:
        limits = self.server.engine.limiter.stats()
        yield labelled(
            CounterMetricFamily, "dnsgate_rate_limited",
            "UDP queries over a client's rate limit, by namespace and what they got (drop, or TC=1 slip).",
            ["namespace", "result"],
            sorted([((ns, "dropped"), n) for ns, n in limits["dropped"].items()]
                   + [((ns, "slipped"), n) for ns, n in limits["slipped"].items()]),
        )
        yield gauge("dnsgate_rate_limit_clients", "Client addresses holding a token bucket.", limits["clients"])
        yield labelled(
            GaugeMetricFamily, "dnsgate_rate_limited_clients",
            "Client addresses refused a query by their rate limit in the last 60 s, by namespace.",
            ["namespace"],
            sorted(((ns,), limits["limited_clients"].get(ns, 0)) for ns in self.server.config.namespaces),
        )
        listeners = self.server.stats()
        for name, doc, key in _UDP_COUNTERS:
            yield counter(name, doc, listeners[key])
        for name, doc, key in _TCP_COUNTERS:
            yield counter(name, doc, listeners["tcp"][key])

    def _client_quarantines(self) -> Iterator[Metric]:
        book = self.server.engine.state.clients
        active: defaultdict[str, int] = defaultdict(int)
        for q in book.active(time.time()):
            active[q.namespace] += 1
        yield labelled(GaugeMetricFamily, "dnsgate_client_quarantines_active",
                       "Clients quarantined now (on_undeclared), by namespace; every replica's, with Redis.",
                       ["namespace"], [((ns,), n) for ns, n in sorted(active.items())])
        yield counter("dnsgate_client_quarantines_started", "Client quarantines this replica started.",
                      book.started)
        yield counter("dnsgate_client_quarantines_lifted", "Client quarantines lifted through the admin API.",
                      book.lifted)
        yield counter("dnsgate_client_quarantine_blocks", "Queries denied because their client was quarantined.",
                      book.blocks)

    def _upstreams(self) -> Iterator[Metric]:
        stats = self.server.engine.forwarder.stats()
        latency = HistogramMetricFamily(
            "dnsgate_upstream_latency_seconds", "Time to an upstream's answer.", labels=["upstream"]
        )
        queries: Rows = []
        errors: Rows = []
        healthy: Rows = []
        unexpected: Rows = []
        for upstream in stats["upstreams"]:
            label = (upstream["label"],)
            hist = self.latency.setdefault(label[0], LatencyHistogram())
            hist.add(upstream["latencies"])
            latency.add_metric(list(label), hist.cumulative(), hist.sum)
            queries.append((label, upstream["queries"]))
            errors.append((label, upstream["errors"]))
            healthy.append((label, 1.0 if upstream["healthy"] else 0.0))
            unexpected.append((label, upstream["unexpected"]))
        yield latency
        yield labelled(CounterMetricFamily, "dnsgate_upstream_queries",
                       "Attempts sent to an upstream.", ["upstream"], queries)
        yield labelled(CounterMetricFamily, "dnsgate_upstream_errors",
                       "Attempts that failed or timed out.", ["upstream"], errors)
        yield labelled(GaugeMetricFamily, "dnsgate_upstream_healthy",
                       "1 when the upstream is considered healthy.", ["upstream"], healthy)
        yield labelled(CounterMetricFamily, "dnsgate_upstream_unexpected_replies",
                       "Datagrams from the upstream's address and port that were not the reply awaited "
                       "(another ID, another question, or the question in another letter case): dropped.",
                       ["upstream"], unexpected)
        yield counter("dnsgate_upstream_servfails", "Queries no upstream answered in time.",
                      stats["servfails"])
        scrub = self.server.engine.scrubber.stats()
        yield counter("dnsgate_upstream_malformed_replies",
                      "Upstream replies that failed the checks (the client got SERVFAIL).", scrub["malformed"])
        yield counter("dnsgate_upstream_scrubbed_records",
                      "Records removed from upstream replies: outside the query's chain or bailiwick.",
                      scrub["removed_records"])
        yield counter("dnsgate_local_answers",
                      "Questions answered locally, never forwarded (meta types, zone transfers, other classes).",
                      self.server.engine.admission.stats()["answered"])
        loops = self.server.engine.loop.stats()
        yield counter("dnsgate_forwarding_loops",
                      "Queries that came back through an upstream carrying this dnsgate's mark (answered SERVFAIL).",
                      loops["loops"])
        yield counter("dnsgate_forwarding_hops_exceeded",
                      f"Queries carrying the marks of {MAX_HOPS} other forwarders (answered SERVFAIL).",
                      loops["too_many_hops"])
        yield counter("dnsgate_forwarding_loops_suspected",
                      "Queries refused because too many for the same question were in flight.",
                      stats["loop_suspected"])
        yield counter("dnsgate_upstream_coalesced",
                      "Queries answered from another query's upstream reply: the same question was in flight.",
                      stats["coalesced"])
        yield counter("dnsgate_upstream_variants_refused",
                      "Queries answered SERVFAIL: their client had 8 upstream queries for the question waiting.",
                      stats["variants_refused"])
        rebinding = self.server.engine.rebinding.stats()
        yield labelled(CounterMetricFamily, "dnsgate_rebinding_answers",
                       "Upstream answers for outside names that pointed at inside addresses.", ["action"],
                       [(("blocked",), rebinding["blocked"]), (("alerted",), rebinding["observed"])])

    def _cache_and_state(self) -> Iterator[Metric]:
        engine = self.server.engine
        cache = engine.cache.stats()
        yield counter("dnsgate_cache_hits", "Answers served from the cache.", cache["hits"])
        yield counter("dnsgate_cache_misses", "Cache lookups that missed.", cache["misses"])
        yield counter("dnsgate_cache_evictions", "Entries evicted to make room.", cache["evictions"])
        yield gauge("dnsgate_cache_entries", "Entries in the cache.", cache["entries"])
        state = engine.state.stats()
        in_use = str(state["backend_in_use"])
        yield labelled(
            GaugeMetricFamily, "dnsgate_state_backend",
            "1 for the state backend in use (redis falls back to memory).", ["backend"],
            [((name,), 1.0 if name == in_use else 0.0) for name in ("memory", "redis")],
        )
        yield counter("dnsgate_state_redis_errors", "Redis operations that failed.", state["errors"])
        yield counter("dnsgate_state_redis_fallbacks", "Falls back from Redis to local memory.",
                      state["fallbacks"])
        yield gauge("dnsgate_detector_pairs", "Window pairs the detector holds (at most max_pairs).", state["pairs"])
        yield counter("dnsgate_detector_pair_evictions", "Window pairs evicted to make room.",
                      state["pair_evictions"])
        yield counter("dnsgate_detector_pairs_spared",
                      "Evictions that passed over a live pair carrying new text.", state["pairs_spared"])
        yield counter("dnsgate_detector_pair_evictions_live",
                      "Live pairs carrying new text evicted all the same: state under pressure.",
                      state["pair_evictions_live"])
        detector = engine.detector.stats()
        yield labelled(
            CounterMetricFamily, "dnsgate_detector_queries",
            "Queries by what the detector spent on them (decided: a counter; deferred: cheap "
            "counters only; estimated: the information estimate; exempted: nothing).", ["tier"],
            [((tier,), detector[key]) for tier, key in (
                ("decided", "decided_queries"), ("deferred", "deferred"),
                ("estimated", "estimated"), ("exempted", "exempted"))],
        )

    def _sinks(self) -> Iterator[Metric]:
        hub = self.server.engine.alerts.stats()
        yield counter("dnsgate_alerts_emitted", "Alerts handed to the sinks.", hub["emitted"])
        sinks = hub["sinks"]

        def rows(key: str) -> Rows:
            return [((s["name"],), s[key]) for s in sinks]

        yield labelled(CounterMetricFamily, "dnsgate_alerts_delivered",
                       "Alerts a sink delivered.", ["sink"], rows("delivered"))
        yield labelled(CounterMetricFamily, "dnsgate_alerts_retried",
                       "Delivery attempts a sink retried.", ["sink"], rows("retried"))
        yield labelled(CounterMetricFamily, "dnsgate_alerts_dropped",
                       "Alerts a sink gave up on (queue full, retries exhausted, closed).",
                       ["sink"], rows("dropped"))
        yield labelled(CounterMetricFamily, "dnsgate_alerts_dropped_by_severity",
                       "Alerts a sink gave up on, by the alert's severity (a full queue drops the "
                       "least severe first).", ["sink", "severity"],
                       [((s["name"], severity), n) for s in sinks
                        for severity, n in s.get("dropped_by_severity", {}).items()])
        yield labelled(GaugeMetricFamily, "dnsgate_alerts_queued",
                       "Alerts waiting in a sink's queue.", ["sink"], rows("queued"))
        yield labelled(CounterMetricFamily, "dnsgate_alerts_folded",
                       "Alerts folded into a per-client aggregate (policy: names, never sent one by one; "
                       "tunnel: alerts the remote sinks get in an aggregate, the local ones one by one).",
                       ["kind"], [((kind,), hub["folded_kinds"].get(kind, 0)) for kind in ("policy", "tunnel")])

    def _reloads(self) -> Iterator[Metric]:
        stats = self.server.stats()
        yield labelled(
            CounterMetricFamily, "dnsgate_reloads", "Config reloads by result.", ["result"],
            [(("ok",), stats["reloads_ok"]), (("failed",), stats["reloads_failed"])],
        )
        yield gauge("dnsgate_config_generation", "Config generation: 0 at start, +1 per reload.",
                    stats["generation"])
        if self.reloader is not None:
            yield gauge("dnsgate_config_last_reload_successful",
                        "1 when the last reload attempt succeeded.",
                        1.0 if self.reloader.stats()["last_ok"] else 0.0)
        yield gauge("dnsgate_ready", "1 when /readyz reports ready.", 1.0 if ready(self.server) else 0.0)


def ready(server: Server) -> bool:
    """Ready once the policy is loaded (listeners up), at least one upstream is healthy and,
    with pod identity on, the first Pod list has been applied."""
    return bool(server.stats()["ready"]) and server.engine.forwarder.any_healthy and pods_synced(server)


def pods_synced(server: Server) -> bool:
    """False only while the Pods watch runs and its first list has not completed.

    The watch starts with the server; a reload that adds ``identity.kubernetes``
    does not start one, and must not make the replica unready for good.
    """
    pods = server.engine.pods
    return server.config.identity.kubernetes is None or pods.synced or not pods.watched
