"""Scrubbing: what an upstream sends back is checked and trimmed before anyone sees it.

Runs once per upstream reply (never per cache hit), with dnspython doing the
full decode. The rules:

- the reply must be a response (QR set), opcode QUERY, with exactly our question;
- the answer section keeps the query name's CNAME/DNAME chain and the records
  of the asked type at its end, nothing else;
- the authority section keeps SOA and NS records of a zone enclosing the chain,
  and the DNSSEC records (DS, NSEC, NSEC3, RRSIG) inside that zone;
- the additional section keeps only addresses of names that a kept NS, MX, SRV,
  SVCB or HTTPS record points at (and OPT, which dnspython carries apart);
- the OPT record loses every option with the loop guard's code (65353, see
  resolver/pipeline/loop.py): an upstream that echoes the query's options (as
  Unbound does in a FORMERR) would otherwise hand a client dnsgate's mark;
- anything that does not decode is malformed: the client gets SERVFAIL and a
  counter moves, never an exception.

A reply nothing was removed from goes on as the upstream's own bytes; only a
trimmed reply is rendered again.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from resolver.pipeline.loop import LOOP_OPTION
from resolver.wire.message import MAX_TTL, Question, clamp_ttls, ttl_limit, without_trailing_opt

MAX_CHAIN = 16  # CNAME/DNAME links followed in one reply; longer chains are cut there

ADDRESS_TYPES = (dns.rdatatype.A, dns.rdatatype.AAAA)
DNSSEC_AUTHORITY = (dns.rdatatype.DS, dns.rdatatype.NSEC, dns.rdatatype.NSEC3, dns.rdatatype.RRSIG)
ZONE_TYPES = (dns.rdatatype.SOA, dns.rdatatype.NS)


class MalformedReply(ValueError):
    """An upstream reply that cannot be relayed (say why)."""


@dataclass(slots=True, init=False)
class UpstreamAnswer:
    """A scrubbed upstream reply: its wire form and the decoded message the checks read."""

    wire: bytes
    message: dns.message.Message
    chain: tuple[dns.name.Name, ...]  # qname, then each CNAME/DNAME target in order
    removed: int  # records the scrubber dropped

    # Written out: compiled, a dataclass's generated __init__ runs in the interpreter.
    def __init__(
        self, wire: bytes, message: dns.message.Message, chain: tuple[dns.name.Name, ...], removed: int = 0
    ) -> None:
        self.wire = wire
        self.message = message
        self.chain = chain
        self.removed = removed

    @property
    def targets(self) -> tuple[dns.name.Name, ...]:
        """The names the query name was redirected to, in order."""
        return self.chain[1:]

    def clamp_ttls(self, offsets: tuple[int, ...], max_ttl: int) -> None:
        """Every TTL above ``max_ttl`` lowered to it, one with the top bit set to 0 (RFC 2181
        section 8): in the wire (relayed and cached) and in the decoded message (what a chain
        rewrite or a followed local CNAME builds its reply from)."""
        self.wire = clamp_ttls(self.wire, offsets, max_ttl)
        limit = ttl_limit(max_ttl)
        msg = self.message
        for section in (msg.answer, msg.authority, msg.additional):
            for rrset in section:
                if rrset.ttl > limit:
                    rrset.ttl = 0 if rrset.ttl > MAX_TTL else limit


@dataclass
class Scrubber:
    """Scrubs upstream replies and counts what it had to do."""

    malformed: int = 0
    scrubbed_replies: int = 0
    removed_records: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def stats(self) -> dict[str, Any]:
        """Counters for the metrics endpoint."""
        return {
            "malformed": self.malformed,
            "malformed_reasons": dict(self.reasons),
            "scrubbed_replies": self.scrubbed_replies,
            "removed_records": self.removed_records,
        }

    def count_malformed(self, exc: Exception) -> int:
        """Count one unusable reply; return how many there have been."""
        self.malformed += 1
        reason = str(exc).split(":", 1)[0]
        if len(self.reasons) < 64 or reason in self.reasons:
            self.reasons[reason] = self.reasons.get(reason, 0) + 1
        return self.malformed

    def scrub(self, raw: bytes, question: Question, *, client_edns: bool) -> UpstreamAnswer:
        """Check and trim one reply; raise MalformedReply when it cannot be used."""
        answer = scrub(raw, question, client_edns=client_edns)
        if answer.removed:
            self.scrubbed_replies += 1
            self.removed_records += answer.removed
        return answer


def decode(raw: bytes) -> dns.message.Message:
    """The full decode; every way it can fail becomes MalformedReply."""
    try:
        return dns.message.from_wire(raw)
    except (dns.exception.DNSException, ValueError, IndexError, struct.error, UnicodeError) as exc:
        raise MalformedReply(f"undecodable: {type(exc).__name__}: {exc}") from None


def scrub(raw: bytes, question: Question, *, client_edns: bool = True) -> UpstreamAnswer:
    """Check a reply against the question it answers and keep only what belongs to it.

    ``client_edns`` False removes the OPT record the forwarder added, so a
    client that sent no EDNS gets none back (RFC 6891 section 7).
    """
    msg = decode(raw)
    if not msg.flags & dns.flags.QR:
        raise MalformedReply("not a response: QR is clear")
    if msg.opcode() != dns.opcode.QUERY:
        raise MalformedReply(f"opcode {dns.opcode.to_text(msg.opcode())}, expected QUERY")
    if len(msg.question) != 1:
        raise MalformedReply(f"{len(msg.question)} questions, expected 1")
    asked = msg.question[0]
    qname = dns.name.from_wire(question.qname, 0)[0]
    if asked.name != qname or asked.rdtype != question.qtype or asked.rdclass != question.qclass:
        raise MalformedReply("question differs from the one asked")

    answer, chain = _answer_chain(msg, qname, question.qtype, question.qclass)
    zones = tuple(chain)
    authority = [r for r in msg.authority if _in_authority(r, zones, question.qclass)]
    apexes = tuple(r.name for r in authority if r.rdtype in ZONE_TYPES)
    authority = [r for r in authority if r.rdtype in ZONE_TYPES or any(r.name.is_subdomain(a) for a in apexes)]
    pointed = _pointed_names(answer + authority)
    additional = [
        r for r in msg.additional
        if r.rdclass == question.qclass and r.name in pointed and _is_address_or_its_signature(r)
    ]

    removed = (
        _count(msg.answer) - _count(answer)
        + _count(msg.authority) - _count(authority)
        + _count(msg.additional) - _count(additional)
    )
    strip_opt = not client_edns and msg.opt is not None
    # Rare (an upstream echoing the query's options): the usual reply carries no mark.
    strip_mark = not strip_opt and _carries_option(msg, LOOP_OPTION)
    if not removed and not strip_opt and not strip_mark:
        return UpstreamAnswer(raw, msg, chain)
    if not removed and strip_opt:
        cut = without_trailing_opt(raw)  # the usual case: no need to render the message again
        if cut is not None:
            msg.use_edns(False)
            return UpstreamAnswer(cut, msg, chain)
    msg.answer, msg.authority, msg.additional = answer, authority, additional
    if strip_opt:
        msg.use_edns(False)
    elif strip_mark:
        kept = [option for option in msg.options if option.otype != LOOP_OPTION]
        msg.use_edns(msg.edns, msg.ednsflags, msg.payload, options=kept)
    try:
        wire = msg.to_wire(max_size=65535)
    except dns.exception.DNSException as exc:
        raise MalformedReply(f"cannot render: {exc}") from None
    return UpstreamAnswer(wire, msg, chain, removed)


def _carries_option(msg: dns.message.Message, code: int) -> bool:
    return any(option.otype == code for option in msg.options)


def _count(rrsets: list[dns.rrset.RRset]) -> int:
    return sum(len(r) for r in rrsets)


def _answer_chain(
    msg: dns.message.Message, qname: dns.name.Name, qtype: int, qclass: int
) -> tuple[list[dns.rrset.RRset], tuple[dns.name.Name, ...]]:
    """The rrsets of the chain from ``qname``, in order, and the names it passes through."""
    by_owner: dict[dns.name.Name, list[dns.rrset.RRset]] = {}
    dnames: list[dns.rrset.RRset] = []
    for rrset in msg.answer:
        if rrset.rdclass != qclass:
            continue
        by_owner.setdefault(rrset.name, []).append(rrset)
        if rrset.rdtype == dns.rdatatype.DNAME:
            dnames.append(rrset)

    def at(name: dns.name.Name, rdtype: int) -> list[dns.rrset.RRset]:
        return [
            r for r in by_owner.get(name, ())
            if r.rdtype == rdtype or (r.rdtype == dns.rdatatype.RRSIG and r.covers == rdtype)
        ]

    kept: list[dns.rrset.RRset] = []
    chain = [qname]
    name = qname
    for _ in range(MAX_CHAIN + 1):
        if qtype == dns.rdatatype.ANY:
            kept.extend(by_owner.get(name, ()))
            break
        final = at(name, qtype)
        if final:
            kept.extend(final)
            break
        # DNAME first (RFC 6672 puts it before the CNAME it synthesizes).
        target = None
        for dname in dnames:
            if name != dname.name and name.is_subdomain(dname.name):
                try:
                    target = name.relativize(dname.name).derelativize(dname[0].target)
                except dns.name.NameTooLong:
                    continue
                kept.extend(at(dname.name, dns.rdatatype.DNAME))
                break
        cname = at(name, dns.rdatatype.CNAME)
        if cname:
            cname_target = next(r for r in cname if r.rdtype == dns.rdatatype.CNAME)[0].target
            if target is None or cname_target == target:
                kept.extend(cname)
                target = cname_target
        if target is None or target in chain or len(chain) > MAX_CHAIN:
            break
        chain.append(target)
        name = target
    # The same rrset can be reached twice (a DNAME covering two links): keep it once.
    unique: list[dns.rrset.RRset] = []
    for rrset in kept:
        if not any(rrset is u for u in unique):
            unique.append(rrset)
    return unique, tuple(chain)


def _in_authority(rrset: dns.rrset.RRset, chain: tuple[dns.name.Name, ...], qclass: int) -> bool:
    """SOA and NS of a zone enclosing some name of the chain; DNSSEC records for a second pass."""
    if rrset.rdclass != qclass:
        return False
    if rrset.rdtype in ZONE_TYPES or (rrset.rdtype == dns.rdatatype.RRSIG and rrset.covers in ZONE_TYPES):
        return any(name.is_subdomain(rrset.name) for name in chain)
    return rrset.rdtype in DNSSEC_AUTHORITY


def _pointed_names(rrsets: list[dns.rrset.RRset]) -> set[dns.name.Name]:
    """Names that kept records point at, whose addresses may ride in the additional section."""
    names: set[dns.name.Name] = set()
    for rrset in rrsets:
        for rdata in rrset:
            if rrset.rdtype == dns.rdatatype.NS:
                names.add(rdata.target)
            elif rrset.rdtype == dns.rdatatype.MX:
                names.add(rdata.exchange)
            elif rrset.rdtype == dns.rdatatype.SRV:
                names.add(rdata.target)
            elif rrset.rdtype in (dns.rdatatype.SVCB, dns.rdatatype.HTTPS):
                names.add(rrset.name if rdata.target == dns.name.root else rdata.target)
    return names


def _is_address_or_its_signature(rrset: dns.rrset.RRset) -> bool:
    return rrset.rdtype in ADDRESS_TYPES or (rrset.rdtype == dns.rdatatype.RRSIG and rrset.covers in ADDRESS_TYPES)
