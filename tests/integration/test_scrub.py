"""Upstream replies are scrubbed before they are cached or sent; odd questions never leave.

The upstream is a misbehaving dnslib server on loopback (tests/support/rogue_upstream.py);
dnsgate is a real process.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest
from dnslib import DNSRecord

from tests.support.harness import ask, free_port
from tests.support.rogue_upstream import RogueUpstream, reply_with, rogue_upstream
from tests.support.upstream_servers import Dnsgate, start_dnsgate

SOA = "allowed.test. 60 SOA ns.allowed.test. root.allowed.test. 1 3600 600 86400 60"


def misbehave(request: DNSRecord, data: bytes) -> bytes:
    """What the upstream sends back, chosen by the first label of the question."""
    name = str(request.q.qname).rstrip(".").lower()
    label = name.split(".")[0]
    if label == "extra":
        return reply_with(
            request,
            f"an {name}. 60 A 192.0.2.1",
            "an victim.example. 60 A 6.6.6.6",
            "ns victim.example. 60 NS ns.victim.example.",
            "ar victim.example. 60 A 6.6.6.6",
            "ar ns.victim.example. 60 A 6.6.6.7",
        ).pack()
    if label == "chain":
        return reply_with(
            request,
            f"an {name}. 60 CNAME t1.allowed.test.",
            "an t1.allowed.test. 60 CNAME t2.allowed.test.",
            "an t2.allowed.test. 60 A 192.0.2.5",
            "an unrelated.allowed.test. 60 A 192.0.2.99",
            "ns allowed.test. 60 NS ns.allowed.test.",
            "ar ns.allowed.test. 60 A 192.0.2.53",
            "ar elsewhere.example. 60 A 6.6.6.8",
        ).pack()
    if label == "nxsoa":
        return reply_with(request, f"ns {SOA}", "ns victim.example. 60 SOA a. b. 1 2 3 4 5", rcode=3).pack()
    if label == "shortsoa":
        # The SOA's RDLENGTH says 6: the record is cut short, the message itself is consistent.
        wire = bytearray(reply_with(request, f"ns {SOA}", rcode=3).pack())
        soa_start = wire.rindex(b"\x00\x06\x00\x01")  # TYPE SOA, CLASS IN
        struct.pack_into("!H", wire, soa_start + 8, 6)
        return bytes(wire[: soa_start + 10 + 6])
    if label == "cutmsg":
        return reply_with(request, f"ns {SOA}", rcode=3).pack()[:-9]
    if label == "echo":
        return data
    return reply_with(request, f"an {name}. 60 A 192.0.2.1").pack()


@pytest.fixture(scope="module")
def rogue() -> Iterator[tuple[RogueUpstream, int]]:
    with rogue_upstream(misbehave) as pair:
        yield pair


@pytest.fixture(scope="module")
def gate(rogue: tuple[RogueUpstream, int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dnsgate]:
    port = free_port()
    config = f"""
listen: [{{address: 127.0.0.1, port: {port}}}]
upstreams: [{{address: 127.0.0.1, port: {rogue[1]}}}]
upstream_timeout: 0.5
servfail_after: 1.5
alerts: [{{type: jsonl, path: alerts.jsonl}}]
namespaces:
  agents:
    clients: [127.0.0.1/32]
    allow: [allowed.test, "*.allowed.test"]
