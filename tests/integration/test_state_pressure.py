"""A pod floods never-seen domains to make a running dnsgate forget its channel.

Through a real dnsgate process (real Unbound upstream, dnspython over UDP,
`max_pairs` scaled down to 100): the flood's domains are denied by the
allowlist, but detection runs before the allowlist, so each costs the
detector pairs. The channel under an allowed wildcard is still flagged at the
same query as without the flood, the flood is reported as `domain_churn`, and
the pressure shows in the metrics.
"""

from __future__ import annotations

import base64
import random
import time

import dns.message
import dns.name
import dns.query
import pytest

from tests.support.observability import free_tcp_port, http_get
from tests.support.upstream_servers import Dnsgate, Unbound, basic_config, free_port, start_dnsgate

pytestmark = pytest.mark.integration

CHURN = 400


def ask(port: int, text: str, rdtype: str = "A") -> None:
    query = dns.message.make_query(dns.name.from_text(text), rdtype)
    dns.query.udp(query, "127.0.0.1", port=port, timeout=3.0)


def start(unbound: Unbound, workdir_factory: pytest.TempPathFactory, name: str) -> tuple[Dnsgate, int]:
    port, admin_port = free_port(), free_tcp_port()
    config = basic_config(
        port, unbound.port,
        agents_extra=f"    detection: {{mode: observe, thresholds: {{churn_domains: {CHURN}}}}}\n",
    ).replace('"*.wild.test"]', '"*.wild.test", "*.exfil.test"]')
    config += f"state: {{backend: memory, max_pairs: 100}}\nadmin: {{address: 127.0.0.1, port: {admin_port}}}\n"
    return start_dnsgate(config, workdir_factory.mktemp(name), port), admin_port


def channel(port: int, flood_per_query: int, queries: int = 40) -> None:
    """The channel (TXT, three base32 labels a query), with never-seen domains between its queries."""
    rng = random.Random(5)
    flooded = 0
    for _ in range(queries):
        labels = [base64.b32encode(rng.randbytes(10)).decode().lower().rstrip("=") for _ in range(3)]
        ask(port, ".".join(labels) + ".exfil.test", "TXT")
        for _ in range(flood_per_query):
            flooded += 1
            ask(port, f"f{flooded}x.test")


def first_tunnel_alert(gate: Dnsgate, timeout: float = 5.0) -> dict[str, object] | None:
    deadline = time.monotonic() + timeout
    while True:
        found = [a for a in gate.alerts() if a["kind"] == "tunnel" and a["domain"] == "exfil.test"]
        if found or time.monotonic() >= deadline:
            return found[0] if found else None
        time.sleep(0.05)


@pytest.fixture(scope="module")
def quiet(unbound_upstream: Unbound, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The tunnel alert of the channel sent alone."""
    gate, _ = start(unbound_upstream, tmp_path_factory, "quiet")
    channel(gate.port, 0)
    alert = first_tunnel_alert(gate)
    assert gate.stop() == 0
    assert alert is not None
    return alert


def test_a_flooding_pod_is_reported_and_its_channel_still_flagged(
    unbound_upstream: Unbound, tmp_path_factory: pytest.TempPathFactory, quiet: dict[str, object]
) -> None:
    gate, admin_port = start(unbound_upstream, tmp_path_factory, "flood")
    try:
        # 60 never-seen domains between two channel queries, 2 pairs each: more than the
        # cap of 100, so the channel's pairs come up for eviction every time.
        channel(gate.port, 60)
        alert = first_tunnel_alert(gate)
        assert alert is not None, "the channel was forgotten under the flood"
        evidence = alert["evidence"]
        assert isinstance(evidence, dict)
        assert isinstance(quiet["evidence"], dict)
        # Flagged on the same evidence as without the flood: the same query of the channel.
        assert evidence["qname"] == quiet["evidence"]["qname"]
        assert evidence["new_names"] == quiet["evidence"]["new_names"]

        churn = [a for a in gate.alerts() if a["kind"] == "domain_churn"]
        assert len(churn) == 1
        assert churn[0]["client"] == "127.0.0.1"
        assert churn[0]["namespace"] == "agents"
        assert churn[0]["severity"] == "warning"
        assert churn[0]["action"] == "alerted"
        churn_evidence = churn[0]["evidence"]
        assert isinstance(churn_evidence, dict)
        assert churn_evidence["never_seen_domains"] == CHURN
        assert churn_evidence["churn_domains"] == CHURN

        status, body = http_get(f"http://127.0.0.1:{admin_port}/metrics")
        assert status == 200
        metrics = {
            line.split()[0]: float(line.split()[1])
            for line in body.decode().splitlines()
            if line.startswith("dnsgate_detector_pair")
        }
        assert metrics["dnsgate_detector_pairs"] <= 100
        assert metrics["dnsgate_detector_pair_evictions_total"] > 1000
        assert metrics["dnsgate_detector_pairs_spared_total"] > 0
        assert metrics["dnsgate_detector_pair_evictions_live_total"] == 0
    finally:
        assert gate.stop() == 0
