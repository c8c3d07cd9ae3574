"""The detection stage in-process: a quarantine of D denies every name below D, whatever its labels hold.

The pipeline is the real one (config loaded from text, Engine and Pipeline as
the server builds them); queries are wire messages whose labels carry '.',
'\\', NUL, spaces and octets >= 0x80.
"""

from __future__ import annotations

import base64
import random
from pathlib import Path

import dns.message
import dns.name
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resolver import config as config_mod
from resolver.pipeline.chain import Engine, Pipeline
from resolver.pipeline.query import Query, Reply
from resolver.wire.message import parse_query
from tests.support.sinks import RemoteCollected

CONFIG = """
upstreams: [{address: 127.0.0.1, port: 53}]
alerts: []
namespaces:
  agents:
    clients: [10.0.0.0/24]
    mode: enforce
    allow: ["*.evil.test", "*.fine.test"]
    detection: {mode: enforce}
"""

label = st.one_of(
    st.lists(st.sampled_from([0x2E, 0x5C, 0x00, 0x20, 0x80, 0xFF, 0x61, 0x7C]), min_size=1, max_size=12).map(bytes),
    st.binary(min_size=1, max_size=40),
)


def build(tmp_path: Path) -> Pipeline:
    path = tmp_path / "dnsgate.yaml"
    path.write_text(CONFIG)
    config = config_mod.load(path)
    return Pipeline(config, Engine.from_config(config, []))


def ask(pipeline: Pipeline, labels: tuple[bytes, ...], rdtype: str = "A", now: float = 1000.0) -> Reply | None:
    name = dns.name.Name((*labels, b""))
    wire = dns.message.make_query(name, rdtype).to_wire()
    return pipeline.decide(Query(wire, parse_query(wire), "10.0.0.5", "udp", now))


def under(labels: list[bytes], domain: tuple[bytes, ...]) -> tuple[bytes, ...]:
    while labels and sum(len(x) + 1 for x in labels) + sum(len(x) + 1 for x in domain) + 1 > 255:
        labels = labels[1:]
    return (*labels, *domain)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(label, min_size=1, max_size=5))
def test_quarantine_denies_every_name_below(tmp_path: Path, labels: list[bytes]) -> None:
    pipeline = build(tmp_path)
    detector = pipeline.engine.detector
    detector.quarantine("agents", "evil.test", 2000.0)
    observed = detector.observed
    reply = ask(pipeline, under(labels, (b"evil", b"test")))
    assert reply is not None
    assert reply.action == "quarantined"
    assert detector.observed == observed  # decided before any scoring
    # A look-alike outside evil.test is not touched: the labels end in "fine.test".
    assert ask(pipeline, under([*labels, b"evil"], (b"fine", b"test"))) is None


def test_tunnel_is_quarantined_once_then_costs_a_lookup(tmp_path: Path) -> None:
    pipeline = build(tmp_path)
    detector = pipeline.engine.detector
    rng = random.Random(5)
    replies = []
    for i in range(60):
        chunk = base64.b32encode(rng.randbytes(25)).decode().rstrip("=").lower().encode()
        replies.append(ask(pipeline, (chunk[:20] + b".", chunk[20:], b"evil", b"test"), "TXT", 1000.0 + i))
    first = next(i for i, r in enumerate(replies) if r is not None)
    assert all(r is not None and r.action == "quarantined" for r in replies[first:])
    assert first < 30
    assert pipeline.detection.quarantine_blocks == len(replies) - first
    # Every query after the first block was decided by the quarantine, never scored.
    assert detector.observed == first + 1
    assert detector.quarantined_name("agents", b"\x01x\x04evil\x04test\x00", 1100.0)


def test_a_quarantine_shorter_than_the_flag_hold_ends_on_time(tmp_path: Path) -> None:
    # The alert holds the pair decided for one short window (60 s); quarantine_seconds 8
    # is what enforce promises: after 8 s the domain's next query is scored again, not
    # answered from the hold. Its windows still show the tunnel, so it is quarantined
    # again, for another 8 s.
    path = tmp_path / "dnsgate.yaml"
    path.write_text(CONFIG.replace("detection: {mode: enforce}",
                                   "detection: {mode: enforce, thresholds: {quarantine_seconds: 8}}"))
    config = config_mod.load(path)
    pipeline = Pipeline(config, Engine.from_config(config, []))
    detector = pipeline.engine.detector
    rng = random.Random(5)

    def tunnel(now: float) -> Reply | None:
        chunk = base64.b32encode(rng.randbytes(25)).decode().rstrip("=").lower().encode()
        return ask(pipeline, (chunk[:20] + b".", chunk[20:], b"evil", b"test"), "TXT", now)

    start = next(1000.0 + i for i in range(30) if tunnel(1000.0 + i) is not None)  # then the tunnel pauses
    probe = b"\x01x\x04evil\x04test\x00"
    observed = detector.observed
    held = ask(pipeline, (b"www", b"evil", b"test"), "A", start + 7.9)
    assert held is not None
    assert held.action == "quarantined"
    assert detector.observed == observed  # inside the quarantine: decided, not scored
    assert not detector.quarantined_name("agents", probe, start + 8.1)
    again = ask(pipeline, (b"www", b"evil", b"test"), "A", start + 8.1)
    assert detector.observed == observed + 1  # scored again, not answered from the 60 s hold
    assert again is not None
    assert again.action == "quarantined"
    assert detector.quarantined_name("agents", probe, start + 16.0)
    assert not detector.quarantined_name("agents", probe, start + 16.2)


def test_a_client_flooding_tunnel_domains_gets_each_quarantined_though_its_alerts_fold(tmp_path: Path) -> None:
    """Past the per-client bound the hub folds the tunnel alerts for the remote sinks; the
    quarantine, decided before, still happens for every domain."""
    path = tmp_path / "dnsgate.yaml"
    path.write_text(CONFIG)
    config = config_mod.load(path)
    remote = _Remote()
    pipeline = Pipeline(config, Engine.from_config(config, [remote]))
    detector = pipeline.engine.detector
    rng = random.Random(7)
    now = 1000.0
    domains = [f"t{i}x.test".encode() for i in range(60)]
    for domain in domains:
        for _ in range(30):
            now += 0.01
            chunk = base64.b32encode(rng.randbytes(25)).decode().rstrip("=").lower().encode()
            reply = ask(pipeline, (chunk[:20], chunk[20:], domain.split(b".")[0], b"test"), "TXT", now)
            if reply is not None and reply.action == "quarantined":
                break
        assert detector.quarantined_name("agents", b"\x01x" + b"".join(
            bytes([len(part)]) + part for part in domain.split(b".")) + b"\x00", now), domain
    one_by_one = [a for a in remote.alerts if a.kind == "tunnel"]
    assert len(one_by_one) == 20
    pipeline.engine.alerts.sweep(now + 61)
    [aggregate] = [a for a in remote.alerts if a.kind == "tunnel" and "alerts_folded" in a.evidence]
    assert aggregate.count == 40 == aggregate.evidence["domains_folded"]
    assert aggregate.action == "quarantined"


_Remote = RemoteCollected
