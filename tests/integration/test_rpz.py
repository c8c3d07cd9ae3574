"""RPZ zone files: actions and BIND precedence, in the engine and through a running dnsgate."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from resolver.config import ConfigError
from resolver.pipeline.rpz import Action, AllowList, Policy, PolicyZone
from resolver.wire.message import name_from_text
from tests.support.harness import ask
from tests.support.upstream_servers import ROOT, Dnsgate, Unbound, free_port, start_dnsgate

FIRST_ZONE = """\
$ORIGIN first.rpz.
$TTL 60
@ SOA localhost. root.localhost. 1 3600 600 86400 60
@ NS localhost.
nx.allowed.test         CNAME .
nodata.allowed.test     CNAME *.
drop.allowed.test       CNAME rpz-drop.
tcponly.allowed.test    CNAME rpz-tcp-only.
local.allowed.test      A 198.51.100.7
local.allowed.test      AAAA 2001:db8::7
local.allowed.test      TXT "from policy"
alias.rpz.test          CNAME www.allowed.test.
*.wild.test             CNAME .
exact.wild.test         CNAME rpz-passthru.
*.deep.wild.test        CNAME rpz-passthru.
denied.test             CNAME rpz-passthru.
10.1.0.0.127.rpz-client-ip CNAME .
"""

SECOND_ZONE = """\
$ORIGIN second.rpz.
@ 60 SOA localhost. root.localhost. 1 3600 600 86400 60
@ 60 NS localhost.
nx.allowed.test         60 CNAME rpz-passthru.
www.allowed.test        60 CNAME rpz-passthru.
*.allowed.test          60 CNAME rpz-passthru.
"""


@pytest.fixture
def zones(tmp_path: Path) -> tuple[Path, Path]:
    first = tmp_path / "first.rpz"
    second = tmp_path / "second.rpz"
    first.write_text(FIRST_ZONE)
    second.write_text(SECOND_ZONE)
    return first, second


def action(policy: Policy, name: str) -> Action | None:
    rule = policy.match(name_from_text(name))
    return None if rule is None else rule.action


def test_actions_from_zone_file(zones: tuple[Path, Path]) -> None:
    first = PolicyZone.from_file(zones[0])
    policy = Policy([first])
    assert action(policy, "nx.allowed.test") is Action.NXDOMAIN
    assert action(policy, "nodata.allowed.test") is Action.NODATA
    assert action(policy, "drop.allowed.test") is Action.DROP
    assert action(policy, "tcponly.allowed.test") is Action.TCP_ONLY
    assert action(policy, "local.allowed.test") is Action.LOCAL_DATA
    assert action(policy, "www.allowed.test") is None
    assert first.skipped == ["10.1.0.0.127.rpz-client-ip"]


def test_exact_before_wildcard_and_closest_encloser_wildcards(zones: tuple[Path, Path]) -> None:
    policy = Policy([PolicyZone.from_file(zones[0])])
    assert action(policy, "exact.wild.test") is Action.PASSTHRU  # exact beats *.wild.test
    assert action(policy, "x.deep.wild.test") is Action.PASSTHRU  # *.deep.wild.test: the closest encloser's
    assert action(policy, "other.wild.test") is Action.NXDOMAIN
    assert action(policy, "b.other.wild.test") is Action.NXDOMAIN
    # RFC 4592, as BIND: exact.wild.test exists, so *.wild.test does not reach below it;
    # deep.wild.test exists (the parent of *.deep.wild.test) and has no trigger of its own.
    assert action(policy, "a.exact.wild.test") is None
    assert action(policy, "deep.wild.test") is None
    assert action(policy, "wild.test") is None


def test_first_zone_wins(zones: tuple[Path, Path]) -> None:
    first, second = (PolicyZone.from_file(p) for p in zones)
    assert action(Policy([first, second]), "nx.allowed.test") is Action.NXDOMAIN
    assert action(Policy([second, first]), "nx.allowed.test") is Action.PASSTHRU
    # An exact trigger in a later zone loses to a wildcard in an earlier one.
    assert action(Policy([second, first]), "drop.allowed.test") is Action.PASSTHRU


def test_names_compare_case_insensitively_on_wire_octets() -> None:
    zone = AllowList("t", ("api.example.com", "*.example.org"))
    policy = Policy([], zone)
    assert action(policy, "API.Example.COM") is Action.PASSTHRU
    # Octets outside ASCII are compared as they are: 0xC9 is not 0xE9.
    wire_upper = b"\x03\xc9ab\x07example\x03org\x00"
    assert policy.match(wire_upper) is not None
    exact = PolicyZone("bytes")
    exact.add(b"\x03\xe9ab\x03net\x00", zone.exact[name_from_text("api.example.com")])
    assert Policy([exact]).match(b"\x03\xc9ab\x03net\x00") is None
    assert Policy([exact]).match(b"\x03\xe9AB\x03NET\x00".lower()) is not None


def test_bad_zone_file_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.rpz"
    bad.write_text("$ORIGIN bad.rpz.\n@ 60 SOA localhost. root.localhost. 1 2 3 4 5\nx 60 A not-an-address\ny 60 A 192.0.2.1\n")
    with pytest.raises(ConfigError) as info:
        PolicyZone.from_file(bad)
    assert info.value.path == str(bad)
    assert info.value.line == 3


@pytest.fixture(scope="module")
def rpz_gate(unbound_upstream: Unbound, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dnsgate]:
    workdir = tmp_path_factory.mktemp("rpzgate")
    (workdir / "first.rpz").write_text(FIRST_ZONE)
    (workdir / "second.rpz").write_text(SECOND_ZONE)
    port = free_port()
    config = f"""
