"""Remote alert sinks: webhook, Alertmanager (v2 API), Redis stream, Falco (falcosidekick) and syslog.

Each remote sink owns a bounded queue and one background task that delivers
from it. ``submit`` only appends to the queue (or counts a drop when it is
full), so a slow or dead receiver never touches the query path. The queue is
ordered by severity, then shared fairly among clients: the most severe alerts
go out first, taking turns between clients, and a full queue makes room for a
new alert by dropping a less severe one, or one of a client holding more of
the queue (see ``QueuedSink``), so a flood of alerts from one client cannot
keep another client's tunnel alert out. Delivery is
retried with exponential backoff; a batch that still fails is dropped and
counted. Nothing is lost silently: the hub hands every alert to every sink, so
the jsonl sink, when one is configured, holds each alert a remote sink could
not deliver; when none is configured the drops are logged on stderr, at most
one line per sink a minute carrying their count and one of them as JSON
(``DropLog``), so a flood of alerts to a dead receiver cannot flood the log.

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
import re
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar
from urllib.parse import urlsplit

import aiohttp

from resolver.config import Config
from resolver.config import Sink as SinkSpec
from resolver.pipeline.alerts import SEVERITIES, SEVERITY_RANK, Alert, JsonlSink, Sink, alert_owner
from resolver.schema import Choice, ConfigError, Kind, Positive, Rule, Section, fail, of_kind, validate

log = logging.getLogger("dnsgate.sinks")

CLOSE_GRACE = 2.0  # seconds a closing sink keeps delivering what is still queued
ALERTNAMES = {
    "tunnel": "DNSTunnel", "policy": "DNSPolicyDenied", "undeclared": "DNSUndeclaredEgress",
    "domain_churn": "DNSDomainChurn",
}


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


DROP_LOG_SECONDS = 60.0  # at most one "alerts not delivered" line per sink in this time


class DropLog:
    """Where a remote sink's dropped alerts go when no jsonl sink holds a copy: the log, bounded.

    A flood of alerts to a dead receiver (a client raising a tunnel alert per
    new domain) would otherwise write one line per alert. The first drop is
    logged at once; the drops that follow within ``interval`` are counted and
    written as one line when it has passed (a timer makes sure that line comes
    even when the drops stop), with their exact count, the last reason and one
    of the alerts as JSON. ``flush`` writes what is pending now (on close).
    Every drop is still counted in the sink's ``dropped`` (the metrics).
    """

    def __init__(self, interval: float = DROP_LOG_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self.pending = 0
        self._sink = ""
        self._reason = ""
        self._example: Alert | None = None
        self._logged = -interval
        self._timer: asyncio.TimerHandle | None = None

    def add(self, sink: str, batch: list[Alert], reason: str) -> None:
        """Count ``batch`` as dropped by ``sink``; log now if the last line is ``interval`` old."""
        if not batch:
            return
        self.pending += len(batch)
        self._sink, self._reason = sink, reason
        if self._example is None:
            self._example = batch[0]
        wait = self._logged + self.interval - self.clock()
        if wait <= 0:
            self.flush()
        elif self._timer is None:
            with contextlib.suppress(RuntimeError):  # no event loop: written by the next drop or flush
                self._timer = asyncio.get_running_loop().call_later(wait, self.flush)

    def flush(self) -> None:
        """Write one line for the drops not yet logged, if any."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.pending or self._example is None:
            return
        log.warning(
            "%d alerts not delivered to sink %s since the last such line (last reason: %s); one of them: %s",
            self.pending, self._sink, self._reason, self._example.to_json(),
        )
        self._logged = self.clock()
        self.pending = 0
        self._example = None


def severity_rank(severity: str) -> int:
    """0 for info ... 3 for critical; an unknown severity ranks as warning."""
    return SEVERITY_RANK.get(severity, 1)