"""
    server = start_dnsgate(config, tmp_path_factory.mktemp("scrub"), port)
    yield server
    assert server.stop() == 0
    assert "Traceback" not in (server.config_path.parent / "dnsgate.stderr").read_text()


def names_in(reply: dns.message.Message) -> set[str]:
    return {r.name.to_text() for section in (reply.answer, reply.authority, reply.additional) for r in section}


def test_records_for_other_names_are_dropped_and_stay_dropped_in_cache(gate: Dnsgate) -> None:
    for attempt in range(2):  # the second answer comes from the cache
        reply = ask(gate.port, "extra.allowed.test")
        assert reply.rcode() == dns.rcode.NOERROR
        assert [(r.name.to_text(), r[0].address) for r in reply.answer] == [("extra.allowed.test.", "192.0.2.1")]
        assert names_in(reply) == {"extra.allowed.test."}, attempt


def test_the_chain_and_its_bailiwick_are_kept(gate: Dnsgate) -> None:
    reply = ask(gate.port, "chain.allowed.test")
    assert [(r.name.to_text(), dns.rdatatype.to_text(r.rdtype)) for r in reply.answer] == [
        ("chain.allowed.test.", "CNAME"), ("t1.allowed.test.", "CNAME"), ("t2.allowed.test.", "A"),
    ]
    assert [r.name.to_text() for r in reply.authority] == ["allowed.test."]
    assert [r.name.to_text() for r in reply.additional] == ["ns.allowed.test."]  # glue of the kept NS


def test_negative_answer_keeps_only_the_enclosing_soa(gate: Dnsgate) -> None:
    reply = ask(gate.port, "nxsoa.allowed.test")
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert [r.name.to_text() for r in reply.authority] == ["allowed.test."]


@pytest.mark.parametrize("name", ["shortsoa.allowed.test", "cutmsg.allowed.test", "echo.allowed.test"])
def test_unusable_replies_become_servfail(gate: Dnsgate, name: str) -> None:
    reply = ask(gate.port, name)
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert not reply.answer


def raw_query(port: int, wire: bytes) -> dns.message.Message:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(wire, ("127.0.0.1", port))
        return dns.message.from_wire(s.recv(65535), question_only=True)


def query_wire(name: str, rdtype: int, rdclass: int = dns.rdataclass.IN) -> bytes:
    q = dns.message.make_query(name, rdtype, rdclass)
    q.id = 0x4242
    return q.to_wire()


LOCAL = [
    ("axfr.allowed.test", dns.rdatatype.AXFR, dns.rdataclass.IN, dns.rcode.REFUSED),
    ("ixfr.allowed.test", dns.rdatatype.IXFR, dns.rdataclass.IN, dns.rcode.REFUSED),
    ("opt.allowed.test", dns.rdatatype.OPT, dns.rdataclass.IN, dns.rcode.FORMERR),
    ("tsig.allowed.test", dns.rdatatype.TSIG, dns.rdataclass.IN, dns.rcode.FORMERR),
    ("maila.allowed.test", dns.rdatatype.MAILA, dns.rdataclass.IN, dns.rcode.NOTIMP),
    ("meta.allowed.test", 200, dns.rdataclass.IN, dns.rcode.NOTIMP),
    ("chaos.allowed.test", dns.rdatatype.TXT, dns.rdataclass.CH, dns.rcode.REFUSED),
]


@pytest.mark.parametrize(("name", "rdtype", "rdclass", "rcode"), LOCAL, ids=[c[0].split(".")[0] for c in LOCAL])
def test_questions_no_upstream_should_see_are_answered_locally(
    gate: Dnsgate, rogue: tuple[RogueUpstream, int], name: str, rdtype: int, rdclass: int, rcode: int
) -> None:
    reply = raw_query(gate.port, query_wire(name, rdtype, rdclass))
    assert reply.rcode() == rcode
    assert reply.id == 0x4242
    assert name not in rogue[0].names()


def test_junk_section_counts_get_formerr_and_never_reach_the_upstream(
    gate: Dnsgate, rogue: tuple[RogueUpstream, int]
) -> None:
    body = bytearray(query_wire("junk.allowed.test", dns.rdatatype.A))
    body[6:8] = b"\x00\x05"  # ANCOUNT 5 in a query
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(bytes(body), ("127.0.0.1", gate.port))
        reply = s.recv(65535)
    assert reply[3] & 0x0F == dns.rcode.FORMERR
    two_opts = dns.message.make_query("twoopt.allowed.test", "A", use_edns=0).to_wire()
    opt = two_opts[two_opts.index(b"\x00\x00\x29"):]
    two_opts = two_opts[:10] + b"\x00\x02" + two_opts[12:] + opt
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(two_opts, ("127.0.0.1", gate.port))
        assert s.recv(65535)[3] & 0x0F == dns.rcode.FORMERR
    assert not {"junk.allowed.test", "twoopt.allowed.test"} & set(rogue[0].names())


def test_ordinary_questions_still_flow_after_the_odd_ones(gate: Dnsgate) -> None:
    for rdtype, rdclass, _ in ((t, c, r) for _, t, c, r in LOCAL):
        raw_query(gate.port, query_wire("again.allowed.test", rdtype, rdclass))
    reply = ask(gate.port, "after.allowed.test")
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.answer[0][0].address == "192.0.2.1"
    assert reply.flags & dns.flags.QR
