"""What an upstream's answer may carry to a client, against a real dnsgate and a misbehaving upstream.

The upstream is a dnspython-built responder on loopback (tests/support/rogue_upstream.py):

- TTLs: whatever 32-bit TTL it sends, a client never sees more than ``max_ttl``, relayed or
  from the cache, and a TTL with the top bit set is 0 (RFC 2181 section 8).
- ``cname_check: strict`` reads the scrubbed chain, so a DNAME sent without the CNAME it
  synthesises redirects to a name that must be allowed too.
- An RPZ local CNAME's target is checked as a query for it would be before it goes
  upstream (policy, detector), and its answer as a forwarded one (rebinding guard,
  ``cname_check``, TTL cap).
"""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Iterator

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from dnslib import DNSRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.harness import ask, free_port, wire_ttls
from tests.support.rogue_upstream import RogueUpstream, rogue_upstream
from tests.support.upstream_servers import Dnsgate, start_dnsgate

MAX_TTL = 3600
WALLED_ZONE = """\
$ORIGIN walled.rpz.
$TTL 60
@ SOA localhost. hostmaster.localhost. 1 3600 600 86400 60
@ NS localhost.
redir.allowed.test CNAME metadata.walled.test.
chained.allowed.test CNAME chain.walled.test.
fine.allowed.test CNAME ok.walled.test.
bigttl.allowed.test CNAME ttl4294967295-followed.walled.test.
*.sink.test CNAME *.garden.test.
"""
DNAMES = {  # owner -> DNAME target, for questions dname.<owner>
    "allowed.test.": "denied.test.",
    "sub.allowed.test.": "other.allowed.test.",
}


def answer(_request: DNSRecord, data: bytes) -> bytes:
    """The reply, chosen by the question name's first label (in whatever case DNS 0x20 gave it)."""
    query = dns.message.from_wire(data)
    reply = dns.message.make_response(query)
    name = query.question[0].name
    label = name.labels[0].decode().lower()
    if label.startswith("ttl"):  # ttl<N>-<n>: every record with TTL N, in all three sections
        ttl = int(label[3:].split("-")[0])
        reply.answer.append(dns.rrset.from_text(name, ttl, "IN", "A", "203.0.113.9"))
        reply.authority.append(dns.rrset.from_text("allowed.test.", ttl, "IN", "NS", "ns.allowed.test."))
        reply.additional.append(dns.rrset.from_text("ns.allowed.test.", ttl, "IN", "A", "203.0.113.53"))
    elif label == "dname":  # a DNAME alone: no synthesised CNAME, then the address of the name it makes
        owner = name.parent()
        target = dns.name.from_text(DNAMES[owner.to_text().lower()])
        reply.answer.append(dns.rrset.from_text(owner, 60, "IN", "DNAME", target.to_text()))
        reply.answer.append(dns.rrset.from_text(name.relativize(owner).derelativize(target), 60, "IN", "A",
                                                "203.0.113.7"))
    elif label == "metadata":
        reply.answer.append(dns.rrset.from_text(name, 60, "IN", "A", "169.254.169.254"))
    elif label in ("cname", "chain"):
        reply.answer.append(dns.rrset.from_text(name, 60, "IN", "CNAME", "www.denied.test."))
        reply.answer.append(dns.rrset.from_text("www.denied.test.", 60, "IN", "A", "203.0.113.8"))
    else:
        reply.answer.append(dns.rrset.from_text(name, 60, "IN", "A", "203.0.113.1"))
    return reply.to_wire()


@pytest.fixture(scope="module")
def rogue() -> Iterator[tuple[RogueUpstream, int]]:
    with rogue_upstream(answer) as pair:
        yield pair