class QueuedSink:
    """A bounded queue and a background task delivering batches from it.

    The queue holds, per severity, one FIFO lane per client (``alert_owner``: a
    pod with all its addresses, an IPv6 client by its /64). Delivery takes
    the most severe alerts first, one lane after the other (a client with 500
    alerts queued and one with 1 take turns). When the queue is full a new
    alert takes the place of the newest queued alert of the heaviest client
    of the lowest severity queued, if that severity is lower than the new
    alert's, or, at the same severity, if that client holds at least two more
    alerts than the new alert's client; otherwise the new alert is dropped.
    Either way one alert is dropped and counted (by severity too), never
    silently. Within one lane, alerts keep their order.

    Subclasses implement ``deliver(batch)`` and, when they hold a connection,
    ``open``/``release``.
    """

    remote = True  # the hub sends remote sinks an aggregate instead of a client's flood of tunnel alerts

    def __init__(self, name: str, delivery: Delivery) -> None:
        self.name = name
        self.delivery = delivery
        self.delivered = 0
        self.retried = 0
        self.dropped = 0
        self.dropped_by_severity: dict[str, int] = dict.fromkeys(SEVERITIES, 0)
        self.spill: DropLog | None = DropLog()  # None when a jsonl sink holds every alert
        self.down = False
        # lanes[severity rank][client]: that client's queued alerts of that severity, oldest first
        self._lanes: list[dict[str, deque[Alert]]] = [{} for _ in SEVERITIES]
        self._size = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._busy = False  # a batch is being delivered (or waiting to be retried)

    @property
    def queued(self) -> int:
        return self._size

    def stats(self) -> dict[str, Any]:
        """Delivery counters for metrics."""
        return {
            "name": self.name, "delivered": self.delivered, "retried": self.retried,
            "dropped": self.dropped, "queued": self.queued,
            "dropped_by_severity": dict(self.dropped_by_severity),
        }

    def submit(self, alert: Alert) -> None:
        """Queue an alert; never blocks. At a full queue one alert is dropped and counted:
        a less severe or a heavier client's queued one, or else this one."""
        if self._closing:
            self._drop([alert], "sink closed")
            return
        rank = severity_rank(alert.severity)
        owner = alert_owner(alert)  # a pod's addresses (an IPv6 /64's) are one client here
        if self._size >= self.delivery.queue_size:
            evicted = self._evict_for(rank, owner)
            if evicted is None:
                self._drop([alert], "queue full")
                return
            self._drop([evicted], "queue full, made room for a more severe alert or another client's")
        lanes = self._lanes[rank]
        lane = lanes.get(owner)
        if lane is None:
            lane = lanes[owner] = deque()
        lane.append(alert)
        self._size += 1
        if self._wakeup is not None:
            self._wakeup.set()

    def _evict_for(self, rank: int, client: str) -> Alert | None:
        """Take the queued alert a new one of severity ``rank`` from ``client`` replaces, if any."""
        for lower in range(rank + 1):
            lanes = self._lanes[lower]
            if not lanes:
                continue
            heaviest = max(lanes, key=lambda c: len(lanes[c]))
            lane = lanes[heaviest]
            if lower == rank:
                own = lanes.get(client)
                if len(lane) < (len(own) if own is not None else 0) + 2:
                    return None  # as severe, and no client holds more than its share: keep them
            alert = lane.pop()
            if not lane:
                del lanes[heaviest]
            self._size -= 1
            return alert
        return None

    def _take(self) -> Alert:
        """The next alert to deliver: most severe first, one client's lane after the other."""
        for lanes in reversed(self._lanes):
            if lanes:
                client = next(iter(lanes))
                lane = lanes.pop(client)
                alert = lane.popleft()
                if lane:
                    lanes[client] = lane  # to the back: the other clients go first
                self._size -= 1
                return alert
        raise IndexError("the queue is empty")

    def _take_all(self) -> list[Alert]:
        out = [a for lanes in reversed(self._lanes) for lane in lanes.values() for a in lane]
        for lanes in self._lanes:
            lanes.clear()
        self._size = 0
        return out

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        if self._size:
            self._wakeup.set()
        await self.open()
        self._task = asyncio.create_task(self._run(), name=f"sink-{self.name}")

    async def close(self) -> None:
        """Deliver what is queued for a short grace period, then drop (and count) the rest."""
        self._closing = True
        if self._task is not None:
            if self._size or self._busy:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CLOSE_GRACE):
                        while self._size or self._busy:  # noqa: ASYNC110
                            await asyncio.sleep(0.02)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._size:
            self._drop(self._take_all(), "sink closed")
        if self.spill is not None:
            self.spill.flush()
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
            while not self._size:
                self._wakeup.clear()
                await self._wakeup.wait()
            size = min(self.delivery.batch_size, self._size)
            batch = [self._take() for _ in range(size)]
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
        by_severity = self.dropped_by_severity
        for alert in batch:
            by_severity[alert.severity] = by_severity.get(alert.severity, 0) + 1
        if self.spill is not None:
            self.spill.add(self.name, batch, reason)
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


