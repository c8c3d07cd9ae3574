"""The Redis-backed state against a real Redis Cluster: three ``redis-server --cluster-enabled yes``
nodes on loopback, joined by ``redis-cli --cluster create``. The hash-tagged keys work unchanged:
every multi-key command of one (namespace, domain) pair lands in one slot.
"""

from __future__ import annotations

import base64
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator

import dns.name
import pytest
import redis
from redis.cluster import RedisCluster

from heuristics import Detector, DetectorSettings
from heuristics.state import RedisState
from tests.support.harness import free_port

pytestmark = pytest.mark.integration


def wire(text: str) -> bytes:
    return dns.name.from_text(text).to_wire().lower()


def cluster_ok(port: int) -> bool:
    info = redis.Redis(port=port, decode_responses=True).cluster("info")
    return bool(info.get("cluster_state") == "ok")


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[str]:
    """Three master nodes, no replicas; yields a URL naming one of them."""
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server is needed (Debian package redis-server)"
    work = tempfile.mkdtemp(prefix="dnsgate-redis-cluster-")
    ports = [free_port() for _ in range(3)]
    buses = [free_port() for _ in range(3)]  # cluster bus ports, chosen too (the default port+10000 may not exist)
    procs = []
    try:
        for port, bus in zip(ports, buses, strict=True):
            procs.append(subprocess.Popen(
                [binary, "--bind", "127.0.0.1", "--port", str(port), "--cluster-enabled", "yes",
                 "--cluster-port", str(bus),
                 "--cluster-config-file", f"{work}/nodes-{port}.conf", "--save", "", "--appendonly", "no",
                 "--dir", work],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
        for port in ports:
            deadline = time.monotonic() + 10
            while True:
                try:
                    redis.Redis(port=port, socket_timeout=0.5).ping()
                    break
                except redis.ConnectionError:
                    assert time.monotonic() < deadline, f"node {port} not up"
                    time.sleep(0.02)  # poll interval
        created = subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert created.returncode == 0, created.stdout + created.stderr
        deadline = time.monotonic() + 20
        while not all(cluster_ok(p) for p in ports):
            assert time.monotonic() < deadline, "cluster not ok"
            time.sleep(0.05)  # poll interval
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


async def test_shared_state_works_on_a_redis_cluster(redis_cluster: str) -> None:
    settings = DetectorSettings()
    a = RedisState(redis_cluster, cluster=True, flush_seconds=3600, hot_flush_seconds=3600)
    b = RedisState(redis_cluster, cluster=True, flush_seconds=3600, hot_flush_seconds=3600)
    await a.start()
    await b.start()
    try:
        da, db = Detector(a), Detector(b)
        rng = random.Random(4)
        verdicts = 0
        # Queries alternate between the two replicas; domains spread over many slots.
        for i in range(120):
            detector = da if i % 2 else db
            chunk = base64.b32encode(rng.randbytes(30)).decode().rstrip("=").lower()
            domain = f"tunnel{i % 6}.example"
            if detector.observe("agents", "10.244.0.9", wire(f"{chunk}.t.{domain}"), 16, 1000.0 + i, settings):
                verdicts += 1
            if i % 10 == 9:
                assert await a.flush(merge=True)
                assert await b.flush(merge=True)
        assert verdicts > 0
        assert a.errors == 0
        assert b.errors == 0
        da.quarantine("agents", "tunnel3.example", until=10_000.0)
        assert await a.flush(merge=True)
        assert await b.flush(merge=True)
        assert db.quarantined("agents", "tunnel3.example", 2000.0)
    finally:
        await a.close()
        await b.close()
    cluster = RedisCluster.from_url(redis_cluster)
    try:
        keys = [k.decode() for k in cluster.scan_iter("dnsgate:{agents|tunnel*")]
        assert keys
        # Every key of a pair shares its hash tag, so its slot; the pairs spread over the nodes.
        slots: dict[str, set[int]] = {}
        for key in keys:
            tag = key[key.index("{") + 1 : key.index("}")]
            slots.setdefault(tag, set()).add(cluster.keyslot(key))
        assert all(len(s) == 1 for s in slots.values())
        nodes = {cluster.get_node_from_key(key).name for key in keys}
        assert len(nodes) >= 2
    finally:
        cluster.close()
