"""Whom per-client state is held under: a pod, an IPv6 host's network, an IPv4 address.

A host on an IPv6 network may source from any address of its prefix. Counted
per address it was as many clients as it cared to be: here the detector's
side of it, through the real pipeline (identity, then detection), with a
channel paced one name every 30 s and spread over 64 addresses of one /64.
tests/integration/test_ipv6_hosts.py shows the rate limit and the client
quarantine on the wire.
"""

from __future__ import annotations

import base64
import ipaddress
import random
from pathlib import Path

import dns.message
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from heuristics.detector import address_owner, churn_owner
from resolver import config as config_mod
from resolver.pipeline.chain import Engine, Pipeline
from resolver.pipeline.identity import PodIdentity
from resolver.pipeline.query import Query, Reply
from resolver.wire.message import parse_query
from tests.support.sinks import Collected

CONFIG = """
upstreams: [{{address: 127.0.0.1, port: 9}}]
{extra}
namespaces:
  vms:
    clients: ["fd00:64::/32", 10.0.0.0/8]
    mode: enforce
    allow: [www.allowed.test]
    detection: {{mode: observe}}
"""


def build(tmp_path: Path, extra: str = "") -> tuple[Pipeline, Collected]:
    path = tmp_path / "dnsgate.yaml"
    path.write_text(CONFIG.format(extra=extra))
    config = config_mod.load(path)
    sink = Collected()
    return Pipeline(config, Engine.from_config(config, [sink])), sink


def paced_channel(pipeline: Pipeline, sink: Collected, addresses: list[str], names: int = 400) -> int | None:
    """A base32 channel (3 x 16 characters a name), A and AAAA of each name as a dual-stack SDK
    asks, one name every 30 s, each from the next address; the name first flagged (1-based)."""
    rng = random.Random(3)
    now = 1_800_000_000.0
    for i in range(names):
        text = ".".join(base64.b32encode(rng.randbytes(10)).decode().lower().rstrip("=") for _ in range(3))
        for qtype in ("A", "AAAA"):
            wire = dns.message.make_query(f"{text}.exfil-v6.example", qtype).to_wire()
            pipeline.decide(Query(wire, parse_query(wire), addresses[i % len(addresses)], "udp", now))
        if any(a.kind == "tunnel" for a in sink.alerts):
            return i + 1
        now += 30.0
    return None


def test_a_paced_channel_over_64_addresses_of_a_64_is_flagged_as_one_host(tmp_path: Path) -> None:
    one, sink = build(tmp_path, "ipv6_client_prefix: 64")
    alone = paced_channel(one, sink, ["fd00:64:3:2::1"])
    assert alone is not None
    spread, sink = build(tmp_path, "ipv6_client_prefix: 64")
    flagged = paced_channel(spread, sink, [f"fd00:64:3:2::{k + 1:x}" for k in range(64)])
    # Counted per address this went 400 names (20 KB) unflagged: 64 "clients" with 1/64 each,
    # which the namespace budget takes for a fleet's telemetry.
    assert flagged == alone
    [first] = [a for a in sink.alerts if a.kind == "tunnel"][:1]
    assert first.client.startswith("fd00:64:3:2::")  # the alert names the address that asked
    assert first.evidence["client"] == "fd00:64:3:2::/64"  # the detector counted the host


@pytest.mark.parametrize("extra", ["", "ipv6_client_prefix: 128"])
def test_by_default_every_ipv6_address_is_its_own_client(tmp_path: Path, extra: str) -> None:
    """The default (128): addresses of one /64 may be different hosts (a LAN, a cloud subnet), so
    they are not grouped, and a host spreading a channel over its addresses is not caught either."""
    pipeline, sink = build(tmp_path, extra)
    assert paced_channel(pipeline, sink, [f"fd00:64:3:2::{k + 1:x}" for k in range(64)], names=120) is None
    wire = dns.message.make_query("www.allowed.test", "A").to_wire()
    query = Query(wire, parse_query(wire), "fd00:64:3:2::1", "udp", 1000.0)
    pipeline.identity.resolve(query)
    assert query.owner == "fd00:64:3:2::1"


def test_a_namespace_narrower_than_the_client_prefix_is_refused(tmp_path: Path) -> None:
    """With ipv6_client_prefix 64, a namespace of one /128 would share its host's /64 with
    addresses of other namespaces (one bucket, one quarantine across tenants): refused at load."""
    path = tmp_path / "dnsgate.yaml"
    path.write_text('upstreams: [{address: 127.0.0.1, port: 9}]\nipv6_client_prefix: 64\nnamespaces:\n'
                    '  a:\n    clients: ["fd00::/48"]\n  b:\n    clients: ["fd00:1:2:3::a/128"]\n')
    with pytest.raises(config_mod.ConfigError) as caught:
        config_mod.load(path)
    text = str(caught.value)
    assert "dnsgate.yaml:7" in text
    assert "narrower than ipv6_client_prefix (64)" in text
    assert "\n" not in text


def test_ipv4_clients_stay_per_address(tmp_path: Path) -> None:
    pipeline, _ = build(tmp_path)
    wire = dns.message.make_query("www.allowed.test", "A").to_wire()
    for client in ("10.1.2.3", "10.1.2.4"):
        query = Query(wire, parse_query(wire), client, "udp", 1000.0)
        pipeline.identity.resolve(query)
        assert query.owner == client


@pytest.mark.parametrize("value", [16, 129, "64x", True])
def test_a_bad_ipv6_client_prefix_is_rejected_with_its_line(tmp_path: Path, value: object) -> None:
    path = tmp_path / "dnsgate.yaml"
    path.write_text(CONFIG.format(extra=f"ipv6_client_prefix: {str(value).lower()}"))
    with pytest.raises(config_mod.ConfigError) as caught:
        config_mod.load(path)
    text = str(caught.value)
    assert "ipv6_client_prefix" in text
    assert "dnsgate.yaml:3" in text


