"""No forwarding loops: refused at start, caught at run time.

Two real dnsgate processes forward to each other (a loop no start-up check can
see); a third is started pointing at its own listener and must refuse. Real
Unbound echoes a query's EDNS options in the FORMERR it gives a query with TC
set; dnsgate never forwards such a query (it writes the header itself), and an
upstream that echoes the options anyway (a loopback one here) must never hand
the mark dnsgate adds to what it forwards back to the client.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest
from dnslib import DNSRecord

from resolver.pipeline.loop import LOOP_OPTION
from tests.support.harness import ask, free_port
from tests.support.rogue_upstream import rogue_upstream
from tests.support.upstream_servers import ROOT, Dnsgate, Unbound, start_dnsgate


def gate_config(port: int, upstream_port: int, extra: str = "") -> str:
    return f"""
listen: [{{address: 127.0.0.1, port: {port}}}]
upstreams: [{{address: 127.0.0.1, port: {upstream_port}}}]
upstream_timeout: 0.5
servfail_after: 2.0
{extra}
namespaces:
  agents:
    clients: [127.0.0.0/8]
    allow: ["*.allowed.test"]
"""


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Dnsgate, Dnsgate]]:
    first_port, second_port = free_port(), free_port()
    first = start_dnsgate(gate_config(first_port, second_port), tmp_path_factory.mktemp("loop-a"), first_port)
    second = start_dnsgate(gate_config(second_port, first_port), tmp_path_factory.mktemp("loop-b"), second_port)
    yield first, second
    assert first.stop() == 0
    assert second.stop() == 0


def stderr_of(gate: Dnsgate) -> str:
    return (gate.config_path.parent / "dnsgate.stderr").read_text()


@pytest.mark.parametrize("edns", [True, False], ids=["edns", "no-edns"])
def test_a_loop_between_two_dnsgates_ends_at_once(pair: tuple[Dnsgate, Dnsgate], edns: bool) -> None:
    first, _ = pair
    query = dns.message.make_query(f"loop-{edns}.allowed.test", "A", use_edns=0 if edns else None)
    started = time.monotonic()
    reply = dns.query.udp(query, "127.0.0.1", port=first.port, timeout=5)
    elapsed = time.monotonic() - started
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert elapsed < 1.0, f"the loop was cut by the deadline ({elapsed:.2f} s), not by the guard"


def test_the_loop_is_logged_at_most_once_a_minute(pair: tuple[Dnsgate, Dnsgate]) -> None:
    first, second = pair
    for i in range(5):
        ask(first.port, f"again-{i}.allowed.test")
    logged = stderr_of(first).count("forwarding loop") + stderr_of(second).count("forwarding loop")
    assert 1 <= logged <= 2  # once per process at most, within the minute this module takes


def test_ordinary_forwarding_keeps_edns_as_the_client_sent_it(
    unbound_upstream: Unbound, tmp_path_factory: pytest.TempPathFactory
) -> None:
    port = free_port()
    gate = start_dnsgate(gate_config(port, unbound_upstream.port), tmp_path_factory.mktemp("loop-plain"), port,
                         probe="www.allowed.test")
    try:
        plain = dns.query.udp(dns.message.make_query("www.allowed.test", "A"), "127.0.0.1", port=port, timeout=3)
        assert plain.answer[0][0].address == "192.0.2.1"
        assert plain.opt is None  # the OPT dnsgate added for its mark is not handed to a client without EDNS
        edns = dns.query.udp(dns.message.make_query("www.allowed.test", "AAAA", use_edns=0), "127.0.0.1",
                             port=port, timeout=3)
        assert edns.answer
        assert edns.opt is not None
    finally:
        assert gate.stop() == 0


def truncated_query_with_options(name: str, *options: dns.edns.Option) -> dns.message.Message:
    """A query with TC=1: Unbound answers FORMERR and echoes the query's OPT record, options and all."""
    query = dns.message.make_query(name, "A", use_edns=0, options=list(options))
    query.flags |= dns.flags.TC
    return query


