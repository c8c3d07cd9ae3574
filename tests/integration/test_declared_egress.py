"""Declared egress against real servers: import -> check-config -> serve, diff over a tcpdump
capture of real dig traffic, and workload quarantine on the memory and Redis backends.

Everything runs on loopback: an Unbound upstream started here serves the
declared names (static zones, so nothing recurses), dnsgate processes on free
ports, a real redis-server. Clients are distinct 127.0.0.0/8 source addresses.
Readiness and expiry are polled, never slept for.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import pytest
import redis
import yaml

from resolver import config as config_mod
from resolver.pipeline.learn import LearnBook, RedisLearnStore
from resolver.wire.message import name_from_text
from tests.support.harness import ask, ensure_packages, free_port
from tests.support.observability import metric_value, poll
from tests.support.redis_server import RedisServer
from tests.support.traffic import dig, tcpdump
from tests.support.upstream_servers import UPSTREAM_RECORDS, Dnsgate, Unbound, start_dnsgate

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "declared"
DNSGATE = [sys.executable, "-m", "resolver.cli"]
TOKEN = "declared-test-token"
DECLARED_FILES = ["istio-serviceentries.yaml", "istio-sidecar.yaml", "cilium-policies.yaml",
                  "skill-web-search.yaml", "skill-summarise.json", "sbom.cdx.json", "hosts.txt"]
RECORDS = [*UPSTREAM_RECORDS, "api.github.com. 300 IN A 192.0.2.10", "eu.inference.example.net. 300 IN A 192.0.2.11", "search.example.com. 300 IN A 192.0.2.12", "xn--bcher-kva.example. 300 IN A 192.0.2.13", "a.b.cdn.example.net. 300 IN A 192.0.2.14", "github.com. 300 IN A 192.0.2.15", "exfil.example.biz. 300 IN A 192.0.2.66", "paste.evil-c2.net. 300 IN A 192.0.2.70"]


def dnsgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DNSGATE, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Unbound]:
    ensure_packages("unbound", "dig")
    server = Unbound(free_port(), tmp_path_factory.mktemp("unbound-declared"))
    server.write_config(RECORDS)
    with (server.workdir / "unbound.conf").open("a") as conf:
        for tld in ("com", "net", "org", "biz", "edu"):  # answered here: never a recursion attempt
            conf.write(f'  local-zone: "{tld}." static\n')
    server.start()
    yield server
    server.stop()


def imported(*extra: str) -> str:
    out = dnsgate("import", *(str(DATA / f) for f in DECLARED_FILES), *extra, "--namespace", "agents",
                  "--registry-map", str(DATA / "registry-map.yaml"))
    assert out.returncode == 0, out.stderr
    return out.stdout


def served_config(fragment: str, port: int, upstream_port: int) -> str:
    """The imported fragment with a listener, the upstream and the agents' clients added."""
    assert '  "agents":\n' in fragment
    body = fragment.replace('  "agents":\n', '  "agents":\n    clients: [127.0.0.0/8]\n    mode: enforce\n')
    return (f"listen: [{{address: 127.0.0.1, port: {port}}}]\n"
            f"upstreams: [{{address: 127.0.0.1, port: {upstream_port}}}]\n"
            "unknown_clients: refuse\nalerts: [{type: jsonl, path: alerts.jsonl}]\n" + body)