@given(st.integers(0, 2**128 - 1), st.integers(0, 2**64 - 1), st.sampled_from([48, 56, 64, 80, 96, 112]))
def test_every_address_of_a_network_has_that_network_as_owner(address: int, low: int, prefix: int) -> None:
    base = ipaddress.IPv6Address(address)
    mask = (1 << (128 - prefix)) - 1
    sibling = ipaddress.IPv6Address((address & ~mask) | (low & mask))
    assume(base.ipv4_mapped is None and sibling.ipv4_mapped is None)
    owner = address_owner(str(base), prefix)
    assert ipaddress.ip_network(owner) == ipaddress.IPv6Network(f"{base}/{prefix}", strict=False)
    assert address_owner(str(sibling), prefix) == owner
    assert address_owner(sibling.exploded, prefix) == owner  # however the address is written
    outside = ipaddress.IPv6Address(address ^ (1 << (128 - prefix)))
    assume(all(a.ipv4_mapped is None for a in (base, sibling, outside)))  # those are IPv4 clients
    assert address_owner(str(outside), prefix) != owner


def test_what_is_not_an_ipv6_address_is_its_own_owner() -> None:
    for text in ("10.0.0.5", "pod:agents/web-0", "fd00::/64", "not-an-address:x", ""):
        assert address_owner(text, 64) == text
    assert address_owner("fd00::1", 128) == "fd00::1"
    assert address_owner("fe80::1%eth0", 64) == "fe80::%eth0/64"  # the link is part of it
    assert address_owner("fe80::1%eth1", 64) != address_owner("fe80::1%eth0", 64)
    assert churn_owner("fd00:64:1:2::9") == "fd00:64:1:2::/64"
    # IPv4 clients seen through a dual-stack socket stay one client per address, not one per ::/64.
    assert address_owner("::ffff:10.0.0.5", 64) == "10.0.0.5"
    assert address_owner("::ffff:10.0.0.5", 128) == "10.0.0.5"
    assert address_owner("::ffff:10.0.0.6", 64) == "10.0.0.6"


class RecordingForwarder:
    """Stands in for the upstream forwarder (unit test): records whom each query was sent for."""

    def __init__(self) -> None:
        self.clients: list[str] = []

    async def forward(self, _wire: bytes, _q: object, *, tcp: bool = False, client: str = "") -> bytes | None:  # noqa: ARG002
        self.clients.append(client)
        return None  # no upstream: SERVFAIL

    def close(self) -> None:
        return None


async def test_loop_marks_are_counted_per_host_not_per_address(tmp_path: Path) -> None:
    """The forwarder carries on at most MARKS_PER_CLIENT earlier-hop marks per client: it is
    told the host's network, so a host of a /64 gets 8 marks a day, not 8 per address."""
    pipeline, _ = build(tmp_path, "ipv6_client_prefix: 64")
    recording = RecordingForwarder()
    pipeline.engine.forwarder = recording  # type: ignore[assignment]
    wire = dns.message.make_query("www.allowed.test", "A").to_wire()
    for client in ("fd00:64:5:6::1", "fd00:64:5:6::2", "10.0.0.9"):
        reply = pipeline.handle(Query(wire, parse_query(wire), client, "udp", 1000.0))
        assert not isinstance(reply, Reply)  # allowed, not cached: it goes upstream
        await reply
    assert recording.clients == ["fd00:64:5:6::/64", "fd00:64:5:6::/64", "10.0.0.9"]


def test_a_pod_quarantined_by_its_network_before_the_watch_named_it_stays_quarantined(tmp_path: Path) -> None:
    """With ipv6_client_prefix 64, a pod the pod table did not list yet is counted by its /64 and
    quarantined so, and under its address too: once the watch names it (its owner is then its pod
    key) the address's quarantine still holds for it, and the network's does not reach the named
    pods beside it."""
    path = tmp_path / "dnsgate.yaml"
    path.write_text(
        "upstreams: [{address: 127.0.0.1, port: 9}]\nipv6_client_prefix: 64\nidentity:\n  kubernetes: {}\n"
        "namespaces:\n  agents:\n    clients: ['fd00:10:244:1::/64']\n    allow: [www.allowed.test]\n"
        "    on_undeclared: {action: quarantine, duration: 600}\n"
    )
    config = config_mod.load(path)
    engine = Engine.from_config(config, [Collected()])
    pipeline = Pipeline(config, engine)
    bad = "fd00:10:244:1::1a"

    def ask(name: str, now: float) -> str | None:
        wire = dns.message.make_query(name, "A").to_wire()
        reply = pipeline.decide(Query(wire, parse_query(wire), bad, "udp", now))
        return None if reply is None else reply.action

    assert ask("exfil.evil.example", 1000.0) == "quarantined"
    assert sorted(q.client for q in engine.state.clients.active(1000.0)) == ["fd00:10:244:1::/64", bad]
    engine.pods.put(PodIdentity("agents", "bad-0", "sa", "u1"), (bad,))  # the watch catches up
    assert ask("www.allowed.test", 1001.0) == "quarantined"
    # A named pod of the same /64 (a node's pod network) is not cut off by that quarantine.
    engine.pods.put(PodIdentity("agents", "web-0", "sa", "u2"), ("fd00:10:244:1::5",))
    wire = dns.message.make_query("www.allowed.test", "A").to_wire()
    neighbour = Query(wire, parse_query(wire), "fd00:10:244:1::5", "udp", 1002.0)
    pipeline.identity.resolve(neighbour)
    assert neighbour.owner == "pod:agents/web-0"
    assert pipeline.quarantine.resolve(neighbour) is None