# -- security pipelines: Falco events and syslog ---------------------------------

# Falco's priorities (falcosidekick's ``priority``), from an alert's severity.
FALCO_PRIORITIES = {"info": "Informational", "warning": "Warning", "high": "Error", "critical": "Critical"}
FALCO_RULES = {
    "policy": "DNS query to a non-allowlisted domain",
    "tunnel": "DNS tunnel suspected",
    "rebinding": "DNS answer rebinding into a private range",
    "rate_limit": "DNS client over its rate limit",
    "domain_churn": "DNS client asking a flood of never-seen domains",
    "undeclared": "Workload quarantined for undeclared DNS egress",
}
# MITRE ATT&CK tags in Falco's style: T1071.004 is "Application Layer Protocol: DNS",
# T1048 "Exfiltration Over Alternative Protocol".
FALCO_TAGS = {
    "policy": ["dns", "network", "mitre_command_and_control", "T1071.004"],
    "tunnel": ["dns", "network", "mitre_exfiltration", "mitre_command_and_control", "T1048", "T1071.004"],
    "rebinding": ["dns", "network", "mitre_initial_access"],
    "rate_limit": ["dns", "network", "mitre_impact"],
    "domain_churn": ["dns", "network", "mitre_defense_evasion", "T1562"],
    "undeclared": ["dns", "network", "mitre_exfiltration"],
}


def scalar(value: Any) -> str | int | float | bool:
    """An evidence value as one flat field: numbers and text as they are, the rest as JSON text."""
    if isinstance(value, str | int | float | bool):
        return value
    return json.dumps(value, separators=(",", ":"), default=str, sort_keys=True)


class FalcoSink(HttpSink):
    """POSTs each alert as a Falco event to a falcosidekick-compatible endpoint.

    The event has Falco's output JSON shape (``rule``, ``priority``,
    ``output``, ``output_fields``, ``time``, ``source``, ``tags``,
    ``hostname``), so falcosidekick routes it to its outputs like any Falco
    alert. ``output_fields`` are flat (``dnsgate.namespace``,
    ``dnsgate.evidence.entropy`` ...); names keep their ``\\DDD`` escapes.
    """

    def __init__(self, name: str, delivery: Delivery, url: str, headers: dict[str, str],
                 source: str, hostname: str, tags: list[str]) -> None:
        super().__init__(name, delivery, url, headers)
        self.source = source
        self.hostname = hostname
        self.tags = tags

    def event(self, alert: Alert) -> dict[str, Any]:
        priority = FALCO_PRIORITIES.get(alert.severity, "Warning")
        rule = FALCO_RULES.get(alert.kind, "dnsgate alert")
        fields: dict[str, Any] = {
            "dnsgate.kind": alert.kind,
            "dnsgate.severity": alert.severity,
            "dnsgate.namespace": alert.namespace,
            "dnsgate.client": alert.client,
            "dnsgate.qname": alert.qname,
            "dnsgate.qtype": alert.qtype,
            "dnsgate.domain": alert.domain,
            "dnsgate.reasons": ",".join(alert.reasons),
            "dnsgate.action": alert.action,
            "dnsgate.count": alert.count,
        }
        for key, value in alert.evidence.items():
            fields[f"dnsgate.evidence.{key}"] = scalar(value)
        when = datetime.fromtimestamp(alert.ts, UTC)
        output = (
            f"{when.strftime('%H:%M:%S.%f')}: {priority} {rule} "
            f"(namespace={alert.namespace} client={alert.client} qname={alert.qname} "
            f"qtype={alert.qtype} domain={alert.domain} reasons={fields['dnsgate.reasons'] or '-'} "
            f"action={alert.action} count={alert.count})"
        )
        return {
            "rule": rule,
            "priority": priority,
            "output": output,
            "output_fields": fields,
            "time": when.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "source": self.source,
            "tags": [*FALCO_TAGS.get(alert.kind, ["dns"]), *self.tags],
            "hostname": self.hostname,
        }

    async def deliver(self, batch: list[Alert]) -> None:
        for alert in batch:
            await self.post(self.url, json.dumps(self.event(alert), default=str))


