"""Alert objects and the hub that deduplicates them and hands them to the sinks.

Every sink receives the same object (see DESIGN.md, "Alert object"). The hub
never blocks: sinks take alerts with ``submit`` and deliver them on their own.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

import dns.rdatatype

from heuristics import name_to_text, registrable_domain

log = logging.getLogger("dnsgate.alerts")

SEVERITIES = ("info", "warning", "high", "critical")


@dataclass(slots=True)
class Alert:
    ts: float
    kind: str  # policy | tunnel
    severity: str
    namespace: str
    client: str
    qname: str
    qtype: str
    domain: str
    reasons: list[str]
    action: str  # alerted | blocked | quarantined
    evidence: dict[str, Any] = field(default_factory=dict)
    count: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "ts": round(self.ts, 6),
            "kind": self.kind,
            "severity": self.severity,
            "namespace": self.namespace,
            "client": self.client,
            "qname": self.qname,
            "qtype": self.qtype,
            "domain": self.domain,
            "reasons": list(self.reasons),
            "action": self.action,
            "evidence": self.evidence,
            "count": self.count,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), default=str)


class Sink(Protocol):
    """Somewhere alerts go. ``submit`` must return at once; delivery happens elsewhere."""

    name: str

    def submit(self, alert: Alert) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class JsonlSink:
    """One JSON object per line, to a file or stdout; ``reopen`` lets logrotate work."""

    name = "jsonl"

    def __init__(self, path: str = "-", stream: IO[str] | None = None) -> None:
        self.path = path
        self._stream = stream
        self.delivered = 0
        self.dropped = 0
        self._fh: IO[str] | None = None
        self.reopen()

    def reopen(self) -> None:
        if self._stream is not None:
            self._fh = self._stream
        elif self.path == "-":
            self._fh = sys.stdout
        else:
            old = self._fh
            self._fh = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
            if old is not None and old is not sys.stdout:
                old.close()

    def submit(self, alert: Alert) -> None:
        try:
            assert self._fh is not None
            self._fh.write(alert.to_json() + "\n")
            if self.path == "-":
                self._fh.flush()
            self.delivered += 1
        except (OSError, ValueError) as exc:
            self.dropped += 1
            log.error("jsonl sink %s: %s", self.path, exc)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        if self._fh is not None and self._fh is not sys.stdout and self._stream is None:
            self._fh.close()


def qtype_text(qtype: int) -> str:
    try:
        return dns.rdatatype.to_text(qtype)  # type: ignore[arg-type]
    except ValueError:
        return f"TYPE{qtype}"


class AlertHub:
    """Builds alerts from decisions, folds repeats, fans out to sinks.

    A denied (namespace, client, name) alerts once; further denials within
    ``window`` seconds are counted and reported in one follow-up alert whose
    ``count`` says how many there were, so a retry storm costs two lines, and
    nothing is silently lost.
    """

    def __init__(self, sinks: list[Sink], window: float = 60.0) -> None:
        self.sinks = sinks
        self.window = window
        self._recent: dict[tuple[str, str, bytes], list[Any]] = {}  # key -> [first_ts, repeats, alert]
        self.emitted = 0

    def emit(self, alert: Alert) -> None:
        self.emitted += 1
        for sink in self.sinks:
            sink.submit(alert)

    def policy(
        self,
        now: float,
        namespace: str,
        client: str,
        qname: bytes,
        qtype: int,
        action: str,
        reasons: list[str],
        evidence: dict[str, Any],
    ) -> None:
        key = (namespace, client, qname)
        seen = self._recent.get(key)
        if seen is not None and now - seen[0] < self.window:
            seen[1] += 1
            return
        if seen is not None:
            self._flush_one(key, seen)
        alert = Alert(
            ts=now,
            kind="policy",
            severity="warning" if action == "blocked" else "info",
            namespace=namespace,
            client=client,
            qname=name_to_text(qname),
            qtype=qtype_text(qtype),
            domain=registrable_domain(qname),
            reasons=reasons,
            action=action,
            evidence=evidence,
        )
        if len(self._recent) >= 100_000:
            self.sweep(now, force=True)
        self._recent[key] = [now, 0, alert]
        self.emit(alert)

    def _flush_one(self, key: tuple[str, str, bytes], seen: list[Any]) -> None:
        if seen[1]:
            first: Alert = seen[2]
            repeat = Alert(**{**first.to_dict(), "ts": seen[0] + self.window, "count": seen[1]})
            repeat.evidence = {**first.evidence, "repeats_since": round(seen[0], 6), "window": self.window}
            self.emit(repeat)
        self._recent.pop(key, None)

    def sweep(self, now: float, force: bool = False) -> None:
        """Report folded repeats whose window has closed (or all of them, when forced).

        Entries are kept in the order they opened, so the sweep stops at the
        first window still open instead of walking every entry.
        """
        recent = self._recent
        while recent:
            key = next(iter(recent))
            seen = recent[key]
            if not force and now - seen[0] < self.window:
                break
            self._flush_one(key, seen)

    async def start(self) -> None:
        for sink in self.sinks:
            await sink.start()

    async def close(self, now: float) -> None:
        self.sweep(now, force=True)
        for sink in self.sinks:
            await sink.close()
