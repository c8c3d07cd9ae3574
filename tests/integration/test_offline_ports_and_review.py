"""replay and propose explain themselves: DNS on other ports, names left to a person, unknown_clients.

The captures are written by the test with dpkt (Ethernet/IPv4/UDP frames
around real DNS messages built by dnspython), so each case holds exactly the
traffic it is about: the README's port-5353 setup, and a tunnel whose random
names were all answered NXDOMAIN.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import dns.message
import dns.rcode
import dns.rrset
import dpkt
import pytest

from resolver import config as config_mod
from tests.support.frames import udp_frame

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CLIENT, SERVER = "10.0.0.2", "10.0.0.1"
START = 1_800_000_000.0


def write_capture(path: Path, exchanges: list[tuple[str, int]], port: int, noise: bool = True) -> None:
    """One query and its answer per (name, rcode), to ``port``; plus non-DNS UDP and mDNS that must be ignored."""
    with path.open("wb") as fh:
        writer = dpkt.pcap.Writer(fh)
        ts = START
        for i, (name, rcode) in enumerate(exchanges):
            query = dns.message.make_query(name, "A")
            query.id = i
            reply = dns.message.make_response(query)
            reply.set_rcode(rcode)
            if rcode == dns.rcode.NOERROR:
                reply.answer.append(dns.rrset.from_text(name + ".", 60, "IN", "A", "192.0.2.1"))
            writer.writepkt(udp_frame(CLIENT, 40000 + i, SERVER, port, query.to_wire()), ts)
            writer.writepkt(udp_frame(SERVER, port, CLIENT, 40000 + i, reply.to_wire()), ts + 0.01)
            ts += 1.0
        if noise:
            writer.writepkt(udp_frame(CLIENT, 443, SERVER, 4433, b"\x00" * 40), ts)  # QUIC-ish, not DNS
            mdns = dns.message.make_query("printer.local", "A").to_wire()
            writer.writepkt(udp_frame(CLIENT, 5353, "224.0.0.251", 5353, mdns), ts)


def dnsgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "resolver.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


WORKLOAD = [("www.example.com", 0), ("api.example.com", 0), ("python.org", 0)] * 2


def test_replay_names_the_port_it_did_not_read(tmp_path: Path) -> None:
    capture = tmp_path / "on-5353.pcap"
    write_capture(capture, WORKLOAD, 5353)
    missed = dnsgate("replay", str(capture), "--format", "table")
    assert missed.returncode == 1
    assert ("dnsgate replay: DNS also seen on UDP port(s) 5353 (12 messages), not replayed: "
            "add --port 5353 (or --port any to find DNS by content)") in missed.stderr
    assert "dnsgate replay: no DNS queries found on port 53" in missed.stderr
    for port in ("5353", "any"):
        found = dnsgate("replay", str(capture), "--format", "table", "--port", port)
        assert found.returncode == 0, found.stderr
        assert found.stdout.startswith("replayed 6 queries (6 responses")
        assert "not replayed" not in found.stderr  # mDNS to 224.0.0.251 is neither replayed nor counted


def test_propose_names_the_port_too(tmp_path: Path) -> None:
    capture = tmp_path / "on-5353.pcap"
    write_capture(capture, WORKLOAD, 5353)
    missed = dnsgate("propose", str(capture))
    assert missed.returncode == 1
    assert "add --port 5353" in missed.stderr
    found = dnsgate("propose", str(capture), "--port", "5353")
    assert found.returncode == 0
    assert "'www.example.com'" in found.stdout


def test_bad_port_value(tmp_path: Path) -> None:
    capture = tmp_path / "c.pcap"
    write_capture(capture, WORKLOAD, 53)
    out = dnsgate("replay", str(capture), "--port", "dns")
    assert out.returncode == 2
    assert "--port takes a port number (1-65535) or 'any'" in out.stderr


def test_propose_never_allows_random_nxdomain_names(tmp_path: Path) -> None:
    rng = random.Random(7)
    randoms = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz234567") for _ in range(26)) + ".bad.net"
               for _ in range(6)]
    words = [f"{w}.good.net" for w in ("www", "api", "cdn", "static", "docs", "mail")]
    exchanges = [(n, dns.rcode.NXDOMAIN) for n in randoms] + [(n, dns.rcode.NOERROR) for n in words]
    capture = tmp_path / "mixed.pcap"
    write_capture(capture, exchanges, 53, noise=False)
    out = dnsgate("propose", str(capture), "--collapse", "5")
    assert out.returncode == 0, out.stderr
    allow_block, _, review = out.stdout.partition("# not proposed")
    path = tmp_path / "proposed.yaml"
    path.write_text(out.stdout)
    allow = set(config_mod.load(path).namespaces["default"].allow)
    assert allow == {"*.good.net"}  # six ordinary names do collapse
    assert "bad.net" not in allow_block.split("namespaces:")[1]
    for name in randoms:
        line = next(ln for ln in review.splitlines() if f"'{name}'" in ln)
        assert line.startswith("    #   - ")
        assert "mostly NXDOMAIN (1 of 1 query)" in line
    # unknown_clients is explained where it is written.
    head = out.stdout.split("\nunknown_clients: default\n")[0]
    assert "# unknown_clients: default: without --config the capture was replayed with every client" in head
    assert "set unknown_clients: refuse" in head


def test_propose_leaves_random_looking_names_to_a_person(tmp_path: Path) -> None:
    rng = random.Random(9)
    encoded = [f"{rng.getrandbits(128):032x}{rng.getrandbits(40):010x}.files.example" for _ in range(3)]
    exchanges = [(n, dns.rcode.NOERROR) for n in encoded] + [("www.files.example", dns.rcode.NOERROR)]
    capture = tmp_path / "hex.pcap"
    write_capture(capture, exchanges, 53, noise=False)
    out = dnsgate("propose", str(capture), "--collapse", "2")
    allow_block, _, review = out.stdout.partition("# not proposed")
    assert "'www.files.example'" in allow_block
    assert "*.files.example" not in allow_block
    for name in encoded:
        assert name not in allow_block
        line = next(ln for ln in review.splitlines() if f"'{name}'" in ln)
        assert "random-looking label (42 octets" in line


def test_diff_reads_the_same_port_option(tmp_path: Path) -> None:
    capture = tmp_path / "on-5353.pcap"
    write_capture(capture, WORKLOAD, 5353)
    declared = tmp_path / "hosts.txt"
    declared.write_text("www.example.com\napi.example.com\n")
    out = dnsgate("diff", "--declared", str(declared), "--port", "5353", "--", str(capture))
    assert out.returncode == 1, out.stderr  # python.org was seen and not declared
    assert "python.org" in out.stdout
    assert "www.example.com" not in out.stdout.split("unused")[0]
    assert dnsgate("diff", "--declared", str(declared), "--port", "x", "--", str(capture)).returncode == 2