def test_the_loop_mark_never_reaches_a_client(
    unbound_upstream: Unbound, tmp_path_factory: pytest.TempPathFactory
) -> None:
    echoed = dns.query.udp(  # the upstream itself echoes an option with the mark's code: the leak path is real
        truncated_query_with_options("echo.allowed.test", dns.edns.GenericOption(LOOP_OPTION, b"12345678")),
        "127.0.0.1", port=unbound_upstream.port, timeout=3)
    assert echoed.rcode() == dns.rcode.FORMERR
    assert [int(o.otype) for o in echoed.options] == [LOOP_OPTION]
    port = free_port()
    gate = start_dnsgate(gate_config(port, unbound_upstream.port), tmp_path_factory.mktemp("loop-mark"), port,
                         probe="www.allowed.test")
    try:
        # dnsgate writes the header it forwards: the client's TC bit stays behind, so Unbound
        # answers and echoes nothing.
        cookie = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"clientck")
        asked = [("www.allowed.test", [], dns.query.udp), ("www.allowed.test", [cookie], dns.query.udp),
                 ("api.allowed.test", [], dns.query.tcp)]
        for name, options, send in asked:
            reply = send(truncated_query_with_options(name, *options), "127.0.0.1", port=port, timeout=3)
            assert reply.rcode() == dns.rcode.NOERROR, (name, options)
            assert reply.answer, (name, options)
            assert LOOP_OPTION not in [int(o.otype) for o in reply.options], (name, options)
        assert "forwarding loop" not in stderr_of(gate)
    finally:
        assert gate.stop() == 0


def echo_options_in_formerr(_request: DNSRecord, data: bytes) -> bytes:
    """What Unbound gives a query it refuses: FORMERR, the query's OPT options echoed."""
    query = dns.message.from_wire(data)
    reply = dns.message.make_response(query)
    reply.set_rcode(dns.rcode.FORMERR)
    reply.use_edns(0, 0, 1232, options=list(query.options))
    return reply.to_wire()


def test_an_upstream_echoing_the_mark_never_hands_it_to_a_client(tmp_path_factory: pytest.TempPathFactory) -> None:
    with rogue_upstream(echo_options_in_formerr) as (_, upstream_port):
        port = free_port()
        gate = start_dnsgate(gate_config(port, upstream_port), tmp_path_factory.mktemp("loop-echo"), port,
                             probe="www.allowed.test")
        try:
            for name, send in [("www.allowed.test", dns.query.udp), ("api.allowed.test", dns.query.tcp),
                               ("www.allowed.test", dns.query.udp)]:  # the last: from the cache, were FORMERR cached
                reply = send(dns.message.make_query(name, "A", use_edns=0), "127.0.0.1", port=port, timeout=3)
                assert reply.rcode() == dns.rcode.FORMERR, name
                assert LOOP_OPTION not in [int(o.otype) for o in reply.options], name
            assert "forwarding loop" not in stderr_of(gate)
        finally:
            assert gate.stop() == 0


def serve(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "resolver.cli", "serve", "--config", str(config), *extra],
        capture_output=True, text=True, timeout=30, cwd=ROOT, check=False,
    )


def test_start_is_refused_when_an_upstream_is_dnsgate_itself(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "dnsgate.yaml"
    config.write_text(gate_config(port, port))
    result = serve(config)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"dnsgate: {config}:3: upstreams: upstream 127.0.0.1:{port}")
    assert "loop" in lines[0]


def test_start_is_refused_when_listen_on_the_command_line_makes_the_loop(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "dnsgate.yaml"
    config.write_text(gate_config(free_port(), port))
    result = serve(config, "--listen", f"127.0.0.1:{port}")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert f"127.0.0.1:{port}" in result.stderr
    assert f"--listen 127.0.0.1:{port}" in result.stderr


def test_a_wildcard_listener_is_its_own_upstream_on_any_local_address(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "dnsgate.yaml"
    config.write_text(f"""
listen: [{{address: 0.0.0.0, port: {port}}}]
upstreams: [{{address: 127.0.0.2, port: {port}}}]
namespaces: {{agents: {{clients: [127.0.0.0/8]}}}}
""")
    result = serve(config)
    assert result.returncode == 2
    assert f"127.0.0.2:{port}" in result.stderr
    assert "loop" in result.stderr
