"""Response Policy Zones read as BIND 9 reads them, and the YAML allowlist beside them.

RPZ zone files are parsed with dnspython and compiled into ``PolicyZone``
objects; a ``Policy`` holds a namespace's zones in order and its allowlist.
BIND's rules, which the differential test against ``named`` checks
(tests/integration/test_rpz_bind.py):

- the first zone (in ``rpz:`` order) with a trigger for the name decides;
- inside a zone a name is looked up as DNS looks names up (RFC 4592): an
  exact trigger applies; a name that exists in the zone without a trigger of
  its own (an empty non-terminal, e.g. the parent of other triggers) matches
  nothing there; otherwise only the wildcard at the closest encloser may apply;
- ``CNAME .`` NXDOMAIN, ``CNAME *.`` NODATA, ``CNAME rpz-passthru.`` (or, the
  old way, a CNAME to the trigger name itself) PASSTHRU, ``CNAME rpz-drop.``
  DROP, ``CNAME rpz-tcp-only.`` TCP-only; ``CNAME *.suffix.`` rewrites the
  query name to ``qname.suffix``; any other data is local data, and a local
  CNAME is followed by the pipeline.

Triggers and actions dnsgate does not implement are kept out of the policy,
listed in ``PolicyZone.unsupported`` with their line, and logged at load.

The allowlist is not an RPZ zone: a name is allowed when any of its patterns
matches (``name`` exactly, ``*.name`` every name below ``name``), whatever
else exists.

Names are keys in uncompressed wire format, lowercased in ASCII only, so two
names compare equal exactly when DNS says they do, whatever octets they hold.
"""

from __future__ import annotations

import contextlib
import enum
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import dns.exception
import dns.name
import dns.rdataclass
import dns.rdatatype

from resolver.config import ConfigError, read_text
from resolver.wire.message import TYPE_CNAME, parent

if TYPE_CHECKING:
    import dns.node
    import dns.zone

log = logging.getLogger("dnsgate.rpz")


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
    rewrite_suffix: bytes | None = None  # "CNAME *.suffix.": the wire suffix the query name gets
    rewrite_ttl: int = 0
    allowlist: bool = False  # a YAML allow entry, not an RPZ trigger

    @property
    def cname(self) -> LocalRecord | None:
        """The local CNAME record, when the local data is one."""
        for rec in self.records:
            if rec.rtype == TYPE_CNAME:
                return rec
        return None


@dataclass(frozen=True, slots=True)
class Unsupported:
    """A trigger or action the policy leaves out, with where it was written."""

    path: str
    line: int
    trigger: str
    why: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: rpz: {self.trigger}: {self.why}; ignored"


SPECIAL_TARGETS = {
    dns.name.root: Action.NXDOMAIN,
    dns.name.from_text("*."): Action.NODATA,
    dns.name.from_text("rpz-passthru."): Action.PASSTHRU,
    dns.name.from_text("rpz-drop."): Action.DROP,
    dns.name.from_text("rpz-tcp-only."): Action.TCP_ONLY,
}

# Trigger kinds other than QNAME live under these labels.
UNSUPPORTED_TRIGGER_LABELS = {
    b"rpz-ip": "response IP triggers (rpz-ip) are not supported",
    b"rpz-nsdname": "NSDNAME triggers (rpz-nsdname) are not supported",
    b"rpz-nsip": "NSIP triggers (rpz-nsip) are not supported",
    b"rpz-client-ip": "client IP triggers (rpz-client-ip) are not supported; namespaces identify clients",
}
# Record types a policy zone may hold that are not local data.
IGNORED_TYPES = {dns.rdatatype.RRSIG, dns.rdatatype.NSEC, dns.rdatatype.NSEC3, dns.rdatatype.DNSKEY}

_REPORTED: set[Unsupported] = set()

WILDCARD = b"\x01*"
ROOT = b"\x00"


def _wire(name: dns.name.Name) -> bytes:
    wire = name.to_wire()
    assert wire is not None
    return wire.lower()