SYSLOG_FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7,
    "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, "ntp": 12, "security": 13, "console": 14,
    "solaris-cron": 15, **{f"local{i}": 16 + i for i in range(8)},
}
# RFC 5424 severities: critical 2, error 3, warning 4, informational 6.
SYSLOG_SEVERITIES = {"info": 6, "warning": 4, "high": 3, "critical": 2}
SD_VALUE_MAX = 1024  # characters of one structured-data value; a name is at most 1020 escaped
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NOT_PRINTABLE = re.compile(r"[^\x21-\x7e]")
_SD_NAME_BAD = re.compile(r'[^\x21-\x7e]|[= \]"]')


def _escape_control(text: str) -> str:
    # Names arrive escaped already; this keeps anything else from carrying a raw
    # control byte (a newline would split the record in a line-based receiver).
    return _CONTROL.sub(lambda m: f"\\{ord(m.group()):03d}", text)


def sd_value(value: Any) -> str:
    """A PARAM-VALUE (RFC 5424 6.3.3): control bytes as \\DDD, then ``"``, ``\\`` and ``]`` escaped."""
    text = _escape_control(str(scalar(value)))[:SD_VALUE_MAX]
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def sd_name(name: str) -> str:
    """An SD-NAME: printable US-ASCII without ``= ] "`` and space, at most 32 characters."""
    return _SD_NAME_BAD.sub("_", name)[:32] or "_"


def header_field(text: str, limit: int) -> str:
    """HOSTNAME, APP-NAME, MSGID: printable US-ASCII without spaces, ``-`` when empty."""
    return _NOT_PRINTABLE.sub("_", text)[:limit] or "-"


