"""`dnsgate propose` on names a client wrote octet by octet, and on --max-names.

The captures are built here with struct (the DNS messages, so a label can hold
any octet, a lone '*' included) and dpkt (Ethernet/IPv4/UDP around them). The
proposal is then used the way the docs say: loaded, and replayed in enforce mode
against later traffic.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import dpkt
import pytest
import yaml

from resolver import config as config_mod
from tests.support.frames import udp_frame

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CLIENT, SERVER = "10.0.0.2", "10.0.0.1"
START = 1_800_000_000.0


def query(labels: list[bytes], qid: int) -> bytes:
    name = b"".join(bytes([len(lb)]) + lb for lb in labels) + b"\x00"
    return struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + name + struct.pack(">HH", 1, 1)


def answer(question: bytes, rcode: int = 0) -> bytes:
    """The query turned into a reply with ``rcode`` (QR, RA set), no records."""
    flags = struct.unpack(">H", question[2:4])[0] | 0x8080
    return question[:2] + struct.pack(">H", (flags & ~0xF) | rcode) + question[4:]


def write_capture(path: Path, names: list[list[bytes]], answered: bool = True, start: float = START) -> None:
    """One A query per name, answered NOERROR unless ``answered`` is false."""
    with path.open("wb") as fh:
        writer = dpkt.pcap.Writer(fh)
        for i, labels in enumerate(names):
            q = query(labels, i)
            writer.writepkt(udp_frame(CLIENT, 30000 + i, SERVER, 53, q), start + i)
            if answered:
                writer.writepkt(udp_frame(SERVER, 53, CLIENT, 30000 + i, answer(q)), start + i + 0.01)


def dnsgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "resolver.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def allow_of(text: str, tmp_path: Path) -> tuple[str, ...]:
    path = tmp_path / "proposed.yaml"
    path.write_text(text)
    return config_mod.load(path).namespaces["default"].allow


def test_a_lone_star_label_never_opens_its_domain(tmp_path: Path) -> None:
    star = tmp_path / "star.pcap"
    write_capture(star, [[b"*", b"evil", b"test"]])
    out = dnsgate("propose", str(star), "--mode", "enforce")
    assert out.returncode == 0, out.stderr
    assert "'*.evil.test'" not in out.stdout
    assert allow_of(out.stdout, tmp_path) == ()
    assert "#   - '\\042.evil.test'" in out.stdout  # left to a person, written as the one name it is
    assert "a label that is a lone '*'" in out.stdout
    # The proposal in enforce mode, replayed against what the client asks later.
    later = tmp_path / "later.pcap"
    write_capture(later, [[b"exfil-data-here", b"evil", b"test"]], answered=False, start=START + 100)
    replayed = dnsgate("replay", str(later), "--config", str(tmp_path / "proposed.yaml"))
    assert replayed.returncode == 0, replayed.stderr
    alerts = [json.loads(line) for line in replayed.stdout.splitlines()]
    assert [(a["kind"], a["qname"], a["action"]) for a in alerts] == [
        ("policy", "exfil-data-here.evil.test", "blocked"),
    ]


def test_a_lone_star_label_moved_up_allows_that_name_only(tmp_path: Path) -> None:
    star = tmp_path / "star.pcap"
    write_capture(star, [[b"*", b"evil", b"test"]])
    cfg = tmp_path / "moved.yaml"
    cfg.write_text(yaml.safe_dump({
        "upstreams": "system",
        "unknown_clients": "default",
        "namespaces": {"default": {"mode": "enforce", "allow": ["\\042.evil.test"]}},
    }))
    later = tmp_path / "later.pcap"
    write_capture(later, [[b"*", b"evil", b"test"], [b"exfil-data-here", b"evil", b"test"]],
                  answered=False, start=START + 100)
    replayed = dnsgate("replay", str(later), "--config", str(cfg))
    assert replayed.returncode == 0, replayed.stderr
    alerts = [json.loads(line) for line in replayed.stdout.splitlines()]
    assert [a["qname"] for a in alerts if a["kind"] == "policy"] == ["exfil-data-here.evil.test"]


def test_lone_star_names_never_add_up_to_a_wildcard(tmp_path: Path) -> None:
    names = [[w, b"evil", b"test"] for w in (b"www", b"api", b"mail", b"cdn")]
    names += [[b"*", b"evil", b"test"], [b"x", b"*", b"evil", b"test"]]
    capture = tmp_path / "mixed.pcap"
    write_capture(capture, names)
    out = dnsgate("propose", str(capture), "--collapse", "5", "--mode", "enforce")
    assert out.returncode == 0, out.stderr
    assert set(allow_of(out.stdout, tmp_path)) == {"www.evil.test", "api.evil.test", "mail.evil.test",
                                                   "cdn.evil.test"}


def test_odd_octets_are_proposed_as_the_name_itself(tmp_path: Path) -> None:
    odd = [[b"a b", b"evil", b"test"], [b"a.b", b"evil", b"test"], [b"\x00", b"evil", b"test"],
           [b"\xc3\xa9", b"evil", b"test"], [b"WWW", b"Evil", b"TEST"], [b"x", b"y.", b"evil", b"test"],
           [b"www", b"test."]]
    capture = tmp_path / "odd.pcap"
    write_capture(capture, odd)
    out = dnsgate("propose", str(capture), "--collapse", "0")
    assert out.returncode == 0, out.stderr
    assert set(allow_of(out.stdout, tmp_path)) == {
        "a\\032b.evil.test", "a\\.b.evil.test", "\\000.evil.test", "\\195\\169.evil.test", "www.evil.test",
        "x.y\\..evil.test", "www.test\\.",  # the last label's dot is no root
    }


def test_max_names_keeps_that_many_records(tmp_path: Path) -> None:
    capture = tmp_path / "twenty.pcap"
    write_capture(capture, [[f"host{i:02d}".encode(), b"example", b"org"] for i in range(20)])
    everything = dnsgate("propose", str(capture), "--collapse", "0")
    assert len(allow_of(everything.stdout, tmp_path)) == 20
    out = dnsgate("propose", str(capture), "--collapse", "0", "--max-names", "10")
    assert out.returncode == 0, out.stderr
    assert set(allow_of(out.stdout, tmp_path)) == {f"host{i:02d}.example.org" for i in range(10, 20)}
    assert "dnsgate propose: 10 of the least recently asked records were dropped to keep 10 (--max-names)" \
        in out.stderr


@pytest.mark.parametrize("value", ["0", "-5"])
def test_max_names_below_one_is_refused(tmp_path: Path, value: str) -> None:
    capture = tmp_path / "one.pcap"
    write_capture(capture, [[b"www", b"example", b"org"]])
    out = dnsgate("propose", str(capture), f"--max-names={value}")
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr == f"dnsgate propose: --max-names takes a number of records, at least 1 (not {value})\n"


def test_a_negative_collapse_is_refused(tmp_path: Path) -> None:
    capture = tmp_path / "one.pcap"
    write_capture(capture, [[b"www", b"example", b"org"]])
    out = dnsgate("propose", str(capture), "--collapse=-1")
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr == "dnsgate propose: --collapse takes a number of names, 0 (never collapse) or more (not -1)\n"