class PolicyZone:
    """The QNAME triggers of one RPZ zone, looked up with RFC 4592 rules."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.exact: dict[bytes, Rule] = {}
        self.wildcard: dict[bytes, Rule] = {}  # key: the wildcard's parent, e.g. example.com
        self.names: set[bytes] = set()  # every name that exists in the zone, empty non-terminals too
        self.unsupported: list[Unsupported] = []

    @property
    def skipped(self) -> list[str]:
        """The triggers left out, by name."""
        return [u.trigger for u in self.unsupported]

    def exist(self, wire_name: bytes) -> None:
        """Record that a name exists in the zone, with every ancestor below the zone's apex."""
        name = wire_name
        while name != ROOT and name not in self.names:
            self.names.add(name)
            name = parent(name)

    def add(self, wire_name: bytes, rule: Rule) -> None:
        self.exist(wire_name)
        if wire_name.startswith(WILDCARD):
            self.wildcard.setdefault(wire_name[2:], rule)
        else:
            self.exact.setdefault(wire_name, rule)

    def match(self, qname: bytes) -> Rule | None:
        rule = self.exact.get(qname)
        if rule is not None:
            return rule
        if not self.wildcard or qname in self.names:
            return None  # an existing name without a trigger stops every wildcard
        name = qname
        while name != ROOT:
            name = parent(name)
            if name in self.names or name == ROOT:
                return self.wildcard.get(name)  # only the closest encloser's wildcard applies
        return None

    def __len__(self) -> int:
        return len(self.exact) + len(self.wildcard)

    @classmethod
    def allowlist(cls, name: str, entries: tuple[str, ...]) -> AllowList:
        """The YAML ``allow`` entries of a namespace (kept here for older callers)."""
        return AllowList(name, entries)

    @classmethod
    def from_file(cls, path: Path) -> PolicyZone:
        """Parse an RPZ zone file; raise ConfigError naming the file and line."""
        text = read_text(path, "rpz")  # bounded; not UTF-8 is a ConfigError at its line
        import dns.zone  # the zone parser, ~3 ms of imports: only a namespace with RPZ files needs it

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
        compiled = cls._compile(str(path), zone.origin, zone, _owner_lines(text, zone.origin))
        for item in compiled.unsupported:
            if item not in _REPORTED:  # a zone is compiled again at each reload: say it once
                _REPORTED.add(item)
                log.warning("%s", item)
        return compiled

    @classmethod
    def _compile(
        cls, name: str, origin: dns.name.Name, zone: dns.zone.Zone, lines: dict[dns.name.Name, int]
    ) -> PolicyZone:
        out = cls(name)
        for owner, node in zone.nodes.items():
            if owner == origin:
                continue  # SOA and NS of the policy zone itself
            trigger = owner.relativize(origin)
            wire = _wire(dns.name.Name((*trigger.labels, b"")))
            out.exist(wire)
            line = lines.get(owner, 0)
            why = next((w for label, w in UNSUPPORTED_TRIGGER_LABELS.items()
                        if label in (x.lower() for x in trigger.labels)), None)
            if why is not None:
                out.unsupported.append(Unsupported(name, line, trigger.to_text(), why))
                continue
            rule = cls._rule(name, trigger, node, out.unsupported, line)
            if rule is not None:
                out.add(wire, rule)
        return out

    @staticmethod
    def _rule(
        zone: str, trigger: dns.name.Name, node: dns.node.Node, unsupported: list[Unsupported], line: int
    ) -> Rule | None:
        text = trigger.to_text()
        records: list[LocalRecord] = []
        for rdataset in node.rdatasets:
            if rdataset.rdclass != dns.rdataclass.IN or rdataset.rdtype in IGNORED_TYPES:
                continue
            if rdataset.rdtype == dns.rdatatype.DNAME:
                unsupported.append(Unsupported(zone, line, text, "DNAME local data is not supported"))
                continue
            if rdataset.rdtype == dns.rdatatype.CNAME:
                target = rdataset[0].target
                action = SPECIAL_TARGETS.get(target)
                if action is not None:
                    return Rule(action, zone, text)
                if target == dns.name.Name((*trigger.labels, b"")):
                    return Rule(Action.PASSTHRU, zone, text)  # the old PASSTHRU: a CNAME to itself
                first = target.labels[0].lower() if target.labels else b""
                if first.startswith(b"rpz-") and len(target.labels) == 2:
                    unsupported.append(Unsupported(zone, line, text, f"unknown action {target}"))
                    return None
                if first == b"*":
                    suffix = _wire(dns.name.Name(target.labels[1:]))
                    return Rule(Action.LOCAL_DATA, zone, text, rewrite_suffix=suffix, rewrite_ttl=int(rdataset.ttl))
            for rdata in rdataset:
                records.append(LocalRecord(int(rdataset.rdtype), int(rdataset.ttl), rdata.to_wire()))
        if not records:
            return None
        return Rule(Action.LOCAL_DATA, zone, text, tuple(records))


