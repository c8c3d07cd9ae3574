"""The rebinding/SSRF guard against a real dnsgate and an upstream that answers with inside addresses.

Every guarded range is asked over A or AAAA (with the IPv4-mapped, -compatible,
NAT64 and 6to4 forms); internal zones are exempt; observe and off behave as named.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator

import dns.message
import dns.rcode
import dns.rrset
import pytest
from dnslib import DNSRecord

from tests.support.harness import ask, free_port
from tests.support.rogue_upstream import rogue_upstream
from tests.support.upstream_servers import Dnsgate, start_dnsgate

INSIDE_A = {
    "rfc1918-10": "10.1.2.3",
    "rfc1918-172": "172.16.0.1",
    "rfc1918-192": "192.168.1.1",
    "loopback": "127.0.0.1",
    "loopback-high": "127.255.0.9",
    "metadata": "169.254.169.254",
    "linklocal": "169.254.1.1",
    "cgnat": "100.64.0.1",
    "zero": "0.0.0.0",
    "thisnet": "0.1.2.3",
    "multicast": "224.0.0.251",
    "broadcast": "255.255.255.255",
}
INSIDE_AAAA = {
    "v6-loopback": "::1",
    "v6-unspecified": "::",
    "v6-linklocal": "fe80::1",
    "v6-metadata": "fd00:ec2::254",
    "v6-ula": "fc00::1",
    "v6-multicast": "ff02::1",
    "mapped-loopback": "::ffff:127.0.0.1",
    "mapped-metadata": "::ffff:169.254.169.254",
    "mapped-10": "::ffff:10.1.2.3",
    "mapped-192": "::ffff:192.168.1.1",
    "mapped-172": "::ffff:172.16.5.4",
    "mapped-cgnat": "::ffff:100.64.0.1",
    "mapped-zero": "::ffff:0.0.0.0",
    "mapped-multicast": "::ffff:224.0.0.1",
    "compat-loopback": "::127.0.0.1",
    "compat-10": "::10.1.2.3",
    "nat64-metadata": "64:ff9b::a9fe:a9fe",
    "sixtofour-10": "2002:a01:203::1",
}
OUTSIDE = {"public4": ("A", "192.0.2.1"), "public6": ("AAAA", "2001:db8::1"), "public-mapped": ("AAAA", "::ffff:192.0.2.1")}
HINTS = {"hint4": "1 . alpn=h2 ipv4hint=127.0.0.1", "hint6": "1 . ipv6hint=fd00:ec2::254", "hintok": "1 . ipv4hint=192.0.2.9"}


def answer(_request: DNSRecord, data: bytes) -> bytes:
    query = dns.message.from_wire(data)
    reply = dns.message.make_response(query)
    name = query.question[0].name
    label = name.labels[0].decode().lower()  # names compare without case: dnsgate sends them in random case
    rdtype = dns.rdatatype.to_text(query.question[0].rdtype)
    if label in HINTS and rdtype == "HTTPS":
        reply.answer.append(dns.rrset.from_text(name, 60, "IN", "HTTPS", HINTS[label]))
    elif label in INSIDE_A and rdtype == "A":
        reply.answer.append(dns.rrset.from_text(name, 60, "IN", "A", INSIDE_A[label]))
    elif label in INSIDE_AAAA and rdtype == "AAAA":
        reply.answer.append(dns.rrset.from_text(name, 60, "IN", "AAAA", INSIDE_AAAA[label]))
    elif label in OUTSIDE and rdtype == OUTSIDE[label][0]:
        reply.answer.append(dns.rrset.from_text(name, 60, "IN", rdtype, OUTSIDE[label][1]))
    elif label == "glue" and rdtype == "MX":
        reply.answer.append(dns.rrset.from_text(name, 60, "IN", "MX", "10 mail.rebind.test."))
        reply.additional.append(dns.rrset.from_text("mail.rebind.test.", 60, "IN", "A", "10.9.9.9"))
    elif rdtype == "A":  # the internal names and the readiness probe
        reply.answer.append(dns.rrset.from_text(name, 60, "IN", "A", "10.1.2.3"))
    return reply.to_wire()


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dnsgate]:
    with rogue_upstream(answer) as (_, upstream_port):
        port = free_port()
        config = f"""