@pytest.fixture(scope="module")
def gate(rogue: tuple[RogueUpstream, int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dnsgate]:
    workdir = tmp_path_factory.mktemp("answers")
    (workdir / "walled.rpz").write_text(WALLED_ZONE)
    port = free_port()
    config = f"""
listen: [{{address: 127.0.0.1, port: {port}}}]
upstreams: [{{address: 127.0.0.1, port: {rogue[1]}}}]
upstream_timeout: 0.5
servfail_after: 1.5
cache: {{max_ttl: {MAX_TTL}}}
cname_check: strict
alerts: [{{type: jsonl, path: alerts.jsonl}}]
policy_alert_window: 0.001
namespaces:
  agents:
    clients: [127.0.0.1/32]
    allow: [allowed.test, "*.allowed.test", "*.walled.test"]
    rpz: [walled.rpz]
"""
    server = start_dnsgate(config, workdir, port, probe="www.allowed.test")
    yield server
    assert server.stop() == 0
    assert "Traceback" not in (workdir / "dnsgate.stderr").read_text()


def ask_wire(port: int, name: str, rdtype: str = "A") -> bytes:
    """One question over UDP; the reply's octets as they arrived."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(dns.message.make_query(name, rdtype).to_wire(), ("127.0.0.1", port))
        return s.recv(65535)


# -- TTLs ------------------------------------------------------------------------


@pytest.mark.parametrize(("sent", "seen"), [(4294967295, 0), (2**31, 0), (2**31 - 1, MAX_TTL), (86400, MAX_TTL),
                                            (MAX_TTL, MAX_TTL), (59, 59)])
def test_ttls_are_capped_relayed_and_from_the_cache(gate: Dnsgate, sent: int, seen: int) -> None:
    name = f"ttl{sent}-fixed.allowed.test"
    relayed = ask_wire(gate.port, name)
    assert dns.message.from_wire(relayed).rcode() == dns.rcode.NOERROR
    assert wire_ttls(relayed) == [seen] * 3
    again = wire_ttls(ask_wire(gate.port, name))  # from the cache, unless the TTL was 0
    assert all(seen - 2 <= ttl <= seen for ttl in again), again


NAMES = itertools.count()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([MAX_TTL + 1, 2**31 - 1, 2**31, 2**32 - 1])))
def test_no_ttl_an_upstream_sends_reaches_a_client_above_max_ttl(gate: Dnsgate, sent: int) -> None:
    name = f"ttl{sent}-{next(NAMES)}.allowed.test"
    for _ in range(2):  # relayed, then from the cache
        ttls = wire_ttls(ask_wire(gate.port, name))
        assert ttls == [ttls[0]] * 3
        assert ttls[0] <= MAX_TTL
        if sent >= 2**31:
            assert ttls[0] == 0


# -- cname_check: strict and DNAME -----------------------------------------------


def alerts_for(gate: Dnsgate, qname: str, kind: str = "policy") -> list[dict[str, object]]:
    """The alerts naming ``qname``, waited for (the sink writes them a moment after the reply)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = [a for a in gate.alerts() if a["qname"] == qname and a["kind"] == kind]
        if found:
            return found
        time.sleep(0.02)  # polling the alert file, bounded by the deadline
    return []


@pytest.mark.parametrize(("qname", "target"), [("cname.allowed.test", "www.denied.test"),
                                                ("dname.allowed.test", "dname.denied.test")])
def test_strict_denies_a_chain_out_of_the_allow_list_cname_or_dname(gate: Dnsgate, qname: str, target: str) -> None:
    reply = ask(gate.port, qname)
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert not reply.answer
    alert = alerts_for(gate, qname)[0]
    assert alert["reasons"] == ["cname_not_allowed"]
    assert alert["evidence"] == {"cname_target": target}


def test_strict_lets_a_dname_inside_the_allow_list_through(gate: Dnsgate) -> None:
    reply = ask(gate.port, "dname.sub.allowed.test")
    assert reply.rcode() == dns.rcode.NOERROR
    assert [(r.name.to_text(), dns.rdatatype.to_text(r.rdtype)) for r in reply.answer] == [
        ("sub.allowed.test.", "DNAME"), ("dname.other.allowed.test.", "A"),
    ]


# -- RPZ local CNAMEs: the followed name and its answer ---------------------------


def test_a_followed_answer_pointing_inside_is_denied_and_alerted(gate: Dnsgate) -> None:
    reply = ask(gate.port, "redir.allowed.test")
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert [(r.name.to_text(), r[0].to_text()) for r in reply.answer] == [
        ("redir.allowed.test.", "metadata.walled.test.")]  # the CNAME, not the address
    alert = alerts_for(gate, "metadata.walled.test", kind="rebinding")[0]
    assert alert["action"] == "blocked"
    assert alert["evidence"]["address"] == "169.254.169.254"  # type: ignore[index]


def test_a_followed_answer_goes_through_cname_check(gate: Dnsgate) -> None:
    reply = ask(gate.port, "chained.allowed.test")
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert [r.name.to_text() for r in reply.answer] == ["chained.allowed.test."]
    alert = alerts_for(gate, "chain.walled.test")[0]
    assert alert["evidence"] == {"cname_target": "www.denied.test"}


def test_a_followed_name_outside_the_allow_list_never_reaches_the_upstream(
    gate: Dnsgate, rogue: tuple[RogueUpstream, int]
) -> None:
    reply = ask(gate.port, "data123.sink.test")  # *.sink.test CNAME *.garden.test.: the client's labels
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert [(r.name.to_text(), r[0].to_text()) for r in reply.answer] == [
        ("data123.sink.test.", "data123.sink.test.garden.test.")]
    assert not [name for name in rogue[0].names() if "sink.test" in name]
    alert = alerts_for(gate, "data123.sink.test.garden.test")[0]
    assert alert["reasons"] == ["not_allowed"]
    assert alert["evidence"]["followed_from"] == "data123.sink.test"  # type: ignore[index]


def test_a_followed_answer_that_passes_is_appended_with_its_ttls_capped(gate: Dnsgate) -> None:
    reply = ask(gate.port, "fine.allowed.test")
    assert [(r.name.to_text(), r[0].to_text()) for r in reply.answer] == [
        ("fine.allowed.test.", "ok.walled.test."), ("ok.walled.test.", "203.0.113.1")]
    assert wire_ttls(ask_wire(gate.port, "bigttl.allowed.test")) == [60, 0]  # the upstream sent 4294967295