class AllowList:
    """YAML ``allow`` patterns: a name is allowed when any of them matches it."""

    def __init__(self, name: str, entries: tuple[str, ...]) -> None:
        self.name = name
        self.exact: dict[bytes, Rule] = {}
        self.wildcard: dict[bytes, Rule] = {}  # "*.example.com": every name below example.com
        for entry in entries:
            # The text says what is a wildcard: "*." written first. An escaped '*'
            # ("\\042.example.com") is one literal name, as the config loader reads it.
            wildcard = entry.startswith("*.")
            wire = _wire(dns.name.from_text(entry[2:] if wildcard else entry))
            rule = Rule(Action.PASSTHRU, name, entry, allowlist=True)
            if wildcard:
                self.wildcard.setdefault(wire, rule)
            else:
                self.exact.setdefault(wire, rule)

    def match(self, qname: bytes) -> Rule | None:
        rule = self.exact.get(qname)
        if rule is not None or not self.wildcard:
            return rule
        name = qname
        while name != ROOT:
            name = parent(name)
            rule = self.wildcard.get(name)
            if rule is not None:
                return rule
        return None

    def __len__(self) -> int:
        return len(self.exact) + len(self.wildcard)


def _owner_lines(text: str, origin: dns.name.Name) -> dict[dns.name.Name, int]:
    """The line where each owner name is first written, for messages about it.

    A light reading of the master-file syntax: $ORIGIN, "@", relative names,
    continuation lines that start with blanks, and parentheses.
    """
    lines: dict[dns.name.Name, int] = {}
    current = origin
    depth = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = _strip_comment(raw)
        starts_record = depth == 0 and line[:1] not in ("", " ", "\t")
        depth += line.count("(") - line.count(")")
        if not starts_record:
            continue
        token = line.split()[0]
        if token.upper() == "$ORIGIN" and len(line.split()) > 1:
            with contextlib.suppress(dns.exception.DNSException):
                current = dns.name.from_text(line.split()[1], origin)
            continue
        if token.startswith("$"):
            continue
        try:
            owner = current if token == "@" else dns.name.from_text(token, current)  # noqa: S105 - a zone-file token, not a secret
        except dns.exception.DNSException:
            continue
        lines.setdefault(owner, number)
    return lines


def _strip_comment(line: str) -> str:
    quoted = False
    for i, char in enumerate(line):
        if char == '"':
            quoted = not quoted
        elif char == ";" and not quoted:
            return line[:i]
    return line


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
    import dns.zone  # already imported by PolicyZone.from_file, the only caller

    head = "\n".join(text.splitlines()[: reported - 1]) + "\n"
    try:
        dns.zone.from_text(head, origin=origin, relativize=False, check_origin=False)
    except dns.exception.SyntaxError:
        return reported - 1
    except dns.exception.DNSException:
        return reported
    return reported


class Policy:
    """One namespace's policy: its RPZ zones in order, then its allowlist."""

    def __init__(self, zones: list[PolicyZone], allow: AllowList | None = None) -> None:
        self.zones = tuple(z for z in zones if len(z))
        self.allow = allow if allow is not None and len(allow) else None

    def rpz(self, qname: bytes) -> Rule | None:
        """The trigger of the first RPZ zone that has one for the name."""
        for zone in self.zones:
            rule = zone.match(qname)
            if rule is not None:
                return rule
        return None

    def match(self, qname: bytes) -> Rule | None:
        """The RPZ trigger for the name, else the allow entry that covers it, else None."""
        rule = self.rpz(qname)
        if rule is None and self.allow is not None:
            rule = self.allow.match(qname)
        return rule

    def __len__(self) -> int:
        return sum(len(z) for z in self.zones) + (len(self.allow) if self.allow is not None else 0)
