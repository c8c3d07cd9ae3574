"""Remote alert sinks: webhook, Alertmanager (v2 API) and Redis stream.

Each remote sink owns a bounded queue and one background task that delivers
from it. ``submit`` only appends to the queue (or counts a drop when it is
full), so a slow or dead receiver never touches the query path. Delivery is
retried with exponential backoff; a batch that still fails is dropped and
counted. Nothing is lost silently: the hub hands every alert to every sink, so
the jsonl sink, when one is configured, holds each alert a remote sink could
not deliver; when none is configured a dropped alert is logged as one JSON
line on stderr.

``build(spec)`` validates a sink's options once, when the engine is built,
raising ConfigError with the file, line and key of the bad option.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from resolver.alerts import Alert, JsonlSink, Sink
from resolver.config import ConfigError
from resolver.config import Sink as SinkSpec

log = logging.getLogger("dnsgate.sinks")

CLOSE_GRACE = 2.0  # seconds a closing sink keeps delivering what is still queued
ALERTNAMES = {"tunnel": "DNSTunnel", "policy": "DNSPolicyDenied"}


class DeliveryError(Exception):
    """A delivery attempt failed; ``permanent`` ones (HTTP 4xx) are not retried."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True, slots=True)
class Delivery:
    """How a remote sink queues and retries."""

    queue_size: int = 1000
    batch_size: int = 1
    retries: int = 3
    backoff: float = 0.5  # first retry delay; doubles each attempt, with jitter
    backoff_max: float = 10.0
    timeout: float = 5.0  # per attempt

    def delay(self, attempt: int) -> float:
        base: float = min(self.backoff_max, self.backoff * (2**attempt))
        return base * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not crypto


def spill_to_log(sink: str, alert: Alert) -> None:
    """Where a dropped alert goes when no jsonl sink holds a copy."""
    log.warning("alert not delivered to sink %s: %s", sink, alert.to_json())


class QueuedSink:
    """A bounded queue and a background task delivering batches from it.

    Subclasses implement ``deliver(batch)`` and, when they hold a connection,
    ``open``/``release``.
    """

    def __init__(self, name: str, delivery: Delivery) -> None:
        self.name = name
        self.delivery = delivery
        self.delivered = 0
        self.retried = 0
        self.dropped = 0
        self.spill: Callable[[str, Alert], None] | None = spill_to_log
        self.down = False
        self._queue: deque[Alert] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._busy = False  # a batch is being delivered (or waiting to be retried)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def submit(self, alert: Alert) -> None:
        """Queue an alert; never blocks, counts a drop when the queue is full."""
        if self._closing or len(self._queue) >= self.delivery.queue_size:
            self._drop([alert], "queue full" if not self._closing else "sink closed")
            return
        self._queue.append(alert)
        if self._wakeup is not None:
            self._wakeup.set()

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        if self._queue:
            self._wakeup.set()
        await self.open()
        self._task = asyncio.create_task(self._run(), name=f"sink-{self.name}")

    async def close(self) -> None:
        """Deliver what is queued for a short grace period, then drop (and count) the rest."""
        self._closing = True
        if self._task is not None:
            if self._queue or self._busy:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CLOSE_GRACE):
                        while self._queue or self._busy:
                            await asyncio.sleep(0.02)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._queue:
            self._drop(list(self._queue), "sink closed")
            self._queue.clear()
        await self.release()

    async def open(self) -> None:
        """Acquire what delivery needs (a session, a connection pool)."""

    async def release(self) -> None:
        """Release what ``open`` acquired."""

    async def deliver(self, batch: list[Alert]) -> None:
        raise NotImplementedError

    async def _run(self) -> None:
        assert self._wakeup is not None
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            size = min(self.delivery.batch_size, len(self._queue))
            batch = [self._queue.popleft() for _ in range(size)]
            self._busy = True
            try:
                await self._send(batch)
            finally:
                self._busy = False

    async def _send(self, batch: list[Alert]) -> None:
        d = self.delivery
        error: BaseException | None = None
        for attempt in range(d.retries + 1):
            if attempt:
                self.retried += 1
                await asyncio.sleep(d.delay(attempt - 1))
            try:
                async with asyncio.timeout(d.timeout):
                    await self.deliver(batch)
            except asyncio.CancelledError:
                self._drop(batch, "sink closed")
                raise
            except Exception as exc:  # noqa: BLE001 - any failure of a remote is retried, never raised
                error = exc
                if isinstance(exc, DeliveryError) and exc.permanent:
                    break
                continue
            self.delivered += len(batch)
            if self.down:
                self.down = False
                log.info("alert sink %s delivering again", self.name)
            return
        if not self.down:
            self.down = True
            log.error(
                "alert sink %s failing (%s); dropping its undelivered alerts and counting them",
                self.name, describe(error),
            )
        self._drop(batch, describe(error))

    def _drop(self, batch: list[Alert], reason: str) -> None:
        self.dropped += len(batch)
        if self.spill is not None:
            for alert in batch:
                self.spill(self.name, alert)
        else:
            log.debug(
                "alert sink %s dropped %d alerts (%s); the jsonl sink has them",
                self.name, len(batch), reason,
            )


def describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class HttpSink(QueuedSink):
    """Shared by the HTTP sinks: one aiohttp session, headers, a status check."""

    def __init__(self, name: str, delivery: Delivery, url: str, headers: dict[str, str]) -> None:
        super().__init__(name, delivery)
        self.url = url
        self.headers = {"Content-Type": "application/json", "User-Agent": "dnsgate", **headers}
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        self._session = aiohttp.ClientSession(headers=self.headers)

    async def release(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(self, url: str, body: str) -> None:
        assert self._session is not None
        async with self._session.post(url, data=body.encode()) as resp:
            if resp.status >= 300:
                text = (await resp.text())[:200]
                # Client errors other than timeout/rate limit will fail the same way again.
                permanent = 400 <= resp.status < 500 and resp.status not in (408, 429)
                raise DeliveryError(f"HTTP {resp.status} from {url}: {text}", permanent)


class WebhookSink(HttpSink):
    """POSTs each alert, as the JSON alert object, to a URL."""

    async def deliver(self, batch: list[Alert]) -> None:
        for alert in batch:
            await self.post(self.url, alert.to_json())


class AlertmanagerSink(HttpSink):
    """Alertmanager v2 API: ``POST /api/v2/alerts`` with a batch of alerts.

    Labels identify the alert for grouping (alertname, namespace, domain,
    severity, plus configured static labels); what changes per query (name,
    client, reasons, evidence) goes in annotations. ``endsAt`` is
    ``resolve_after`` seconds after the alert, so Alertmanager resolves it by
    itself once dnsgate stops re-firing it.
    """

    def __init__(
        self,
        name: str,
        delivery: Delivery,
        url: str,
        headers: dict[str, str],
        resolve_after: float,
        labels: dict[str, str],
        generator_url: str | None,
    ) -> None:
        super().__init__(name, delivery, url.rstrip("/") + "/api/v2/alerts", headers)
        self.resolve_after = resolve_after
        self.labels = labels
        self.generator_url = generator_url

    def payload(self, alert: Alert) -> dict[str, Any]:
        labels = {
            **self.labels,
            "alertname": ALERTNAMES.get(alert.kind, "DNSAlert"),
            "namespace": alert.namespace,
            "domain": alert.domain,
            "severity": alert.severity,
        }
        reasons = ",".join(alert.reasons)
        annotations = {
            "summary": f"{alert.kind} alert for {alert.domain} in namespace {alert.namespace}: "
            f"{reasons}",
            "reasons": reasons,
            "evidence": json.dumps(
                alert.evidence, separators=(",", ":"), default=str, sort_keys=True
            ),
            "qname": alert.qname,
            "qtype": alert.qtype,
            "client": alert.client,
            "action": alert.action,
            "count": str(alert.count),
        }
        out: dict[str, Any] = {
            "labels": labels,
            "annotations": annotations,
            "startsAt": rfc3339(alert.ts),
            "endsAt": rfc3339(alert.ts + self.resolve_after),
        }
        if self.generator_url:
            out["generatorURL"] = self.generator_url
        return out

    async def deliver(self, batch: list[Alert]) -> None:
        await self.post(self.url, json.dumps([self.payload(a) for a in batch], default=str))


class RedisStreamSink(QueuedSink):
    """``XADD`` to a Redis stream with an approximate MAXLEN, for SIEM pipelines.

    Each entry's fields are the alert object's keys; lists and mappings
    (``reasons``, ``evidence``) are JSON text.
    """

    def __init__(self, name: str, delivery: Delivery, url: str, stream: str, maxlen: int) -> None:
        super().__init__(name, delivery)
        self.url = url
        self.stream = stream
        self.maxlen = maxlen
        self._client: Any = None

    async def open(self) -> None:
        import redis.asyncio

        self._client = redis.asyncio.from_url(
            self.url,
            socket_timeout=self.delivery.timeout,
            socket_connect_timeout=self.delivery.timeout,
        )

    async def release(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @staticmethod
    def fields(alert: Alert) -> dict[str, str]:
        out: dict[str, str] = {}
        for key, value in alert.to_dict().items():
            if isinstance(value, list | dict):
                out[key] = json.dumps(value, separators=(",", ":"), default=str)
            else:
                out[key] = str(value)
        return out

    async def deliver(self, batch: list[Alert]) -> None:
        async with self._client.pipeline(transaction=False) as pipe:
            for alert in batch:
                pipe.xadd(self.stream, self.fields(alert), maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]
            await pipe.execute()


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- building from config -----------------------------------------------------


class Options:
    """Reads one sink's options; every problem names the file, line and key."""

    def __init__(self, spec: SinkSpec) -> None:
        self.spec = spec
        self.data = dict(spec.options)
        self.prefix = f"alerts[{spec.type}]"
        self.used: set[str] = set()

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(self.spec.path, self.spec.line, f"{self.prefix}.{key}", message)

    def get(self, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        self.used.add(key)
        value = self.data.get(key, default)
        if value is default:
            return default
        if isinstance(value, bool) and kind in (int, float):
            raise self.error(key, f"must be a number, not {value!r}")
        if kind is float and isinstance(value, int):
            value = float(value)
        if not isinstance(value, kind):
            kinds = (kind,) if isinstance(kind, type) else kind
            name = " or ".join(k.__name__ for k in kinds)
            raise self.error(key, f"must be a {name}, not {value!r}")
        return value

    def positive(self, key: str, kind: type, default: Any) -> Any:
        value = self.get(key, kind, default)
        if value <= 0:
            raise self.error(key, f"must be greater than 0, not {value!r}")
        return value

    def url(self, key: str, schemes: tuple[str, ...], default: str | None = None) -> str:
        if key not in self.data and default is None:
            raise self.error(key, "is required")
        value = str(self.get(key, str, default))
        parts = urlsplit(value)
        where = parts.path if parts.scheme == "unix" else parts.hostname
        if parts.scheme not in schemes or not where:
            raise self.error(key, f"must be a {' or '.join(schemes)} URL, not {value!r}")
        return value

    def mapping(self, key: str) -> dict[str, str]:
        value = self.get(key, dict, {})
        out: dict[str, str] = {}
        for k, v in value.items():
            if isinstance(v, bool) or not isinstance(v, str | int | float):
                raise self.error(f"{key}.{k}", f"must be a string, not {v!r}")
            out[str(k)] = str(v)
        return out

    def headers(self) -> dict[str, str]:
        """``headers`` plus ``Authorization: Bearer`` from ``bearer_token_env``."""
        headers = self.mapping("headers")
        env = self.get("bearer_token_env", str, None)
        if env is not None:
            token = os.environ.get(env)
            if not token:
                raise self.error("bearer_token_env", f"variable {env} is unset or empty")
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def delivery(self, batch_size: int) -> Delivery:
        retries = self.get("retries", int, 3)
        if retries < 0:
            raise self.error("retries", f"must be 0 or more, not {retries}")
        return Delivery(
            queue_size=self.positive("queue_size", int, 1000),
            batch_size=batch_size,
            retries=retries,
            backoff=self.positive("backoff", float, 0.5),
            backoff_max=self.positive("backoff_max", float, 10.0),
            timeout=self.positive("timeout", float, 5.0),
        )

    def finish(self) -> None:
        for key in self.data:
            if key not in self.used:
                raise self.error(key, "unknown key")


def build(spec: SinkSpec) -> Sink:
    """A remote sink from its config entry; ConfigError names the bad option."""
    opts = Options(spec)
    name = opts.get("name", str, spec.type)
    sink: QueuedSink
    if spec.type == "webhook":
        url = opts.url("url", ("http", "https"))
        sink = WebhookSink(name, opts.delivery(1), url, opts.headers())
    elif spec.type == "alertmanager":
        sink = AlertmanagerSink(
            name,
            opts.delivery(opts.positive("batch_size", int, 64)),
            opts.url("url", ("http", "https")),
            opts.headers(),
            resolve_after=opts.positive("resolve_after", float, 300.0),
            labels=opts.mapping("labels"),
            generator_url=opts.get("generator_url", str, None),
        )
    elif spec.type == "redis_stream":
        sink = RedisStreamSink(
            name,
            opts.delivery(opts.positive("batch_size", int, 64)),
            opts.url("url", ("redis", "rediss", "unix"), "redis://127.0.0.1:6379/0"),
            opts.get("stream", str, "dnsgate:alerts"),
            opts.positive("maxlen", int, 100_000),
        )
    else:
        raise opts.error("type", f"no remote sink of type {spec.type!r}")
    opts.finish()
    return sink


def connect_fallbacks(sinks: list[Sink]) -> None:
    """Give sinks unique names and decide where remote sinks' dropped alerts go.

    With a jsonl sink configured, it already received every alert, so a remote
    drop is only counted; without one, the dropped alert is logged as JSON.
    """
    seen: dict[str, int] = {}
    for sink in sinks:
        n = seen.get(sink.name, 0)
        seen[sink.name] = n + 1
        if n:
            sink.name = f"{sink.name}{n + 1}"
    has_jsonl = any(isinstance(s, JsonlSink) for s in sinks)
    for sink in sinks:
        if isinstance(sink, QueuedSink):
            sink.spill = None if has_jsonl else spill_to_log
