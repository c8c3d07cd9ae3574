"""`dnsgate propose` and `replay` on names that look ordinary and are not one owner's.

- a base32 channel under a delegated reverse zone (``<payload>.<n>.<a /48>.ip6.arpa``):
  alerted like one under any domain, charged to the /48, never allowlisted,
  while well-formed reverse lookups stay unscored and are proposed one by one;
- names under ``amazonaws.com`` and ``storage.googleapis.com``: proposed one
  by one, never as a wildcard that takes in other tenants' buckets;
- ``--from-redis`` on what a live learning namespace with detection
  ``enforce`` leaves: the domain it quarantined is not proposed.

The captures are built here with dnspython (the messages) and dpkt
(Ethernet/IPv4/UDP around them), replayed through the same pipeline as the
live server.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import dns.message
import dpkt
import pytest
import redis
import yaml

from heuristics.state import RedisState
from resolver import config as config_mod
from resolver.offline.replay import replay
from resolver.pipeline.learn import LearnBook, RedisLearnStore
from tests.support.frames import udp_frame

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CLIENT, SERVER = "10.0.0.2", "10.0.0.1"
START = 1_800_000_000.0
ZONE48 = "b.0.f.1.0.7.4.0.1.0.0.2.ip6.arpa"  # 2001:470:1f0b::/48, a tunnel broker's kind of /48
BASE32 = "abcdefghijklmnopqrstuvwxyz234567"


def write_capture(path: Path, asked: list[tuple[str, str]], step: float = 1.0, start: float = START) -> None:
    """One query per (name, type), each answered NOERROR with no records (what the zone's owner says)."""
    with path.open("wb") as fh:
        writer = dpkt.pcap.Writer(fh)
        for i, (name, qtype) in enumerate(asked):
            query = dns.message.make_query(name, qtype)
            query.id = i & 0xFFFF
            reply = dns.message.make_response(query)
            sport = 20000 + i % 30000
            writer.writepkt(udp_frame(CLIENT, sport, SERVER, 53, query.to_wire()), start + i * step)
            writer.writepkt(udp_frame(SERVER, 53, CLIENT, sport, reply.to_wire()), start + i * step + 0.01)


def dnsgate(*args: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([sys.executable, "-m", "resolver.cli", *args], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    return out


def allow_of(text: str, tmp_path: Path, namespace: str = "default") -> tuple[str, ...]:
    path = tmp_path / "proposed.yaml"
    path.write_text(text)
    dnsgate("check-config", str(path))
    return config_mod.load(path).namespaces[namespace].allow


def not_proposed(text: str) -> dict[str, str]:
    """entry -> its comment, for the lines under "not proposed"."""
    out = {}
    for line in text.splitlines():
        if line.startswith("    #   - "):
            entry, _, comment = line.split("#   - ", 1)[1].partition("  # ")
            out[yaml.safe_load(entry)] = comment
    return out


def reverse_channel(n: int = 300) -> list[tuple[str, str]]:
    rng = random.Random(1)
    return [("".join(rng.choice(BASE32) for _ in range(50)) + f".{i}.{ZONE48}", "PTR") for i in range(n)]


def reverse_lookups() -> list[tuple[str, str]]:
    """Well-formed PTR lookups: six addresses of one /8, and one IPv6 address."""
    v6 = ".".join("0123456789abcdef"[i % 16] for i in range(20)) + "." + ZONE48
    return [(f"{i}.0.0.10.in-addr.arpa", "PTR") for i in range(1, 7)] + [(v6, "PTR")]


def test_a_channel_under_a_delegated_reverse_zone_is_alerted_and_never_allowlisted(tmp_path: Path) -> None:
    capture = tmp_path / "reverse.pcap"
    write_capture(capture, reverse_lookups() + reverse_channel(), step=0.5)

    replayed = dnsgate("replay", str(capture), "--format", "jsonl")
    alerts = [json.loads(line) for line in replayed.stdout.splitlines()]
    tunnel = [a for a in alerts if a["kind"] == "tunnel"]
    assert tunnel, replayed.stderr
    assert {a["domain"] for a in tunnel} == {ZONE48}  # one pair: the /48, not each name, not 2.ip6.arpa
    assert not any(a["qname"].endswith(".0.0.10.in-addr.arpa") for a in alerts)

    out = dnsgate("propose", str(capture)).stdout
    allow = allow_of(out, tmp_path)
    assert not any(entry.startswith("*.") for entry in allow), allow  # never a wildcard under arpa
    assert not any(ZONE48 in entry and len(entry) > 64 for entry in allow), allow  # no payload name
    # The well-formed lookups are proposed one by one; the channel is listed as what it is.
    assert {f"{i}.0.0.10.in-addr.arpa" for i in range(1, 7)} <= set(allow)
    held = not_proposed(out)
    assert "flagged by the detector as a tunnel" in held[f"*.{ZONE48}"]
    assert "under arpa" in held["*.0.0.10.in-addr.arpa"]  # the /24 the six share


def test_names_under_a_shared_cloud_domain_are_never_collapsed_into_a_wildcard(tmp_path: Path) -> None:
    aws = ["sts", "iam", "route53", "waf", "budgets"]
    gcs = ["mybucket", "a1", "a2", "a3", "a4"]
    own = ["n1", "n2", "n3", "n4", "n5"]
    capture = tmp_path / "cloud.pcap"
    write_capture(capture, [(f"{n}.amazonaws.com", "A") for n in aws]
                  + [(f"{n}.storage.googleapis.com", "A") for n in gcs]
                  + [(f"{n}.cdn.example.com", "A") for n in own])
    out = dnsgate("propose", str(capture), "--collapse", "5").stdout
    allow = set(allow_of(out, tmp_path))
    assert "*.amazonaws.com" not in allow
    assert "*.storage.googleapis.com" not in allow
    assert {f"{n}.amazonaws.com" for n in aws} | {f"{n}.storage.googleapis.com" for n in gcs} <= allow
    assert "*.example.com" in allow  # one owner's domain still collapses as --collapse says
    held = not_proposed(out)
    assert "spans the public suffix" in held["*.amazonaws.com"]
    assert "googleapis.com" in held["*.storage.googleapis.com"]
    assert "5 names, 5 queries" in held["*.amazonaws.com"]


# --- --from-redis ----------------------------------------------------------------------

syllables = ["ka", "lo", "mi", "ne", "ru", "ta", "zo", "pe", "si", "du", "ba", "fe", "gi", "ho", "ju", "vy"]
WORDS = ["".join(t) for t in itertools.product(syllables, repeat=3)]


def word_channel(domain: str, n: int) -> list[tuple[str, str]]:
    """A channel that spells its payload in pronounceable words: no label looks random."""
    rng = random.Random(3)
    return [("-".join(rng.choice(WORDS) for _ in range(5)) + "." + "-".join(rng.choice(WORDS) for _ in range(3))
             + f".{domain}", "A") for _ in range(n)]


def learn_config(tmp_path: Path, detection: str) -> config_mod.Config:
    path = tmp_path / f"learn-{detection}.yaml"
    path.write_text(f"upstreams: [{{address: 127.0.0.1, port: 9}}]\nunknown_clients: default\n"
                    f"detection: {{mode: {detection}}}\nnamespaces:\n  default: {{mode: learn}}\n")
    return config_mod.load(path)


def learned(capture: Path, config: config_mod.Config) -> LearnBook:
    books: list[LearnBook] = []
    replay([str(capture)], config, on_engine=lambda engine: books.append(engine.learned))
    return books[0]


def test_from_redis_leaves_out_the_domain_a_live_learning_namespace_quarantined(
    redis_server: str, tmp_path: Path,
) -> None:
    """Detection enforce in a learning namespace: the quarantined queries are never
    recorded, so the names learned before the flag are all that reach Redis, and
    propose's own detector does not flag them again."""
    redis_server.flushall()  # type: ignore[attr-defined]
    capture = tmp_path / "words.pcap"
    write_capture(capture, word_channel("wordtun.net", 120), step=2.0)
    report = replay([str(capture)], learn_config(tmp_path, "enforce"))
    assert report.namespaces["default"].flagged  # the live detector did flag it
    client = redis.Redis.from_url(redis_server)
    RedisLearnStore().push(client, learned(capture, learn_config(tmp_path, "enforce")))

    out = dnsgate("propose", "--from-redis", redis_server, "--collapse", "5").stdout
    allow = allow_of(out, tmp_path)
    assert not any("wordtun.net" in entry for entry in allow), allow
    assert "flagged by the detector as a tunnel" in not_proposed(out)["*.wordtun.net"]


def test_from_redis_leaves_out_a_domain_the_shared_state_holds_quarantined(
    redis_server: str, tmp_path: Path,
) -> None:
    """The quarantine another replica set (``dnsgate:quarantines``) is honoured, even
    when no learning namespace flagged the domain itself."""
    redis_server.flushall()  # type: ignore[attr-defined]
    capture = tmp_path / "few.pcap"
    write_capture(capture, word_channel("quiet.example.net", 8), step=30.0)
    client = redis.Redis.from_url(redis_server)
    RedisLearnStore().push(client, learned(capture, learn_config(tmp_path, "observe")))
    before = dnsgate("propose", "--from-redis", redis_server, "--collapse", "5").stdout
    assert "*.example.net" in allow_of(before, tmp_path)  # nothing against it but the quarantine

    until = time.time() + 3600

    async def quarantine() -> None:
        state = RedisState(redis_server)  # what a replica with detection enforce writes
        await state.start()
        state.set_quarantine("default", "example.net", until)
        assert await state.flush()
        await state.close()

    asyncio.run(quarantine())
    out = dnsgate("propose", "--from-redis", redis_server, "--collapse", "5").stdout
    allow = allow_of(out, tmp_path)
    assert not any("example.net" in entry for entry in allow), allow
    assert "quarantined by the live detector" in not_proposed(out)["*.example.net"]
