"""Learn mode on the Redis backend: the live server shares learned names; propose reads them back."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import dns.message
import dns.query
import redis
import yaml

from tests.support.upstream_servers import ROOT, Unbound, free_port, start_dnsgate


def test_learned_names_reach_redis_and_propose(unbound_upstream: Unbound, redis_server: str, tmp_path: Path) -> None:
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    port = free_port()
    config = f"""
listen: [{{address: 127.0.0.1, port: {port}}}]
upstreams: [{{address: 127.0.0.1, port: {unbound_upstream.port}}}]
state: {{backend: redis, url: "{redis_server}"}}
namespaces:
  builders:
    clients: [127.0.0.1/32]
    mode: learn
"""
    server = start_dnsgate(config, tmp_path, port)
    try:
        for name in ("www.allowed.test", "api.allowed.test", "denied.test"):
            for _ in range(2):
                dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=3)
        deadline = time.monotonic() + 15
        fields: dict[bytes, bytes] = {}
        while time.monotonic() < deadline:
            fields = client.hgetall("dnsgate:learn:{builders}:count")
            if len(fields) >= 3:
                break
            time.sleep(0.1)
        assert {k.decode() for k in fields} >= {"www.allowed.test 1", "api.allowed.test 1", "denied.test 1"}, fields
    finally:
        assert server.stop() == 0
    out = subprocess.run(
        [sys.executable, "-m", "resolver.cli", "propose", "--from-redis", redis_server],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    proposal = yaml.safe_load(out.stdout)
    allow = proposal["namespaces"]["builders"]["allow"]
    assert {"www.allowed.test", "api.allowed.test", "denied.test"} <= set(allow)
