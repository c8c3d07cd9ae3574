"""A client must not be able to fill dnsgate's log.

Through a real dnsgate process with a real Unbound upstream: one allowed name
with a CNAME, asked under hundreds of query types (each a cache miss, each
answer a CNAME chain), used to write one ``cname chain`` line per query.
"""

from __future__ import annotations

import dns.message
import dns.query
import dns.rdatatype
import pytest

from resolver.pipeline.policy import CHAIN_LOG_LINES, ChainLog
from tests.support.upstream_servers import Unbound, basic_config, free_port, start_dnsgate

pytestmark = pytest.mark.integration


def test_a_cname_chain_asked_under_many_qtypes_is_logged_once(
    unbound_upstream: Unbound, tmp_path_factory: pytest.TempPathFactory
) -> None:
    port = free_port()
    workdir = tmp_path_factory.mktemp("chainlog")
    gate = start_dnsgate(basic_config(port, unbound_upstream.port), workdir, port)
    try:
        answered = 0
        for qtype in range(1000, 1300):  # unassigned types: no two share a cache entry
            query = dns.message.make_query("alias.allowed.test", qtype)
            reply = dns.query.udp(query, "127.0.0.1", port=port, timeout=3.0)
            if any(rrset.rdtype == dns.rdatatype.CNAME for rrset in reply.answer):
                answered += 1
        assert answered == 300  # every reply carried the chain
    finally:
        assert gate.stop() == 0
    lines = [line for line in (workdir / "dnsgate.stderr").read_text().splitlines() if "cname chain" in line]
    assert len(lines) == 1, lines[:5]
    assert "alias.allowed.test -> target.elsewhere.test" in lines[0]


def test_the_chain_log_is_bounded_per_window_and_counts_what_it_left_out(caplog: pytest.LogCaptureFixture) -> None:
    chains = ChainLog()
    caplog.set_level("INFO", logger="dnsgate.policy")
    target = [b"\x06target\x04test\x00"]
    for i in range(3 * CHAIN_LOG_LINES):  # distinct names in one window: the cap holds
        chains.log(1000.0 + i / 1000, "agents", f"\x04n{i:03d}\x04test\x00".encode(), target)
    for _ in range(500):  # and repeats of one chain cost nothing
        chains.log(1001.0, "agents", b"\x05alias\x04test\x00", target)
    assert len(caplog.records) == CHAIN_LOG_LINES
    caplog.clear()
    chains.log(1061.0, "agents", b"\x05alias\x04test\x00", target)  # the next window
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    held = 2 * CHAIN_LOG_LINES + 500  # past the cap: every name after the first CHAIN_LOG_LINES
    assert messages[0].startswith(f"cname chain: {held} more not logged")
    assert messages[1].startswith("cname chain alias.test -> target.test")
