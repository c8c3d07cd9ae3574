"""`dnsgate propose`: allowlists from real captured traffic, loaded back and replayed.

The captures here are made on the spot: tcpdump on loopback while dig and
dnspython query a real dnsgate in front of a real Unbound. Nothing leaves
loopback; readiness is tcpdump's "listening" line and the capture file holding
a sentinel reply, never a sleep.
"""

from __future__ import annotations

import base64
import json
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml

from resolver import config as config_mod
from resolver.offline.propose import from_book, render, search_expansion
from resolver.pipeline.learn import LearnBook, RedisLearnStore, Seen
from resolver.wire.message import name_from_text
from tests.support.harness import ask
from tests.support.traffic import dig, tcpdump
from tests.support.upstream_servers import (
    UPSTREAM_RECORDS,
    Unbound,
    basic_config,
    ensure_packages,
    free_port,
    start_dnsgate,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DNSGATE = [sys.executable, "-m", "resolver.cli"]
CDN_NAMES = [f"n{i}.cdn.test" for i in range(1, 7)]
RECORDS = UPSTREAM_RECORDS + [f"{n}. 300 IN A 192.0.2.{i + 10}" for i, n in enumerate(CDN_NAMES)]


def dnsgate(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([*DNSGATE, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)
    if check and out.returncode != 0:
        raise AssertionError(f"dnsgate {' '.join(args)} -> {out.returncode}\n{out.stderr}")
    return out


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Unbound]:
    ensure_packages("unbound", "dig")
    server = Unbound(free_port(), tmp_path_factory.mktemp("unbound-propose"))
    server.write_config(RECORDS)
    server.start()
    yield server
    server.stop()


def workload(port: int) -> None:
    """End-to-end traffic of a small agent pod: UDP, TCP, AAAA, TXT spilling to TCP, CNAME."""
    dig(port, "www.allowed.test")
    dig(port, "www.allowed.test", "AAAA")
    dig(port, "api.allowed.test", "+tcp")
    dig(port, "big.allowed.test", "TXT")  # truncated over UDP: dig retries over TCP
    dig(port, "alias.allowed.test")
    for name in CDN_NAMES:
        ask(port, name)
    ask(port, "denied.test")
    ask(port, "www.allowed.test", tcp=True)


def search_and_tunnel(port: int) -> None:
    """A pod resolver's search path (ndots:5) and a tunnel, on top of the workload."""
    for stem in ("api.allowed.test", "n1.cdn.test"):
        for suffix in ("agents.svc.cluster.local", "svc.cluster.local", "cluster.local", "corp.test"):
            ask(port, f"{stem}.{suffix}")
        ask(port, stem)
    rng = random.Random(4)
    for i in range(60):
        chunk = base64.b32encode(rng.randbytes(30)).decode().rstrip("=").lower()
        ask(port, f"{i:04x}{chunk[:40]}.{chunk[40:]}.t.exfil.test", "TXT")


@pytest.fixture(scope="module")
def captures(upstream: Unbound, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Two real captures: the plain workload, and workload + search path + tunnel."""
    work = tmp_path_factory.mktemp("propose")
    port = free_port()
    # The live config allows the workload's names; everything else (search-path
    # tries, the tunnel) is denied locally, so nothing unknown reaches Unbound.
    text = basic_config(port, upstream.port).replace(
        '"*.wild.test"]', '"*.cdn.test", "*.allowed.test"]'
    )
    assert '"*.cdn.test"' in text
    gate = start_dnsgate(text, work, port)
    try:
        plain = work / "workload.pcap"
        with tcpdump(port, plain):
            workload(port)
        mixed = work / "mixed.pcap"
        with tcpdump(port, mixed):
            workload(port)
            search_and_tunnel(port)
    finally:
        assert gate.stop() == 0
    return {"port": port, "plain": plain, "mixed": mixed, "work": work, "gate": gate}


def replay_alerts(*args: str) -> list[dict[str, object]]:
    out = dnsgate("replay", *args, "--format", "jsonl")
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_round_trip_propose_check_config_replay_has_no_policy_alerts(captures: dict[str, object], tmp_path: Path) -> None:
    port, plain = str(captures["port"]), str(captures["plain"])
    proposed = dnsgate("propose", plain, "--port", port, "--collapse", "6").stdout
    path = tmp_path / "proposed.yaml"
    path.write_text(proposed)
    check = dnsgate("check-config", str(path))
    assert "ok" in check.stdout
    allow = config_mod.load(path).namespaces["default"].allow
    assert {"www.allowed.test", "api.allowed.test", "big.allowed.test", "alias.allowed.test",
            "*.cdn.test"} <= set(allow)
    assert not any(n.startswith("n1.cdn") for n in allow), "six cdn names collapse to *.cdn.test"

    alerts = replay_alerts(plain, "--port", port, "--config", str(path))
    # Only names answered NXDOMAIN (denied.test, the capture's sentinel) are denied: propose left them to a person.
    not_proposed = proposed.split("# not proposed")[1]
    policy = {str(a["qname"]) for a in alerts if a["kind"] == "policy"}
    assert "denied.test" in policy
    assert all(f"'{n}'" in not_proposed for n in policy)
    # The same traffic against an empty allowlist does alert: the replay really decides.
    empty = tmp_path / "empty.yaml"
    empty.write_text(proposed.split("    allow:")[0] + "    allow: []\n")
    denied = {a["qname"] for a in replay_alerts(plain, "--port", port, "--config", str(empty))}
    assert {"www.allowed.test", "n3.cdn.test", "big.allowed.test"} <= denied


def test_entries_carry_counts_and_first_last_seen(captures: dict[str, object]) -> None:
    out = dnsgate("propose", str(captures["plain"]), "--port", str(captures["port"]), "--collapse", "6").stdout
    line = next(ln for ln in out.splitlines() if "'www.allowed.test'" in ln)
    assert "queries, first 20" in line
    assert ", last 20" in line
    wild = next(ln for ln in out.splitlines() if "'*.cdn.test'" in ln)
    assert "6 names, 6 queries" in wild
    denied = next(ln for ln in out.splitlines() if "'denied.test'" in ln)
    assert denied.startswith("    #   - 'denied.test'")
    assert "mostly NXDOMAIN (1 of 1 query)" in denied


def test_tunnels_and_nxdomain_search_expansions_are_left_out(captures: dict[str, object], tmp_path: Path) -> None:
    port, mixed = str(captures["port"]), str(captures["mixed"])
    out = dnsgate("propose", mixed, "--port", port, "--collapse", "6")
    path = tmp_path / "mixed.yaml"
    path.write_text(out.stdout)
    dnsgate("check-config", str(path))
    allow = set(config_mod.load(path).namespaces["default"].allow)
    assert not any("exfil.test" in n for n in allow), allow
    assert not any("cluster.local" in n or n.endswith(".corp.test") for n in allow), allow
    assert {"api.allowed.test", "*.cdn.test"} <= allow
    assert "exfil.test" in out.stdout.split("namespaces:")[0]  # the header says what was left out

    # Replaying the same capture against the proposal: only what was left out alerts.
    alerts = replay_alerts(mixed, "--port", port, "--config", str(path))
    policy = {str(a["qname"]) for a in alerts if a["kind"] == "policy"}
    assert policy
    review = out.stdout.split("# not proposed")[1]
    assert all(".exfil.test" in n or "cluster.local" in n or n.endswith("corp.test") or f"'{n}'" in review
               for n in policy)
    assert "'*.exfil.test'" in out.stdout
    assert "flagged by the detector as a tunnel" in out.stdout
    assert any(a["kind"] == "tunnel" and a["domain"] == "exfil.test" for a in alerts)


def test_replay_takes_the_live_servers_decisions(captures: dict[str, object]) -> None:
    """The live dnsgate's policy alerts for the capture equal replay's with its config."""
    gate = captures["gate"]
    live = {(str(a["qname"]), str(a["action"])) for a in gate.alerts() if a["kind"] == "policy"}  # type: ignore[attr-defined]
    work = Path(str(captures["work"]))
    offline: set[tuple[str, str]] = set()
    for name in ("workload.pcap", "mixed.pcap"):
        offline |= {(str(a["qname"]), str(a["action"]))
                    for a in replay_alerts(str(work / name), "--port", str(captures["port"]),
                                           "--config", str(work / "dnsgate.yaml"))
                    if a["kind"] == "policy"}
    assert live
    assert live == offline


def test_propose_with_config_keeps_its_namespaces_and_settings(captures: dict[str, object], tmp_path: Path) -> None:
    work = Path(str(captures["work"]))
    learn_cfg = tmp_path / "learn.yaml"
    learn_cfg.write_text((work / "dnsgate.yaml").read_text().replace("mode: enforce", "mode: learn"))
    out = dnsgate("propose", str(captures["plain"]), "--port", str(captures["port"]),
                  "--config", str(learn_cfg), "--collapse", "0").stdout
    path = tmp_path / "proposed.yaml"
    path.write_text(out)
    dnsgate("check-config", str(path))
    cfg = config_mod.load(path)
    agents = cfg.namespaces["agents"]
    assert agents.mode == "observe"
    assert [str(n) for n in agents.clients] == ["127.0.0.1/32"]
    assert cfg.upstreams == config_mod.load(learn_cfg).upstreams
    assert "denied.test" not in agents.allow  # observed, but every answer was NXDOMAIN
    assert "#   - 'denied.test'" in out
    # Entries the config already had are kept, with the traffic they matched, and
    # names they cover are not repeated.
    assert "*.cdn.test" in agents.allow
    assert "n4.cdn.test" not in agents.allow
    kept = next(ln for ln in out.splitlines() if "'*.cdn.test'" in ln)
    assert "6 names, 6 queries" in kept
    assert "kept from config" in kept
    raw = yaml.safe_load(out)
    assert raw["namespaces"]["agents"]["clients"] == ["127.0.0.1/32"]


def test_propose_from_redis_reads_every_replicas_learned_names(captures: dict[str, object], redis_server: str, tmp_path: Path) -> None:
    from resolver.offline.replay import replay, replay_config

    redis_server.flushall()  # type: ignore[attr-defined]
    client = redis.Redis.from_url(redis_server)
    store = RedisLearnStore()
    books: list[LearnBook] = []
    # Two "replicas" learn the mixed capture; each pushes its deltas twice (idempotent).
    for _ in range(2):
        replay([str(captures["mixed"])], replay_config(None), ports=[int(str(captures["port"]))],
               on_engine=lambda engine: books.append(engine.learned))
        assert store.push(client, books[-1]) > 0
        assert store.push(client, books[-1]) == 0
    count = client.hget("dnsgate:learn:{default}:count", "www.allowed.test 1")
    assert count is not None
    assert int(count) == 2 * books[0].records[("default", name_from_text("www.allowed.test"), 1)].count

    out = dnsgate("propose", "--from-redis", redis_server, "--collapse", "6")
    path = tmp_path / "redis.yaml"
    path.write_text(out.stdout)
    dnsgate("check-config", str(path))
    allow = set(config_mod.load(path).namespaces["default"].allow)
    assert {"www.allowed.test", "*.cdn.test", "api.allowed.test"} <= allow
    assert not any("exfil.test" in n or "cluster.local" in n for n in allow), allow


def test_search_expansion_rule() -> None:
    w = name_from_text
    known = {w("api.github.com"), w("python.org")}
    cluster = [w("cluster.local")]
    assert search_expansion(w("api.github.com.agents.svc.cluster.local"), {3}, known, cluster)
    assert search_expansion(w("python.org.corp.example"), {3}, known, cluster)
    assert not search_expansion(w("python.org.corp.example"), {0}, known, cluster)
    assert not search_expansion(w("typo.example"), {3}, known, cluster)
    # Stems are cut at label boundaries: "python.org" as ONE label is not the name python.org.
    assert not search_expansion(w("python\\.org.corp.example"), {3}, known, [])
    assert not search_expansion(w("x.local\\.cluster"), {3}, set(), cluster)


def test_render_without_config_loads_and_collapses() -> None:
    book = LearnBook()
    for i in range(7):
        book.merge("default", name_from_text(f"h{i}.example.org"), 1, Seen(2, 1_800_000_000.0 + i, 1_800_000_100.0))
    book.merge("default", name_from_text("example.org"), 1, Seen(1, 1_800_000_000.0, 1_800_000_000.0))
    book.merge("default", name_from_text("o'brien.example.net"), 1, Seen(1, 1_800_000_000.0, 1_800_000_000.0))
    cfg = config_mod.learn_all()
    proposal = from_book(book, {}, cfg, collapse=5)
    from resolver.offline.propose import default_document

    text = render(proposal, default_document())
    loaded = config_mod.load("proposed.yaml", text=text)
    assert set(loaded.namespaces["default"].allow) == {"example.org", "*.example.org"}
    # A quote in a label is no hostname: left to a person, quoted the YAML way in the comment.
    assert "#   - 'o''brien.example.net'" in text
    assert "octets outside letters, digits and '-'" in text
    assert "7 names, 14 queries" in text
