"""Alert objects and the hub that deduplicates them and hands them to the sinks.

Every sink receives the same object (see DESIGN.md, "Alert object"). The hub
never blocks: sinks take alerts with ``submit`` and deliver them on their own.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii
from typing import IO, TYPE_CHECKING, Any, Final, Protocol

import dns.rdatatype

from heuristics import name_to_text, registrable_domain
from heuristics.detector import address_owner, churn_owner

if TYPE_CHECKING:
    from resolver.pipeline.identity import PodIdentity

log = logging.getLogger("dnsgate.alerts")

SEVERITIES = ("info", "warning", "high", "critical")
SEVERITY_RANK: Final = {name: rank for rank, name in enumerate(SEVERITIES)}  # "info" 0 ... "critical" 3
# One encoder for every alert line: json.dumps with options builds a new one per call.
# Alert.to_json writes the usual parts of a line itself, byte for byte as this would.
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), default=str)
# Its escaping of a string ('"a\\u00e9"' for 'a\xe9'): the C encoder's own function.
_STRING: Final = encode_basestring_ascii
# Strings from small sets (kinds, severities, actions, reasons, qtypes, namespaces) as the
# encoder writes them, and evidence keys as ',"qname":'; bounded against odd qtypes.
_KNOWN_TEXT: Final[dict[str, str]] = {}
_KEY_TEXT: Final[dict[str, str]] = {}
_REMEMBERED_MAX: Final = 1024


def _known_text(text: str) -> str:
    """``text``, one of a few values seen again and again, as the encoder writes it."""
    out = _KNOWN_TEXT.get(text)
    if out is None:
        out = _STRING(text)
        if len(_KNOWN_TEXT) < _REMEMBERED_MAX:
            _KNOWN_TEXT[text] = out
    return out


def _json_value(value: object) -> str:
    """``value`` as ``_ENCODER`` writes it.

    The scalars evidence is made of are written here the way the C encoder
    writes them; anything else (a subclass, NaN, a list, an object written
    through ``str``) goes to the encoder itself.
    """
    if type(value) is str:
        return _STRING(value)
    if type(value) is int:
        return str(value)
    if type(value) is float and not (math.isinf(value) or math.isnan(value)):
        return repr(value)
    if value is None:
        return "null"
    return _ENCODER.encode(value)


def _json_object(obj: dict[Any, Any]) -> str:
    """``obj`` as ``_ENCODER`` writes it, without escaping the same keys for every alert.

    The encoder escapes every key of every object it writes; an alert's
    evidence has the same few keys each time, so they are kept escaped.
    """
    parts = ["{"]
    for key, value in obj.items():
        if type(key) is not str:
            return _ENCODER.encode(obj)
        name = _KEY_TEXT.get(key)
        if name is None:
            name = "," + _STRING(key) + ":"
            if len(_KEY_TEXT) < _REMEMBERED_MAX:
                _KEY_TEXT[key] = name
        parts.append(name)
        parts.append(_json_value(value))
    if len(parts) == 1:
        return "{}"
    parts[1] = parts[1][1:]  # no comma before the first key
    parts.append("}")
    return "".join(parts)


@dataclass(slots=True, init=False)
class Alert:
    ts: float
    kind: str  # policy | tunnel | rebinding | rate_limit | ...
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
    pod: str = ""  # "namespace/name" of the Kubernetes pod that asked, when pod identity is on
    service_account: str = ""

    def __init__(
        self, ts: float, kind: str, severity: str, namespace: str, client: str, qname: str, qtype: str,
        domain: str, reasons: list[str], action: str, evidence: dict[str, Any] | None = None, count: int = 1,
        pod: str = "", service_account: str = "",
    ) -> None:
        self.ts = ts
        self.kind = kind
        self.severity = severity
        self.namespace = namespace
        self.client = client
        self.qname = qname
        self.qtype = qtype
        self.domain = domain
        self.reasons = reasons
        self.action = action
        self.evidence = {} if evidence is None else evidence
        self.count = count
        self.pod = pod
        self.service_account = service_account

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
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
        if self.pod:
            out["pod"] = self.pod
            out["service_account"] = self.service_account
        return out

    def to_json(self) -> str:
        """``to_dict()`` as one line of JSON: the bytes ``_ENCODER.encode(self.to_dict())`` gives, without the dict."""
        text = _STRING
        reasons = ",".join([_known_text(reason) for reason in self.reasons])
        line = (
            f'{{"ts":{_json_value(round(self.ts, 6))},"kind":{_known_text(self.kind)},'
            f'"severity":{_known_text(self.severity)},"namespace":{_known_text(self.namespace)},'
            f'"client":{text(self.client)},"qname":{text(self.qname)},"qtype":{_known_text(self.qtype)},'
            f'"domain":{text(self.domain)},"reasons":[{reasons}],"action":{_known_text(self.action)},'
            f'"evidence":{_json_object(self.evidence)},"count":{_json_value(self.count)}'
        )
        if self.pod:
            return f'{line},"pod":{text(self.pod)},"service_account":{text(self.service_account)}}}'
        return line + "}"


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
        self.dropped_by_severity: dict[str, int] = dict.fromkeys(SEVERITIES, 0)
        self._fh: IO[str] | None = None
        self.reopen()

    def stats(self) -> dict[str, Any]:
        """Delivery counters for metrics (a file sink never queues or retries)."""
        return {"name": self.name, "delivered": self.delivered, "retried": 0, "dropped": self.dropped, "queued": 0,
                "dropped_by_severity": dict(self.dropped_by_severity)}

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
            self.dropped_by_severity[alert.severity] = self.dropped_by_severity.get(alert.severity, 0) + 1
            log.error("jsonl sink %s: %s", self.path, exc)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        if self._fh is not None and self._fh is not sys.stdout and self._stream is None:
            self._fh.close()


# Severity of a decision alert by kind: (alerted only, blocked).
SEVERITY = {
    "policy": ("info", "warning"), "rebinding": ("warning", "high"), "rate_limit": ("warning", "warning"),
    "domain_churn": ("warning", "warning"),
}


_QTYPE_TEXT: dict[int, str] = {}


def qtype_text(qtype: int) -> str:
    """``A``, ``TXT``, ``TYPE65280``: dnspython's mnemonic, remembered (at most 65,536 of them)."""
    text = _QTYPE_TEXT.get(qtype)
    if text is None:
        try:
            text = dns.rdatatype.to_text(qtype)  # type: ignore[arg-type]
        except ValueError:
            text = f"TYPE{qtype}"
        _QTYPE_TEXT[qtype] = text
    return text


