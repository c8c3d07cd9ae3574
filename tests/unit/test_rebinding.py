"""The rebinding guard in-process: ranges, embedded IPv4 forms, internal zones, config errors."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resolver import config as config_mod
from resolver.config import REBINDING_RANGES, ConfigError, Namespace, Rebinding
from resolver.pipeline.rebinding import AddressRanges, NamespaceGuard
from resolver.wire.message import name_from_text

GUARDED = AddressRanges(tuple(ipaddress.ip_network(r) for r in REBINDING_RANGES))
V4_GUARDED = [ipaddress.ip_network(r) for r in REBINDING_RANGES if ":" not in r]


@given(st.sampled_from(V4_GUARDED), st.integers(0, 2**32 - 1))
def test_every_ipv6_form_of_a_guarded_ipv4_address_is_guarded(network: ipaddress.IPv4Network, noise: int) -> None:
    host = ipaddress.IPv4Address(int(network.network_address) | (noise & int(network.hostmask)))
    forms = [
        host,
        ipaddress.IPv6Address(0xFFFF_0000_0000 | int(host)),  # ::ffff:a.b.c.d
        ipaddress.IPv6Address(int(host)),  # ::a.b.c.d
        ipaddress.IPv6Address((0x64FF9B << 96) | int(host)),  # NAT64
        ipaddress.IPv6Address((0xFFFF << 32) | int(host)),  # ::ffff:0:a.b.c.d, IPv4-translated
        ipaddress.IPv6Address((0x2002 << 112) | (int(host) << 80)),  # 6to4
    ]
    for form in forms:
        assert GUARDED.covering(form) is not None, form


@pytest.mark.parametrize("address", [
    "64:ff9b:1::a00:1", "64:ff9b:1:ffff::1",  # local-use NAT64: wherever its IPv4 sits
    "::ffff:0:a00:1",  # IPv4-translated 10.0.0.1
    "fec0::1", "192.0.0.192", "240.0.0.1", "255.255.255.254",
])
def test_special_purpose_ranges_inside_networks_are_guarded(address: str) -> None:
    assert GUARDED.covering(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["64:ff9b::808:808", "::ffff:0:808:808", "2001:4860:4860::8888", "198.18.0.1"])
def test_public_addresses_and_their_translated_forms_pass(address: str) -> None:
    assert GUARDED.covering(ipaddress.ip_address(address)) is None


@given(st.integers(0, 2**32 - 1))
def test_public_ipv4_and_its_mapped_form_agree(value: int) -> None:
    host = ipaddress.IPv4Address(value)
    mapped = ipaddress.IPv6Address(0xFFFF_0000_0000 | value)
    assert (GUARDED.covering(host) is None) == (GUARDED.covering(mapped) is None)


def test_internal_zones_cover_their_names_on_label_boundaries() -> None:
    guard = NamespaceGuard(Namespace("n", rebinding=Rebinding(internal_zones=("cluster.local", "svc"))))
    assert guard.exempt(name_from_text("db.prod.svc.cluster.local"))
    assert guard.exempt(name_from_text("cluster.local"))
    assert guard.exempt(name_from_text("web.svc"))
    assert not guard.exempt(name_from_text("evilcluster.local"))
    assert not guard.exempt(name_from_text("svc.example.com"))


def load(tmp_path: Path, text: str) -> config_mod.Config:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return config_mod.load(path)


BASE = """\
upstreams: [{address: 127.0.0.1, port: 5300}]
rebinding: {mode: observe}
namespaces:
  a:
    clients: [10.0.0.0/8]
  b:
    clients: [10.1.0.0/16]
    rebinding:
      internal_zones: [corp.example]
      ranges: [10.0.0.0/8]
"""


def test_namespace_keys_override_the_top_level(tmp_path: Path) -> None:
    config = load(tmp_path, BASE)
    a, b = config.namespaces["a"].rebinding, config.namespaces["b"].rebinding
    assert a.mode == "observe"
    assert a.internal_zones == ("cluster.local", "svc", "pod")
    assert ipaddress.ip_network("169.254.0.0/16") in a.ranges
    assert b.mode == "observe"
    assert b.internal_zones == ("corp.example",)
    assert b.ranges == (ipaddress.ip_network("10.0.0.0/8"),)


@pytest.mark.parametrize(("bad", "line", "key", "message"), [
    ("rebinding: {mode: block}", 2, "rebinding.mode", "must be one of off, observe, enforce"),
    ("rebinding: {ranges: [10.0.0.300/8]}", 2, "rebinding.ranges[0]", "not an IP address or prefix"),
    ("rebinding: {internal_zones: ['*.corp']}", 2, "rebinding.internal_zones[0]", "drop the '*.'"),
    ("rebinding: {zones: [corp]}", 2, "rebinding.zones", "unknown key"),
])
def test_errors_name_file_line_and_key(tmp_path: Path, bad: str, line: int, key: str, message: str) -> None:
    text = f"upstreams: [{{address: 127.0.0.1, port: 5300}}]\n{bad}\nnamespaces: {{a: {{clients: [10.0.0.0/8]}}}}\n"
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    assert (info.value.line, info.value.key) == (line, key)
    assert message in info.value.message
