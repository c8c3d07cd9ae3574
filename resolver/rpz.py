"""Response Policy Zones: QNAME triggers and their actions, compiled for fast lookup.

Both RPZ zone files (parsed with dnspython) and YAML allowlists compile into
``PolicyZone`` objects; a ``Policy`` is an ordered list of them with BIND's
precedence: the first zone that matches wins; inside a zone an exact trigger
beats a wildcard, and a longer wildcard beats a shorter one.

Names are keys in uncompressed wire format, lowercased in ASCII only, so two
names compare equal exactly when DNS says they do, whatever octets they hold.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.zone

from resolver.config import ConfigError
from resolver.wire import parent


class Action(enum.Enum):
    PASSTHRU = "passthru"
    NXDOMAIN = "nxdomain"
    NODATA = "nodata"
    DROP = "drop"
    TCP_ONLY = "tcp-only"
    LOCAL_DATA = "local-data"


@dataclass(frozen=True, slots=True)
class LocalRecord:
    rtype: int
    ttl: int
    rdata: bytes  # uncompressed wire rdata


@dataclass(frozen=True, slots=True)
class Rule:
    action: Action
    zone: str
    trigger: str  # presentation form, e.g. "*.example.com"
    records: tuple[LocalRecord, ...] = ()


SPECIAL_TARGETS = {
    dns.name.root: Action.NXDOMAIN,
    dns.name.from_text("*."): Action.NODATA,
    dns.name.from_text("rpz-passthru."): Action.PASSTHRU,
    dns.name.from_text("rpz-drop."): Action.DROP,
    dns.name.from_text("rpz-tcp-only."): Action.TCP_ONLY,
}

# Trigger kinds other than QNAME live under these labels; see README ("RPZ support").
UNSUPPORTED_TRIGGER_LABELS = (b"rpz-ip", b"rpz-nsdname", b"rpz-nsip", b"rpz-client-ip")

WILDCARD = b"\x01*"


class PolicyZone:
    """The triggers of one zone: exact names and wildcards, keyed by wire name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.exact: dict[bytes, Rule] = {}
        self.wildcard: dict[bytes, Rule] = {}  # key: the wildcard's parent, e.g. example.com
        self.skipped: list[str] = []

    def add(self, wire_name: bytes, rule: Rule) -> None:
        if wire_name.startswith(WILDCARD):
            self.wildcard.setdefault(wire_name[2:], rule)
        else:
            self.exact.setdefault(wire_name, rule)

    def match(self, qname: bytes) -> Rule | None:
        rule = self.exact.get(qname)
        if rule is not None:
            return rule
        if not self.wildcard:
            return None
        # Walk up: the closest enclosing wildcard is the longest, so it wins.
        name = qname
        while name != b"\x00":
            name = parent(name)
            rule = self.wildcard.get(name)
            if rule is not None:
                return rule
        return None

    def __len__(self) -> int:
        return len(self.exact) + len(self.wildcard)

    @classmethod
    def allowlist(cls, name: str, entries: tuple[str, ...]) -> PolicyZone:
        """A zone of PASSTHRU triggers from YAML ``allow`` entries."""
        zone = cls(name)
        for entry in entries:
            wire = dns.name.from_text(entry).to_wire()
            assert wire is not None
            zone.add(wire.lower(), Rule(Action.PASSTHRU, name, entry))
        return zone

    @classmethod
    def from_file(cls, path: Path) -> PolicyZone:
        """Parse an RPZ zone file; raise ConfigError naming the file and line."""
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(str(path), 0, "rpz", f"cannot read: {exc.strerror}") from None
        origin = None if "$ORIGIN" in text else dns.name.from_text(path.stem)
        try:
            zone = dns.zone.from_text(
                text, origin=origin, relativize=False, check_origin=False, filename=str(path)
            )
        except dns.exception.SyntaxError as exc:
            line, message = _split_location(str(exc))
            raise ConfigError(str(path), _first_bad_line(text, origin, line), "rpz", message) from None
        except dns.exception.DNSException as exc:
            raise ConfigError(str(path), 0, "rpz", f"not a valid zone: {exc}") from None
        assert zone.origin is not None
        return cls._compile(str(path), zone.origin, zone)

    @classmethod
    def _compile(cls, name: str, origin: dns.name.Name, zone: dns.zone.Zone) -> PolicyZone:
        out = cls(name)
        for owner, node in zone.nodes.items():
            if owner == origin:
                continue  # SOA and NS of the policy zone itself
            trigger = owner.relativize(origin)
            labels = [label.lower() for label in trigger.labels]
            if any(label in UNSUPPORTED_TRIGGER_LABELS for label in labels):
                out.skipped.append(trigger.to_text())
                continue
            wire = dns.name.Name(trigger.labels + (b"",)).to_wire()
            assert wire is not None
            rule = cls._rule(name, trigger.to_text(), node)
            if rule is not None:
                out.add(wire.lower(), rule)
        return out

    @staticmethod
    def _rule(zone: str, trigger: str, node: dns.node.Node) -> Rule | None:
        records: list[LocalRecord] = []
        for rdataset in node.rdatasets:
            if rdataset.rdclass != dns.rdataclass.IN:
                continue
            if rdataset.rdtype == dns.rdatatype.CNAME:
                target = rdataset[0].target
                action = SPECIAL_TARGETS.get(target)
                if action is not None:
                    return Rule(action, zone, trigger)
                if target.labels and target.labels[0] == b"*":
                    continue  # "CNAME *.example." rewrites are not supported; skipped
            for rdata in rdataset:
                records.append(LocalRecord(int(rdataset.rdtype), int(rdataset.ttl), rdata.to_wire()))
        if not records:
            return None
        return Rule(Action.LOCAL_DATA, zone, trigger, tuple(records))


def _split_location(message: str) -> tuple[int, str]:
    """dnspython reports ``file:LINE: message``; split off the location."""
    parts = message.split(":", 2)
    if len(parts) == 3 and parts[1].strip().isdigit():
        return int(parts[1]), parts[2].strip()
    return 0, message


def _first_bad_line(text: str, origin: dns.name.Name | None, reported: int) -> int:
    """dnspython reports an rdata error after it has read the line's end; confirm the line.

    When the text up to the line before the reported one fails too, the fault
    is on that earlier line.
    """
    if reported <= 1:
        return reported
    head = "\n".join(text.splitlines()[: reported - 1]) + "\n"
    try:
        dns.zone.from_text(head, origin=origin, relativize=False, check_origin=False)
    except dns.exception.SyntaxError:
        return reported - 1
    except dns.exception.DNSException:
        return reported
    return reported


class Policy:
    """The ordered zones of one namespace: the first zone with a matching trigger decides."""

    def __init__(self, zones: list[PolicyZone]) -> None:
        self.zones = tuple(z for z in zones if len(z))

    def match(self, qname: bytes) -> Rule | None:
        for zone in self.zones:
            rule = zone.match(qname)
            if rule is not None:
                return rule
        return None