# Distinct domains one tunnel aggregate counts exactly; past this, each further folded
# alert counts as a new domain (``domains_folded`` is then an upper bound).
FOLDED_DOMAINS_COUNTED: Final = 1024
FOLD_SAMPLE: Final = 5  # names (policy) or domains (tunnel) an aggregate shows
CLIENT_WINDOWS_MAX: Final = 100_000  # per-client windows kept before they are all forgotten


def alert_owner(alert: Alert) -> str:
    """Whose share of the alert budgets an alert counts against: its pod (all of the pod's
    addresses together), else an IPv6 client's /64, else the client address."""
    if alert.pod:
        return "pod:" + alert.pod
    return churn_owner(alert.client)


class _TunnelWindow:
    """The distinct domains one (namespace, client) raised a tunnel alert for in a window."""

    __slots__ = ("domains", "start")

    def __init__(self, start: float, domain: str) -> None:
        self.start = start
        self.domains = {domain}


class AlertHub:
    """Builds alerts from decisions, folds repeats, fans out to sinks.

    A denied (namespace, client, name) alerts once; further denials within
    ``window`` seconds are counted and reported in one follow-up alert whose
    ``count`` says how many there were, so a retry storm costs two lines, and
    nothing is silently lost.

    Lines per client are bounded too: after ``names_per_client`` distinct
    denied names from one (namespace, client) in a window, further new names
    are folded into one aggregate alert for that client (``count`` names,
    ``evidence.names_folded`` and a few samples), reported when the window
    closes. A client asking a million unique names therefore costs at most
    ``2 * names_per_client + 1`` policy lines per window, and one
    ``rate_limit`` alert plus one follow-up when it is rate limited.

    Tunnel alerts (``tunnel``) are bounded for the remote sinks the same way:
    a (namespace, client) gets ``domains_per_client`` distinct domains per
    window alerted one by one (a domain already alerted in the window, whose
    alert grew in severity or reasons, still goes out); the alerts for further
    domains go to the local sinks only (jsonl, metrics, replay: every sink
    without ``remote = True``), and the remote sinks get one aggregate per
    client when the window closes, whose ``count`` is the number of alerts it
    stands for. So one client flooding fresh domains costs a remote sink
    ``domains_per_client + 1`` alerts a window, while the jsonl file keeps
    every alert, and for each client the remote alerts' counts add up to its
    jsonl lines. Only the alert is folded: the detector's decision (the
    quarantine in enforce mode) is taken for every domain before.
    """

    def __init__(
        self,
        sinks: list[Sink],
        window: float = 60.0,
        workloads: Callable[[str], PodIdentity | None] | None = None,
        names_per_client: int = 20,
        domains_per_client: int = 20,
        ipv6_prefix: int = 128,
    ) -> None:
        self.sinks = sinks
        # How an IPv6 client is counted in the windows and budgets (ipv6_client_prefix; the
        # pipeline sets it from each config it is built from).
        self.ipv6_prefix = ipv6_prefix
        self._workloads = workloads  # client address -> pod, to name the pod in each alert
        self.window = window
        self.names_per_client = names_per_client
        # (kind, namespace, client, qname) -> [first_ts, repeats, alert]
        self._recent: dict[tuple[str, str, str, bytes], list[Any]] = {}
        # (kind, namespace, client) -> [window_start, distinct names alerted in it]
        self._per_client: dict[tuple[str, str, str], list[float]] = {}
        self.domains_per_client = domains_per_client
        # (namespace, client) -> the domains it raised a tunnel alert for in its window
        self._tunnel_windows: dict[tuple[str, str], _TunnelWindow] = {}
        self.emitted = 0
        self.folded = 0  # alerts folded into a per-client aggregate (policy and tunnel)
        self.folded_kinds: dict[str, int] = {}  # the same by kind

    def stats(self) -> dict[str, Any]:
        """Alerts emitted, and each sink's own ``stats()`` (delivered, retried, dropped, queued)."""
        sinks = []
        for sink in self.sinks:
            report = getattr(sink, "stats", None)
            if report is not None:
                sinks.append(report())
        return {"emitted": self.emitted, "folded": self.folded, "folded_kinds": dict(self.folded_kinds),
                "sinks": sinks}

    def emit(self, alert: Alert) -> None:
        """Hand ``alert`` to every sink."""
        self._name_pod(alert)
        self.emitted += 1
        for sink in self.sinks:
            sink.submit(alert)

    def _name_pod(self, alert: Alert) -> None:
        if self._workloads is not None and not alert.pod:
            pod = self._workloads(alert.client)
            if pod is not None:
                alert.pod = f"{pod.namespace}/{pod.name}"
                alert.service_account = pod.service_account

    def _count_folded(self, kind: str) -> None:
        self.folded += 1
        self.folded_kinds[kind] = self.folded_kinds.get(kind, 0) + 1

    def tunnel(self, alert: Alert) -> None:
        """A detector's ``tunnel`` alert: to every sink while its client is within
        ``domains_per_client`` domains this window, else to the local sinks only and
        folded into the client's aggregate for the remote ones (see the class)."""
        self._name_pod(alert)  # first: a pod's addresses share one budget
        if self._tunnel_room(alert):
            self.emit(alert)
            return
        self._count_folded("tunnel")
        for sink in self.sinks:
            if not getattr(sink, "remote", False):
                sink.submit(alert)
        key = ("tunnel_domains", alert.namespace, alert_owner(alert), b"")
        seen = self._recent.get(key)
        if seen is None:
            aggregate = Alert(
                ts=alert.ts, kind="tunnel", severity=alert.severity, namespace=alert.namespace,
                client=alert.client, qname=alert.qname, qtype=alert.qtype, domain=alert.domain,
                reasons=list(alert.reasons), action=alert.action,
                evidence={"sample": [], "severities": {}}, pod=alert.pod, service_account=alert.service_account,
            )
            self._open(key, alert.ts, aggregate)
            seen = self._recent[key]
            seen.append(set())  # the distinct domains folded (at most FOLDED_DOMAINS_COUNTED)
            seen.append(0)  # folded alerts past that bound whose domain was not counted
        seen[1] += 1
        aggregate = seen[2]
        if SEVERITY_RANK.get(alert.severity, 1) > SEVERITY_RANK.get(aggregate.severity, 1):
            aggregate.severity = alert.severity
        for reason in alert.reasons:
            if reason not in aggregate.reasons:
                aggregate.reasons.append(reason)
        severities: dict[str, int] = aggregate.evidence["severities"]
        severities[alert.severity] = severities.get(alert.severity, 0) + 1
        domains: set[str] = seen[3]
        if alert.domain not in domains:
            if len(domains) < FOLDED_DOMAINS_COUNTED:
                domains.add(alert.domain)
                sample: list[str] = aggregate.evidence["sample"]
                if len(sample) < FOLD_SAMPLE:
                    sample.append(alert.domain)
            else:
                seen[4] += 1

    def _tunnel_room(self, alert: Alert) -> bool:
        """Whether ``alert`` is within its (namespace, client)'s domains for the window."""
        key = (alert.namespace, alert_owner(alert))
        window = self._tunnel_windows.get(key)
        if window is None or alert.ts - window.start >= self.window:
            if len(self._tunnel_windows) >= CLIENT_WINDOWS_MAX:
                self._tunnel_windows.clear()
            self._tunnel_windows[key] = _TunnelWindow(alert.ts, alert.domain)
            return True
        domains = window.domains
        if alert.domain in domains:
            return True
        if len(domains) < self.domains_per_client:
            domains.add(alert.domain)
            return True
        return False

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
        *,
        kind: str = "policy",
    ) -> None:
        """A decision about a name (``kind`` policy, or rebinding for an answer pointing inside).

        Repeats and the per-client line budget count an IPv6 client by its network of
        ``ipv6_prefix`` bits: a host cycling the addresses of its network is one client here
        too, not a fresh ``names_per_client`` lines with each address."""
        who = address_owner(client, self.ipv6_prefix)
        key = (kind, namespace, who, qname)
        if self._repeated(key, now):
            return
        if not self._client_has_room(now, kind, namespace, who):
            self._fold(now, kind, namespace, client, qname, qtype, action, reasons, evidence, who)
            return
        alert = self._alert(kind, now, namespace, client, qname, qtype, action, reasons, evidence)
        self._open(key, now, alert)
        self.emit(alert)

    def rate_limit(
        self, now: float, namespace: str, client: str, qname: bytes, qtype: int, evidence: dict[str, Any]
    ) -> None:
        """One ``rate_limit`` alert per limited (namespace, client) and window, then one with the count."""
        self._per_client_window("rate_limit", "blocked", now, namespace, client, qname, qtype, evidence)

    def domain_churn(
        self, now: float, namespace: str, client: str, qname: bytes, qtype: int, evidence: dict[str, Any]
    ) -> None:
        """One ``domain_churn`` alert per (namespace, client) and window, then one with the count:
        a client asking so many never-seen domains that the detector's state is under pressure."""
        self._per_client_window("domain_churn", "alerted", now, namespace, client, qname, qtype, evidence)

    def _per_client_window(
        self, kind: str, action: str, now: float, namespace: str, client: str, qname: bytes, qtype: int,
        evidence: dict[str, Any],
    ) -> None:
        """An alert about a client, not a name: the first of a window, then one with the count
        (an IPv6 client counted by its network of ``ipv6_prefix`` bits)."""
        key = (kind, namespace, address_owner(client, self.ipv6_prefix), b"")
        if self._repeated(key, now):
            return
        alert = self._alert(kind, now, namespace, client, qname, qtype, action, [kind], dict(evidence))
        self._open(key, now, alert)
        self.emit(alert)

    def _repeated(self, key: tuple[str, str, str, bytes], now: float) -> bool:
        """Count a repeat of ``key`` inside its window (True); else report the closed window, if any."""
        seen = self._recent.get(key)
        if seen is None:
            return False
        if now - seen[0] < self.window:
            seen[1] += 1
            return True
        self._flush_one(key, seen)
        return False

    def _client_has_room(self, now: float, kind: str, namespace: str, client: str) -> bool:
        slot = self._per_client.get((kind, namespace, client))
        if slot is None or now - slot[0] >= self.window:
            if len(self._per_client) >= CLIENT_WINDOWS_MAX:
                self._per_client.clear()
            self._per_client[(kind, namespace, client)] = [now, 1]
            return True
        if slot[1] < self.names_per_client:
            slot[1] += 1
            return True
        return False

    def _fold(
        self, now: float, kind: str, namespace: str, client: str, qname: bytes, qtype: int,
        action: str, reasons: list[str], evidence: dict[str, Any], who: str,
    ) -> None:
        self._count_folded(kind)
        key = (kind + "_names", namespace, who, b"")
        seen = self._recent.get(key)
        if seen is None:
            alert = self._alert(kind, now, namespace, client, qname, qtype, action, reasons, dict(evidence))
            alert.evidence["sample"] = []
            # count 0: nothing is emitted now; _flush_one reports the folded names when the window closes
            self._open(key, now, alert)
            seen = self._recent[key]
        seen[1] += 1
        sample: list[str] = seen[2].evidence["sample"]
        if len(sample) < FOLD_SAMPLE:
            sample.append(name_to_text(qname))

    @staticmethod
    def _alert(
        kind: str, now: float, namespace: str, client: str, qname: bytes, qtype: int,
        action: str, reasons: list[str], evidence: dict[str, Any],
    ) -> Alert:
        return Alert(
            ts=now,
            kind=kind,
            severity=SEVERITY[kind][action == "blocked"],
            namespace=namespace,
            client=client,
            qname=name_to_text(qname),
            qtype=qtype_text(qtype),
            domain=registrable_domain(qname),
            reasons=reasons,
            action=action,
            evidence=evidence,
        )

    def _open(self, key: tuple[str, str, str, bytes], now: float, alert: Alert) -> None:
        if len(self._recent) >= 100_000:
            self.sweep(now, force=True)
        self._recent[key] = [now, 0, alert]

    def _flush_one(self, key: tuple[str, str, str, bytes], seen: list[Any]) -> None:
        if key[0] == "tunnel_domains":
            self._flush_tunnels(key, seen)
            return
        if seen[1]:
            first: Alert = seen[2]
            repeat = Alert(**{**first.to_dict(), "ts": seen[0] + self.window, "count": seen[1]})
            if key[0].endswith("_names"):
                repeat.evidence = {**first.evidence, "names_folded": seen[1], "window": self.window}
            else:
                repeat.evidence = {**first.evidence, "repeats_since": round(seen[0], 6), "window": self.window}
            self.emit(repeat)
        self._recent.pop(key, None)

    def _flush_tunnels(self, key: tuple[str, str, str, bytes], seen: list[Any]) -> None:
        """The aggregate of a client's folded tunnel alerts, to the remote sinks only:
        the local ones already have each of them."""
        self._recent.pop(key, None)
        aggregate: Alert = seen[2]
        aggregate.ts = seen[0] + self.window
        aggregate.count = seen[1]
        aggregate.evidence = {
            "alerts_folded": seen[1],
            "domains_folded": len(seen[3]) + seen[4],
            # Every domain (up to FOLDED_DOMAINS_COUNTED), not only the first few: a client must not
            # be able to hide its channel's domain behind decoy alerts that come first.
            "domains": sorted(seen[3]),
            "sample": aggregate.evidence["sample"],
            "severities": aggregate.evidence["severities"],
            "first_folded": round(seen[0], 6),
            "window": self.window,
        }
        self.emitted += 1
        for sink in self.sinks:
            if getattr(sink, "remote", False):
                sink.submit(aggregate)

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