def test_import_check_config_then_serve(upstream: Unbound, tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "dnsgate.yaml"
    path.write_text(served_config(imported(), port, upstream.port))
    check = dnsgate("check-config", str(path))
    assert check.returncode == 0, check.stderr
    assert ": ok (" in check.stdout, check.stderr
    gate = start_dnsgate(path.read_text(), tmp_path, port, probe="api.github.com")
    try:
        declared = {"api.github.com": "192.0.2.10", "eu.inference.example.net": "192.0.2.11",
                    "search.example.com": "192.0.2.12", "xn--bcher-kva.example": "192.0.2.13",
                    "a.b.cdn.example.net": "192.0.2.14"}
        for name, address in declared.items():
            reply = ask(port, name)
            assert reply.rcode() == dns.rcode.NOERROR, name
            assert [rr.address for rrset in reply.answer for rr in rrset] == [address], name
        for name in ("github.com", "exfil.example.biz", "models.example.net.evil.example"):
            reply = ask(port, name)
            assert reply.rcode() == dns.rcode.NXDOMAIN, name
            assert reply.flags & dns.flags.AA, name
        asked = upstream.queries()
        assert "exfil.example.biz" not in asked
        assert "github.com" not in asked
        assert "eu.inference.example.net" in asked
    finally:
        assert gate.stop() == 0


def test_diff_over_a_capture_of_real_dig_traffic(upstream: Unbound, tmp_path: Path) -> None:
    port = free_port()
    config = served_config(imported(), port, upstream.port)
    gate = start_dnsgate(config, tmp_path, port, probe="api.github.com")
    capture = tmp_path / "agents.pcap"
    try:
        with tcpdump(port, capture, sentinel_zone="s3.example.com"):
            dig(port, "api.github.com")
            dig(port, "api.github.com", "AAAA")
            dig(port, "search.example.com", "+tcp")
            dig(port, "eu.inference.example.net")
            for suffix in ("agents.svc.cluster.local", "svc.cluster.local", "cluster.local"):
                dig(port, f"api.github.com.{suffix}")  # a pod's search path: NXDOMAIN here
            dig(port, "exfil.example.biz")
            dig(port, "exfil.example.biz", "-b", "127.0.0.2")
            dig(port, "exfil.example.biz", "TXT", "-b", "127.0.0.3")
            dig(port, "github.com", "-b", "127.0.0.2")
    finally:
        assert gate.stop() == 0
    declared = [str(DATA / f) for f in DECLARED_FILES]
    out = dnsgate("diff", "--declared", *declared, str(capture), "--port", str(port), "--namespace", "agents",
                  "--registry-map", str(DATA / "registry-map.yaml"), "--format", "json")
    assert out.returncode == 1, out.stderr
    agents = json.loads(out.stdout)["agents"]
    undeclared = {u["name"]: u for u in agents["undeclared"]}
    assert set(undeclared) == {"exfil.example.biz", "github.com"}
    exfil = undeclared["exfil.example.biz"]
    assert exfil["queries"] == 3
    assert exfil["clients"] == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    assert exfil["first"] <= exfil["last"]
    assert agents["search_expansions"] == 3
    unused = {u["entry"] for u in agents["unused"]}
    assert {"uploads.github.com", "models.example.net", "time.example.org"} <= unused
    assert not unused & {"api.github.com", "search.example.com", "*.inference.example.net", "*.s3.example.com"}
    # The text form says the same; declaring the two names makes the diff pass (exit 0).
    text = dnsgate("diff", "--declared", *declared, "--namespace", "agents", "--port", str(port), "--", str(capture))
    assert text.returncode == 1
    assert "exfil.example.biz" in text.stdout
    assert "candidates for removal" in text.stdout
    extra = tmp_path / "also-declared.txt"
    extra.write_text("exfil.example.biz\ngithub.com\n")
    clean = dnsgate("diff", "--declared", *declared, str(extra), "--namespace", "agents", "--port", str(port),
                    "--", str(capture))
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "0 undeclared name(s) observed" in clean.stdout


def test_diff_from_redis(redis_server: RedisServer) -> None:
    """Names a learn-mode namespace shared through Redis (the server's own store), diffed."""
    book = LearnBook()
    for name, when, rcode in (("api.github.com", 1000.0, 0), ("exfil.example.biz", 1001.0, 0),
                              ("api.github.com.agents.svc.cluster.local", 999.0, dns.rcode.NXDOMAIN)):
        book.record("agents", name_from_text(name), 1, when)
        book.record_rcode("agents", name_from_text(name), 1, int(rcode))
    book.records[("agents", name_from_text("exfil.example.biz"), 1)].pod = "agents/runner-7d9f"
    prefix = "dnsgate:learn:declared-test"
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert RedisLearnStore(prefix).push(client, book) == 3
    finally:
        client.close()
    out = dnsgate("diff", "--declared", str(DATA / "istio-serviceentries.yaml"), "--from-redis", redis_server.url,
                  "--redis-prefix", prefix, "--format", "json")
    assert out.returncode == 1, out.stdout + out.stderr
    agents = json.loads(out.stdout)["agents"]
    assert [(u["name"], u["queries"], u["clients"]) for u in agents["undeclared"]] == [
        ("exfil.example.biz", 1, ["pod agents/runner-7d9f"])]
    assert agents["search_expansions"] == 1
    assert "api.github.com" not in {u["entry"] for u in agents["unused"]}
    # Redis unreachable: one line, exit 2.
    down = dnsgate("diff", "--declared", str(DATA / "hosts.txt"), "--from-redis", f"redis://127.0.0.1:{free_port()}/0")
    assert down.returncode == 2, down.stderr
    assert len(down.stderr.strip().splitlines()) == 1, down.stderr




def test_a_team_namespace_declaration_does_not_widen_another_namespace(upstream: Unbound, tmp_path: Path) -> None:
    """import -> check-config -> serve: the sandbox's ServiceEntry stays in sandbox (prod-agents is
    denied paste.evil-c2.net), '*.com' is not allowed anywhere; the import says both, one line each."""
    se = DATA / "review-team-namespace.yaml"  # a security review's reproduction
    out = dnsgate("import", str(se))
    assert out.returncode == 0, out.stderr
    warnings = [line for line in out.stderr.splitlines() if line.startswith("dnsgate import: warning: ")]
    assert len(warnings) == 4, out.stderr
    assert all(f"{se}: " in line for line in warnings)
    assert "Traceback" not in out.stderr
    port = free_port()
    body = out.stdout.replace('  "prod-agents":\n', '  "prod-agents":\n    clients: [127.0.0.16/28]\n    mode: enforce\n')
    body = body.replace('  "sandbox":\n', '  "sandbox":\n    clients: [127.0.0.32/28]\n    mode: enforce\n')
    config = (f"listen: [{{address: 127.0.0.1, port: {port}}}]\n"
              f"upstreams: [{{address: 127.0.0.1, port: {upstream.port}}}]\n"
              "unknown_clients: refuse\nalerts: [{type: jsonl, path: alerts.jsonl}]\n" + body)
    (tmp_path / "check.yaml").write_text(config)
    check = dnsgate("check-config", str(tmp_path / "check.yaml"))
    assert check.returncode == 0, check.stderr
    before = upstream.queries().count("paste.evil-c2.net")
    gate = start_dnsgate(config, tmp_path, port, probe="github.com")
    try:
        prod, sandbox = "127.0.0.17", "127.0.0.33"
        denied = ask(port, "paste.evil-c2.net", source=prod)
        assert denied.rcode() == dns.rcode.NXDOMAIN
        assert denied.flags & dns.flags.AA  # dnsgate's own denial, not the upstream's answer
        allowed = ask(port, "paste.evil-c2.net", source=sandbox)
        assert [rr.address for rrset in allowed.answer for rr in rrset] == ["192.0.2.70"]
        for name in ("github.com", "tunnel.ngrok-free.app", "shop.example.co.uk"):
            reply = ask(port, name, source=sandbox)
            assert reply.rcode() == dns.rcode.NXDOMAIN, name
            assert reply.flags & dns.flags.AA, name
        assert upstream.queries().count("paste.evil-c2.net") == before + 1  # the sandbox's, only
    finally:
        assert gate.stop() == 0


# -- workload quarantine ------------------------------------------------------------------


def quarantine_config(port: int, upstream_port: int, admin_port: int, state: str) -> str:
    return f"""
listen: [{{address: 127.0.0.1, port: {port}}}]
upstreams: [{{address: 127.0.0.1, port: {upstream_port}}}]
unknown_clients: refuse
alerts: [{{type: jsonl, path: alerts.jsonl}}]
admin: {{address: 127.0.0.1, port: {admin_port}}}
state: {state}
namespaces:
  agents:
    clients: [127.0.0.0/24]
    allow: [www.allowed.test, api.allowed.test, "*.wild.test"]
    on_undeclared: {{action: quarantine, duration: 10m, search: [cluster.local, corp.example]}}
  short:
    clients: [127.0.1.0/24]
    allow: [www.allowed.test]
    on_undeclared: {{action: quarantine, duration: 2s}}
"""


class Gate:
    def __init__(self, dnsgate: Dnsgate, admin_port: int) -> None:
        self.dnsgate = dnsgate
        self.port = dnsgate.port
        self.admin = f"http://127.0.0.1:{admin_port}"

    def call(self, method: str, path: str, token: str | None = TOKEN) -> tuple[int, dict[str, object]]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        request = urllib.request.Request(self.admin + path, method=method, headers=headers)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:  # noqa: S310 - loopback only
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def metric(self, name: str, **labels: str) -> float | None:
        with urllib.request.urlopen(self.admin + "/metrics", timeout=5) as resp:  # noqa: S310
            return metric_value(resp.read().decode(), name, **labels)

    def rcode(self, name: str, client: str) -> int:
        return int(ask(self.port, name, source=client).rcode())


def start_gate(tmp_path: Path, upstream: Unbound, state: str) -> Gate:
    port, admin_port = free_port(), free_port()
    tmp_path.mkdir(parents=True, exist_ok=True)
    server = start_dnsgate(quarantine_config(port, upstream.port, admin_port, state), tmp_path, port,
                           env={"DNSGATE_ADMIN_TOKEN": TOKEN})
    gate = Gate(server, admin_port)
    poll(lambda: _admin_up(gate), what="admin HTTP up")
    return gate


def _admin_up(gate: Gate) -> bool:
    try:
        return gate.call("GET", "/quarantines/clients")[0] == 200
    except OSError:
        return False


NOERROR, NXDOMAIN = dns.rcode.NOERROR, dns.rcode.NXDOMAIN


def test_quarantine_memory_backend(upstream: Unbound, tmp_path: Path) -> None:
    gate = start_gate(tmp_path, upstream, "{backend: memory}")
    try:
        worker, bystander = "127.0.0.11", "127.0.0.12"
        assert gate.rcode("www.allowed.test", worker) == NOERROR
        # Search-path expansions of allowed names are denied but never quarantine.
        for name in ("www.allowed.test.agents.svc.cluster.local", "www.allowed.test.cluster.local",
                     "api.allowed.test.corp.example"):
            assert gate.rcode(name, worker) == NXDOMAIN
        assert gate.rcode("www.allowed.test", worker) == NOERROR
        # The first undeclared name: the client, not the domain, is cut off.
        assert gate.rcode("exfil.example.biz", worker) == NXDOMAIN
        assert gate.rcode("www.allowed.test", worker) == NXDOMAIN
        assert gate.rcode("www.allowed.test", bystander) == NOERROR
        assert "exfil.example.biz" not in upstream.queries()
        alerts = poll(lambda: [a for a in gate.dnsgate.alerts() if a["kind"] == "undeclared"], what="alert")
        assert [(a["severity"], a["action"], a["qname"], a["client"]) for a in alerts] == [
            ("critical", "quarantined", "exfil.example.biz", worker)]
        assert gate.metric("dnsgate_client_quarantines_active", namespace="agents") == 1.0
        assert (gate.metric("dnsgate_client_quarantine_blocks_total") or 0) >= 1.0

        # Listed and lifted through the admin API, which asks for the token.
        assert gate.call("GET", "/quarantines/clients", token=None)[0] == 401
        assert gate.call("GET", "/quarantines/clients", token="wrong")[0] == 401
        status, body = gate.call("GET", "/quarantines/clients")
        assert status == 200
        [entry] = body["quarantines"]  # type: ignore[misc]
        assert (entry["namespace"], entry["client"], entry["name"]) == ("agents", worker, "exfil.example.biz")
        assert gate.call("DELETE", f"/quarantines/clients/agents/{worker}", token=None)[0] == 401
        assert gate.call("DELETE", f"/quarantines/clients/agents/{worker}")[0] == 200
        assert gate.call("DELETE", f"/quarantines/clients/agents/{worker}")[0] == 404
        assert gate.rcode("www.allowed.test", worker) == NOERROR
        assert gate.metric("dnsgate_client_quarantines_active", namespace="agents") is None

        # Expiry: the short namespace quarantines for 2 s; polled, not slept.
        short = "127.0.1.5"
        assert gate.rcode("exfil.example.biz", short) == NXDOMAIN
        assert gate.rcode("www.allowed.test", short) == NXDOMAIN
        poll(lambda: gate.rcode("www.allowed.test", short) == NOERROR, timeout=10, what="quarantine expiry")
    finally:
        assert gate.dnsgate.stop() == 0


def test_quarantine_shared_through_redis(upstream: Unbound, redis_server: RedisServer, tmp_path: Path) -> None:
    state = f"{{backend: redis, url: '{redis_server.url}'}}"
    one = start_gate(tmp_path / "one", upstream, state)
    two = start_gate(tmp_path / "two", upstream, state)
    try:
        worker = "127.0.0.21"
        assert two.rcode("www.allowed.test", worker) == NOERROR
        assert one.rcode("www.allowed.test.agents.svc.cluster.local", worker) == NXDOMAIN  # search path
        assert one.rcode("exfil.example.biz", worker) == NXDOMAIN  # quarantined on replica one ...
        poll(lambda: two.rcode("www.allowed.test", worker) == NXDOMAIN, what="quarantine shared to two")
        status, body = two.call("GET", "/quarantines/clients")
        assert status == 200
        assert [(q["client"], q["name"]) for q in body["quarantines"]] == [  # type: ignore[union-attr]
            (worker, "exfil.example.biz")]
        poll(lambda: two.metric("dnsgate_client_quarantines_active", namespace="agents") == 1.0, what="metric")
        # ... lifted on replica two, released on one.
        assert two.call("DELETE", f"/quarantines/clients/agents/{worker}")[0] == 200
        poll(lambda: one.rcode("www.allowed.test", worker) == NOERROR, what="lift shared to one")
        # Expiry holds on every replica.
        short = "127.0.1.21"
        assert two.rcode("exfil.example.biz", short) == NXDOMAIN
        poll(lambda: one.rcode("www.allowed.test", short) == NXDOMAIN, what="short quarantine shared")
        poll(lambda: one.rcode("www.allowed.test", short) == NOERROR, timeout=10, what="expiry on one")
        assert two.rcode("www.allowed.test", short) == NOERROR
    finally:
        assert one.dnsgate.stop() == 0
        assert two.dnsgate.stop() == 0


def test_imported_fragment_round_trips_through_yaml(tmp_path: Path) -> None:
    """What import prints is YAML whose allow lists are exactly what the config loader sees."""
    fragment = imported()
    raw = yaml.safe_load(fragment)["namespaces"]
    path = tmp_path / "frag.yaml"
    path.write_text("upstreams: [{address: 127.0.0.1}]\n" + fragment)
    loaded = config_mod.load(path).namespaces
    assert {k: tuple(v["allow"]) for k, v in raw.items()} == {k: ns.allow for k, ns in loaded.items()}