listen: [{{address: 127.0.0.1, port: {port}}}]
upstreams: [{{address: 127.0.0.1, port: {upstream_port}}}]
upstream_timeout: 0.5
servfail_after: 1.5
alerts: [{{type: jsonl, path: alerts.jsonl}}]
policy_alert_window: 0.001
namespaces:
  agents:
    clients: [127.0.0.1/32]
    allow: ["*.rebind.test", "*.svc.cluster.local", "*.corp.test"]
  observer:
    clients: [127.0.0.2/32]
    allow: ["*.rebind.test", "*.corp.test"]
    rebinding: {{mode: observe, internal_zones: [corp.test]}}
  unguarded:
    clients: [127.0.0.3/32]
    allow: ["*.rebind.test"]
    rebinding: {{mode: off}}
"""
        server = start_dnsgate(config, tmp_path_factory.mktemp("rebinding"), port, probe="public4.rebind.test")
        yield server
        assert server.stop() == 0


def alert_for(gate: Dnsgate, qname: str) -> dict[str, object]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for alert in gate.alerts():
            if alert["qname"] == qname and alert["kind"] == "rebinding":
                return alert
        time.sleep(0.02)  # polling the alert file for the condition, bounded by the deadline
    raise AssertionError(f"no rebinding alert for {qname}")


@pytest.mark.parametrize(("label", "rdtype", "address"),
                         [(k, "A", v) for k, v in INSIDE_A.items()] + [(k, "AAAA", v) for k, v in INSIDE_AAAA.items()])
def test_inside_addresses_are_denied_and_alerted(gate: Dnsgate, label: str, rdtype: str, address: str) -> None:
    qname = f"{label}.rebind.test"
    reply = ask(gate.port, qname, rdtype)
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert not reply.answer
    alert = alert_for(gate, qname)
    assert alert["action"] == "blocked"
    assert alert["severity"] == "high"
    evidence = alert["evidence"]
    assert isinstance(evidence, dict)
    assert ipaddress.ip_address(str(evidence["address"])) == ipaddress.ip_address(address)


@pytest.mark.parametrize("label", sorted(OUTSIDE))
def test_outside_addresses_pass(gate: Dnsgate, label: str) -> None:
    rdtype, address = OUTSIDE[label]
    reply = ask(gate.port, f"{label}.rebind.test", rdtype)
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.answer[0][0].address == address


def test_https_address_hints_are_checked(gate: Dnsgate) -> None:
    for label in ("hint4", "hint6"):
        assert ask(gate.port, f"{label}.rebind.test", "HTTPS").rcode() == dns.rcode.NXDOMAIN
        alert_for(gate, f"{label}.rebind.test")
    assert ask(gate.port, "hintok.rebind.test", "HTTPS").answer


def test_additional_glue_pointing_inside_is_caught(gate: Dnsgate) -> None:
    assert ask(gate.port, "glue.rebind.test", "MX").rcode() == dns.rcode.NXDOMAIN


def test_internal_zone_is_exempt(gate: Dnsgate) -> None:
    reply = ask(gate.port, "db.prod.svc.cluster.local")
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.answer[0][0].address == "10.1.2.3"


def test_observe_alerts_and_relays_and_zones_are_per_namespace(gate: Dnsgate) -> None:
    reply = ask(gate.port, "metadata.rebind.test", source="127.0.0.2")
    assert reply.answer[0][0].address == "169.254.169.254"
    alerts = [a for a in gate.alerts() if a["namespace"] == "observer"]
    deadline = time.monotonic() + 5
    while not alerts and time.monotonic() < deadline:
        time.sleep(0.02)  # polling for the alert line
        alerts = [a for a in gate.alerts() if a["namespace"] == "observer"]
    assert alerts[0]["action"] == "alerted"
    assert alerts[0]["kind"] == "rebinding"
    # corp.test is internal for this namespace only.
    assert ask(gate.port, "db.corp.test", source="127.0.0.2").answer[0][0].address == "10.1.2.3"
    assert ask(gate.port, "db.corp.test").rcode() == dns.rcode.NXDOMAIN


def test_off_relays_everything(gate: Dnsgate) -> None:
    reply = ask(gate.port, "loopback.rebind.test", source="127.0.0.3")
    assert reply.answer[0][0].address == "127.0.0.1"