class SyslogSink(QueuedSink):
    """RFC 5424 messages over UDP, TCP (octet-counted framing, RFC 6587) or a unix datagram socket.

    One message per alert: the header carries the facility and a severity
    mapped from the alert's, ``APP-NAME`` dnsgate and the alert kind as
    ``MSGID``; every field of the alert object is a structured-data parameter
    under ``sd_id`` (evidence keys as ``ev.<key>``); the MSG is a one-line
    summary. Non-printable octets in names stay ``\\DDD``-escaped.
    """

    def __init__(self, name: str, delivery: Delivery, url: str, facility: int,
                 hostname: str, app_name: str, sd_id: str) -> None:
        super().__init__(name, delivery)
        parts = urlsplit(url)
        self.transport = parts.scheme
        self.path = parts.path
        self.host = parts.hostname or ""
        self.port = parts.port or 514
        self.facility = facility
        self.hostname = header_field(hostname, 255)
        self.app_name = header_field(app_name, 48)
        self.sd_id = sd_name(sd_id)
        self.procid = str(os.getpid())
        self._sock: socket.socket | None = None
        self._address: Any = None
        self._writer: asyncio.StreamWriter | None = None
        self._sending: list[Alert] | None = None  # the batch being sent over a datagram socket
        self._sent = 0  # how many of its messages were sent

    def message(self, alert: Alert) -> bytes:
        pri = self.facility * 8 + SYSLOG_SEVERITIES.get(alert.severity, 4)
        when = datetime.fromtimestamp(alert.ts, UTC).isoformat(timespec="microseconds")
        params = [
            ("kind", alert.kind), ("severity", alert.severity), ("namespace", alert.namespace),
            ("client", alert.client), ("qname", alert.qname), ("qtype", alert.qtype),
            ("domain", alert.domain), ("reasons", ",".join(alert.reasons)),
            ("action", alert.action), ("count", alert.count),
        ] + [(f"ev.{key}", value) for key, value in alert.evidence.items()]
        sd = "[" + self.sd_id + "".join(f' {sd_name(k)}="{sd_value(v)}"' for k, v in params) + "]"
        summary = _escape_control(
            f"{alert.kind} alert: {alert.namespace} {alert.client} asked {alert.qname} {alert.qtype}"
            f" ({', '.join(alert.reasons) or '-'}): {alert.action}"
        )
        msgid = header_field(alert.kind, 32)
        head = f"<{pri}>1 {when.replace('+00:00', 'Z')} {self.hostname} {self.app_name} {self.procid} {msgid}"
        return f"{head} {sd} {summary}".encode()

    async def open(self) -> None:
        """Nothing: every transport connects on its first delivery, and again after a failure."""

    async def release(self) -> None:
        self._close_socket()
        await self._disconnect()

    def _close_socket(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    async def _disconnect(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _datagram_socket(self) -> socket.socket:
        """The non-blocking datagram socket, made on first use (and after a failure).

        A unix socket is connected to its path: readiness to write then follows
        the receiver's queue (an unconnected one reads writable while the
        receiver's queue is full, and a wait for it would spin), and a receiver
        that went away fails the send, so the retry connects to the new one.
        """
        if self._sock is None:
            if self.transport == "unix":
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._address = self.path
            else:
                infos = await asyncio.get_running_loop().getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)
                family, _, _, _, self._address = infos[0]
                sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            try:
                if self.transport == "unix":
                    sock.connect(self._address)
            except BaseException:
                sock.close()
                raise
            self._sock = sock
        return self._sock

    async def _send_datagram(self, sock: socket.socket, data: bytes) -> None:
        """Send one datagram on the non-blocking ``sock``; when the kernel has no room
        (EAGAIN), wait until the socket is writable and send again.

        Plain ``send``/``sendto`` and ``add_writer``: uvloop, the loop ``dnsgate
        serve`` runs, has no ``loop.sock_sendto``. The wait is bounded by the
        delivery ``timeout``.
        """
        loop = asyncio.get_running_loop()
        while True:
            try:
                if self.transport == "unix":
                    sock.send(data)
                else:
                    sock.sendto(data, self._address)
                return
            except (BlockingIOError, InterruptedError):
                pass
            writable: asyncio.Future[None] = loop.create_future()
            fd = sock.fileno()
            loop.add_writer(fd, _wake, writable)
            try:
                await writable
            finally:
                loop.remove_writer(fd)

    async def deliver(self, batch: list[Alert]) -> None:
        if self.transport != "tcp":
            # A retry of this batch starts after the messages already sent: no duplicates.
            start = self._sent if self._sending is batch else 0
            self._sending, self._sent = batch, start
            try:
                sock = await self._datagram_socket()
                for alert in batch[start:]:
                    await self._send_datagram(sock, self.message(alert))
                    self._sent += 1
            except OSError:
                self._close_socket()  # the next attempt makes a new one
                raise
            self._sending = None
            return
        messages = [self.message(a) for a in batch]
        try:
            if self._writer is None:
                _, self._writer = await asyncio.open_connection(self.host, self.port)
            self._writer.write(b"".join(b"%d %s" % (len(m), m) for m in messages))
            await self._writer.drain()
        except BaseException:
            await self._disconnect()  # the next attempt reconnects
            raise


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- building from config -----------------------------------------------------


def _url(*schemes: str) -> Any:
    """A URL whose scheme is one of ``schemes`` and that names a host (or, for ``unix``, a path)."""

    def check(value: Any) -> str:
        value = str(of_kind(value, str))
        parts = urlsplit(value)
        where = parts.path if parts.scheme == "unix" else parts.hostname
        if parts.scheme not in schemes or not where:
            fail(f"must be a {' or '.join(schemes)} URL, not {value!r}")
        return value

    return Rule(check)


def _string_map(value: Any) -> dict[str, str]:
    """A mapping of header or label values, numbers written as text."""
    out: dict[str, str] = {}
    for k, v in of_kind(value, dict).items():
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            fail(f"must be a string, not {v!r}", key=str(k))
        out[str(k)] = str(v)
    return out


def _strings(value: Any) -> tuple[str, ...]:
    value = of_kind(value, list)
    if not all(isinstance(v, str) for v in value):
        fail(f"must be a list of strings, not {value!r}")
    return tuple(value)


def _token_variable(value: Any) -> str | None:
    if value is None:
        return None
    name = str(of_kind(value, str))
    if not os.environ.get(name):
        fail(f"variable {name} is unset or empty")
    return name


def _retries(value: Any) -> int:
    retries = int(of_kind(value, int, bools_as=float))
    if retries < 0:
        fail(f"must be 0 or more, not {retries}")
    return retries


Count = Annotated[int, Positive(int, bools_as=float)]  # a bool reads "must be a number" in sink options
Seconds = Annotated[float, Positive(float)]
Text = Annotated[str, Kind(str)]
OptionalText = Annotated[str | None, Kind(str, optional=True)]
StringMap = Annotated[dict[str, str], Rule(_string_map)]


# The order the options were always checked in: with several wrong, the first of these is named.
_DELIVERY = ("retries", "queue_size", "backoff", "backoff_max", "timeout")


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoteOptions(Section):
    """What every remote sink takes: its name and how it delivers (queue, retries, backoff)."""

    name: Annotated[str | None, Kind(str)] = None  # not given: the sink's type
    queue_size: Count = 1000
    retries: Annotated[int, Rule(_retries)] = 3
    backoff: Seconds = 0.5
    backoff_max: Seconds = 10.0
    timeout: Seconds = 5.0

    def delivery(self, batch_size: int) -> Delivery:
        return Delivery(queue_size=self.queue_size, batch_size=batch_size, retries=self.retries,
                        backoff=self.backoff, backoff_max=self.backoff_max, timeout=self.timeout)


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookOptions(RemoteOptions):
    ORDER: ClassVar[tuple[str, ...]] = ("name", "url", *_DELIVERY, "headers", "bearer_token_env")
    url: Annotated[str, _url("http", "https")]
    headers: StringMap = field(default_factory=dict)
    # Authorization: Bearer from this variable, which must be set when the sink is built
    bearer_token_env: Annotated[str | None, Rule(_token_variable)] = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertmanagerOptions(WebhookOptions):
    ORDER: ClassVar[tuple[str, ...]] = ("name", "batch_size", *_DELIVERY, "url", "headers", "bearer_token_env",
                                        "resolve_after", "labels", "generator_url")
    batch_size: Count = 64
    resolve_after: Seconds = 300.0
    labels: StringMap = field(default_factory=dict)
    generator_url: OptionalText = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FalcoOptions(WebhookOptions):
    ORDER: ClassVar[tuple[str, ...]] = ("name", *_DELIVERY, "url", "headers", "bearer_token_env", "source", "hostname",
                                        "tags")
    source: Text = "dnsgate"
    hostname: Text = field(default_factory=socket.gethostname)
    tags: Annotated[tuple[str, ...], Rule(_strings)] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class SyslogOptions(RemoteOptions):
    ORDER: ClassVar[tuple[str, ...]] = ("name", "facility", "batch_size", *_DELIVERY, "url", "hostname", "app_name",
                                        "sd_id")
    url: Annotated[str, _url("udp", "tcp", "unix")]
    batch_size: Count = 16
    facility: Annotated[str, Choice(tuple(SYSLOG_FACILITIES), hints=False)] = "local0"
    hostname: Text = field(default_factory=socket.gethostname)
    app_name: Text = "dnsgate"
    sd_id: Text = "dnsgate@32473"


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisStreamOptions(RemoteOptions):
    ORDER: ClassVar[tuple[str, ...]] = ("name", "batch_size", *_DELIVERY, "url", "stream", "maxlen")
    url: Annotated[str, _url("redis", "rediss", "unix")] = "redis://127.0.0.1:6379/0"
    batch_size: Count = 64
    stream: Text = "dnsgate:alerts"
    maxlen: Count = 100_000


OPTIONS: dict[str, type[RemoteOptions]] = {
    "webhook": WebhookOptions, "alertmanager": AlertmanagerOptions, "falco": FalcoOptions,
    "syslog": SyslogOptions, "redis_stream": RedisStreamOptions,
}


def _headers(opts: WebhookOptions) -> dict[str, str]:
    """``headers`` plus ``Authorization: Bearer`` from ``bearer_token_env`` (checked set when validated)."""
    headers = dict(opts.headers)
    if opts.bearer_token_env is not None:
        headers["Authorization"] = f"Bearer {os.environ.get(opts.bearer_token_env, '')}"
    return headers


def build(spec: SinkSpec) -> Sink:
    """A remote sink from its config entry; ConfigError names the bad option."""
    prefix = f"alerts[{spec.type}]"
    if spec.type not in OPTIONS:
        raise ConfigError(spec.path, spec.line, f"{prefix}.type", f"no remote sink of type {spec.type!r}")
    opts = validate(OPTIONS[spec.type], spec.options, spec.path, prefix=prefix, line=spec.line, fixed_line=True)
    name = opts.name or spec.type
    if isinstance(opts, AlertmanagerOptions):
        return AlertmanagerSink(name, opts.delivery(opts.batch_size), opts.url, _headers(opts),
                                resolve_after=opts.resolve_after, labels=opts.labels,
                                generator_url=opts.generator_url)
    if isinstance(opts, FalcoOptions):
        return FalcoSink(name, opts.delivery(1), opts.url, _headers(opts), source=opts.source,
                         hostname=opts.hostname, tags=list(opts.tags))
    if isinstance(opts, WebhookOptions):
        return WebhookSink(name, opts.delivery(1), opts.url, _headers(opts))
    if isinstance(opts, SyslogOptions):
        return SyslogSink(name, opts.delivery(opts.batch_size), opts.url, SYSLOG_FACILITIES[opts.facility],
                          hostname=opts.hostname, app_name=opts.app_name, sd_id=opts.sd_id)
    assert isinstance(opts, RedisStreamOptions)
    return RedisStreamSink(name, opts.delivery(opts.batch_size), opts.url, opts.stream, opts.maxlen)


def connect_fallbacks(sinks: list[Sink]) -> None:
    """Give sinks unique names and decide where remote sinks' dropped alerts go.

    With a jsonl sink configured, it already received every alert, so a remote
    drop is only counted; without one, drops are logged, bounded (``DropLog``).
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
            sink.spill = None if has_jsonl else DropLog()


def build_sinks(config: Config) -> list[Sink]:
    """One sink per ``alerts`` entry."""
    return [
        JsonlSink(spec.options.get("path", "-")) if spec.type == "jsonl" else build(spec)
        for spec in config.alerts
    ]


def check_sinks(config: Config) -> None:
    """Validate every remote sink's options (ConfigError names the line) without opening anything."""
    for spec in config.alerts:
        if spec.type != "jsonl":
            build(spec)