listen: [{{address: 127.0.0.1, port: {port}}}]
upstreams: [{{address: 127.0.0.1, port: {unbound_upstream.port}}}]
namespaces:
  agents:
    clients: [127.0.0.0/8]
    rpz: [first.rpz, second.rpz]
    allow: [api.allowed.test]
"""
    server = start_dnsgate(config, workdir, port)
    yield server
    assert server.stop() == 0


def test_served_rpz_actions(rpz_gate: Dnsgate) -> None:
    port = rpz_gate.port
    assert ask(port, "www.allowed.test").answer[0][0].address == "192.0.2.1"  # passthru in zone 2
    assert ask(port, "api.allowed.test").rcode() == dns.rcode.NOERROR  # *.allowed.test, zone 2
    assert ask(port, "nx.allowed.test").rcode() == dns.rcode.NXDOMAIN
    nodata = ask(port, "nodata.allowed.test")
    assert nodata.rcode() == dns.rcode.NOERROR
    assert not nodata.answer
    with pytest.raises(dns.exception.Timeout):
        dns.query.udp(dns.message.make_query("drop.allowed.test", "A"), "127.0.0.1", port=port, timeout=0.5)
    tc = ask(port, "tcponly.allowed.test")
    assert tc.flags & dns.flags.TC
    assert not tc.answer
    assert ask(port, "denied.test", tcp=True).answer[0][0].address == "192.0.2.66"  # passthru over TCP


def test_served_local_data(rpz_gate: Dnsgate) -> None:
    port = rpz_gate.port
    a = ask(port, "local.allowed.test")
    assert [r.address for r in a.answer[0]] == ["198.51.100.7"]
    assert a.answer[0].ttl == 60
    aaaa = ask(port, "local.allowed.test", "AAAA")
    assert aaaa.answer[0][0].address == "2001:db8::7"
    txt = ask(port, "local.allowed.test", "TXT")
    assert txt.answer[0][0].strings == (b"from policy",)
    mx = ask(port, "local.allowed.test", "MX")
    assert mx.rcode() == dns.rcode.NOERROR
    assert not mx.answer
    cname = ask(port, "alias.rpz.test")  # a local CNAME is followed upstream, as BIND does
    assert cname.answer[0].rdtype == dns.rdatatype.CNAME
    assert cname.answer[0][0].target.to_text() == "www.allowed.test."
    assert cname.answer[1].name.to_text() == "www.allowed.test."
    assert cname.answer[1][0].address == "192.0.2.1"
    assert ask(port, "alias.rpz.test", "CNAME").answer[0].rdtype == dns.rdatatype.CNAME


def test_check_config_lists_unsupported_triggers_with_file_and_line(zones: tuple[Path, Path], tmp_path: Path) -> None:
    config = tmp_path / "dnsgate.yaml"
    config.write_text(f"""
upstreams: [{{address: 127.0.0.1, port: 5300}}]
namespaces:
  agents:
    clients: [127.0.0.0/8]
    rpz: [{zones[0]}]
""")
    result = subprocess.run([sys.executable, "-m", "resolver.cli", "check-config", str(config)],
                            capture_output=True, text=True, timeout=30, cwd=ROOT, check=False)
    assert result.returncode == 0
    line = next(i for i, text in enumerate(FIRST_ZONE.splitlines(), 1) if "rpz-client-ip" in text)
    assert f"{zones[0]}:{line}: rpz: 10.1.0.0.127.rpz-client-ip: client IP triggers" in result.stderr
    assert result.stdout.startswith(f"{config}: ok")
