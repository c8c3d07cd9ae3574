"""The rebinding and SSRF guard: an outside name must not resolve to an inside address.

An allowed external name whose answer points at 169.254.169.254 (cloud
metadata), loopback, RFC 1918, CGNAT, unique-local or multicast space turns
the allowlist into a way into the cluster. Each upstream reply is checked once,
before it is cached (the answer for a followed RPZ local CNAME's target too):
every A and AAAA record (answer and additional sections) and every
ipv4hint/ipv6hint of an SVCB or HTTPS record. IPv6 forms that carry
an IPv4 address (mapped ``::ffff:a.b.c.d``, compatible ``::a.b.c.d``, NAT64
``64:ff9b::a.b.c.d`` and 6to4 ``2002:AABB:CCDD::``) are checked as that IPv4
address too.

Names inside the namespace's internal zones (``cluster.local``, ``svc``,
``pod`` by default) are exempt: pointing inside is their job. ``enforce``
answers a hit with the namespace's deny action and alerts (``kind:
rebinding``); ``observe`` alerts and relays; ``off`` does nothing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass

import dns.rdatatype
import dns.rdtypes.svcbbase

from resolver.config import Config, IPNetwork, Namespace
from resolver.pipeline.alerts import AlertHub
from resolver.pipeline.policy import deny
from resolver.pipeline.query import Query, Reply
from resolver.pipeline.scrub import UpstreamAnswer
from resolver.wire.message import ReplyInfo, name_from_text, parent

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

NAT64 = ipaddress.ip_network("64:ff9b::/96")
SIX_TO_FOUR = ipaddress.ip_network("2002::/16")
COMPATIBLE = ipaddress.ip_network("::/96")
TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # IPv4-translated, ::ffff:0:a.b.c.d (RFC 2765)


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries, in the forms a stack may route as IPv4."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in COMPATIBLE or address in NAT64 or address in TRANSLATED:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    if address in SIX_TO_FOUR:
        return address.sixtofour
    return None


@dataclass(frozen=True, slots=True)
class Hit:
    """One address inside a guarded range."""

    owner: str
    address: str
    network: str


class AddressRanges:
    """The guarded networks, matched as integers (a reply holds a handful of addresses)."""

    def __init__(self, networks: tuple[IPNetwork, ...]) -> None:
        self.v4 = [(int(n.network_address), int(n.netmask), n) for n in networks if n.version == 4]
        self.v6 = [(int(n.network_address), int(n.netmask), n) for n in networks if n.version == 6]

    def covering(self, address: IPAddress) -> IPNetwork | None:
        """The guarded network holding the address (or the IPv4 address it embeds), else None."""
        value = int(address)
        for net_int, mask, network in self.v4 if address.version == 4 else self.v6:
            if value & mask == net_int:
                return network
        if isinstance(address, ipaddress.IPv6Address):
            inner = embedded_ipv4(address)
            if inner is not None:
                return self.covering(inner)
        return None


def answer_addresses(answer: UpstreamAnswer) -> Iterator[tuple[str, IPAddress]]:
    """(owner, address) for every address the reply hands out."""
    msg = answer.message
    for rrset in (*msg.answer, *msg.additional):
        owner = rrset.name.to_text(omit_final_dot=True)
        if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            for rdata in rrset:
                yield owner, ipaddress.ip_address(rdata.address)
        elif rrset.rdtype in (dns.rdatatype.SVCB, dns.rdatatype.HTTPS):
            for rdata in rrset:
                for key in (dns.rdtypes.svcbbase.ParamKey.IPV4HINT, dns.rdtypes.svcbbase.ParamKey.IPV6HINT):
                    hint = rdata.params.get(key)
                    for text in getattr(hint, "addresses", ()):
                        yield owner, ipaddress.ip_address(text)


class NamespaceGuard:
    """One namespace's guard, compiled: internal zones as wire names, ranges as integers."""

    def __init__(self, ns: Namespace) -> None:
        self.mode = ns.rebinding.mode
        self.internal = frozenset(name_from_text(zone) for zone in ns.rebinding.internal_zones)
        self.ranges = AddressRanges(ns.rebinding.ranges)

    def exempt(self, qname: bytes) -> bool:
        """True when the name is inside one of the internal zones."""
        name = qname
        while True:
            if name in self.internal:
                return True
            if name == b"\x00":
                return False
            name = parent(name)

    def hits(self, answer: UpstreamAnswer) -> list[Hit]:
        found = []
        for owner, address in answer_addresses(answer):
            network = self.ranges.covering(address)
            if network is not None:
                found.append(Hit(owner, str(address), str(network)))
        return found


@dataclass
class RebindingCounts:
    """Answers that pointed inside; kept by the Engine so a reload does not reset them."""

    blocked: int = 0
    observed: int = 0

    def stats(self) -> dict[str, int]:
        return {"blocked": self.blocked, "observed": self.observed}


class RebindingGuard:
    """Checks each upstream answer against its namespace's guard."""

    def __init__(self, config: Config, alerts: AlertHub, counts: RebindingCounts) -> None:
        self._guards = {name: NamespaceGuard(ns) for name, ns in config.namespaces.items()}
        self._alerts = alerts
        self.counts = counts

    def on_reply(self, query: Query, answer: UpstreamAnswer, _info: ReplyInfo, /) -> Reply | None:
        """The reply-side hook: see :meth:`check`."""
        return self.check(query, answer)

    def check(self, query: Query, answer: UpstreamAnswer) -> Reply | None:
        """The deny reply when the answer points inside and the guard enforces, else None."""
        view = query.view
        assert view is not None
        guard = self._guards[view.name]
        if guard.mode == "off" or guard.exempt(query.question.qname):
            return None
        hits = guard.hits(answer)
        if not hits:
            return None
        enforce = guard.mode == "enforce"
        first = hits[0]
        self._alerts.policy(
            query.now, view.name, query.client, query.question.qname, query.question.qtype,
            "blocked" if enforce else "alerted", ["rebinding"],
            {
                "address": first.address, "owner": first.owner, "range": first.network,
                "addresses": [h.address for h in hits[:8]], "mode": guard.mode,
            },
            kind="rebinding",
        )
        if not enforce:
            self.counts.observed += 1
            return None
        self.counts.blocked += 1
        return deny(query, view.namespace)
