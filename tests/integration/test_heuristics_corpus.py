"""End to end: real tunnel captures and synthetic channels are detected within
~4 KB of payload; a mixed benign day flags no registrable domain."""

from __future__ import annotations

import base64
import glob
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dpkt
import pytest

from heuristics import Detector, DetectorSettings, Verdict
from heuristics.state import MemoryState
from tests.benign_corpus import benign_day, client_namespace, rcode_for, wire

CORPUS = str(Path(__file__).resolve().parents[1] / "data" / "corpus")
PAYLOAD_LIMIT = 4096  # bytes of subdomain text before the first alert
TUNNEL_DOMAINS = {
    "dns2tcp_txt_dev.pcap": "devlab-tunnel.net",
    "iodine_dev.pcap": "devlab-iodine.net",
    "dnscat2_dev.pcap": "devlab-dnscat.org",
}


@dataclass
class Packet:
    ts: float
    client: str
    qname: bytes  # lowercased wire name
    is_query: bool
    qtype: int
    rcode: int


def _question(payload: bytes) -> tuple[bytes, int]:
    i = 12
    while payload[i]:
        i += 1 + payload[i]
    return payload[12 : i + 1].lower(), int.from_bytes(payload[i + 1 : i + 3], "big")


def read_pcap(path: str) -> Iterator[Packet]:
    """UDP port 53 queries and responses from an Ethernet or loopback capture."""
    with open(path, "rb") as handle:
        reader = dpkt.pcap.Reader(handle)
        link = reader.datalink()
        for ts, buf in reader:
            if link == dpkt.pcap.DLT_EN10MB:
                ip = dpkt.ethernet.Ethernet(buf).data
            elif link in (dpkt.pcap.DLT_NULL, dpkt.pcap.DLT_LOOP):
                ip = dpkt.loopback.Loopback(buf).data
            else:
                ip = dpkt.ip.IP(buf)
            udp = getattr(ip, "data", None)
            if not isinstance(udp, dpkt.udp.UDP) or 53 not in (udp.sport, udp.dport):
                continue
            payload = bytes(udp.data)
            if len(payload) < 17:
                continue
            qname, qtype = _question(payload)
            is_query = udp.dport == 53 and not payload[2] & 0x80
            peer = ip.src if is_query else ip.dst
            client = ".".join(str(b) for b in peer) if len(peer) == 4 else peer.hex()
            yield Packet(float(ts), client, qname, is_query, qtype, payload[3] & 0x0F)


@dataclass
class Detection:
    queries: int
    payload: int
    verdict: Verdict | None


def run_stream(
    packets: Iterator[Packet], domain: str, settings: DetectorSettings | None = None
) -> Detection:
    """Feed packets; return when ``domain`` is first alerted (or the end)."""
    settings = settings or DetectorSettings()
    detector = Detector(MemoryState())
    queries = payload = 0
    for pkt in packets:
        if not pkt.is_query:
            detector.observe_response("default", pkt.client, pkt.qname, pkt.rcode, pkt.ts, settings)
            continue
        feats = detector.features.get(pkt.qname)
        if feats.domain == domain:
            queries += 1
            payload += len(feats.subdomain)
        verdict = detector.observe("default", pkt.client, pkt.qname, pkt.qtype, pkt.ts, settings)
        if verdict is not None and verdict.alert and verdict.domain == domain:
            return Detection(queries, payload, verdict)
    return Detection(queries, payload, None)


@pytest.mark.parametrize("capture", sorted(TUNNEL_DOMAINS))
def test_real_tunnel_capture_detected_within_budget(capture: str) -> None:
    path = os.path.join(CORPUS, capture)
    found = run_stream(read_pcap(path), TUNNEL_DOMAINS[capture])
    assert found.verdict is not None, f"{capture}: not detected after {found.queries} queries"
    assert found.payload <= PAYLOAD_LIMIT
    assert found.verdict.severity in ("warning", "high", "critical")
    assert found.verdict.evidence["queries"]


def test_every_shared_capture_has_a_known_tunnel_domain() -> None:
    # A new capture dropped into the corpus must be added above, not silently ignored.
    assert {os.path.basename(p) for p in glob.glob(os.path.join(CORPUS, "*.pcap"))} <= set(
        TUNNEL_DOMAINS
    )


# --- synthetic channels -----------------------------------------------------------

T0 = 1_795_400_000.0


def _q(ts: float, name: str, qtype: int = 1, client: str = "10.9.0.5") -> Packet:
    return Packet(ts, client, wire(name), True, qtype, 0)


def low_and_slow_base32(rng: random.Random) -> Iterator[Packet]:
    """DNSExfiltrator-style: ``<n>.<base32 chunk>.domain``, one query a minute for 24 h."""
    for n in range(24 * 60):
        chunk = base64.b32encode(rng.randbytes(20)).decode().rstrip("=").lower()
        yield _q(T0 + 60 * n, f"{n}.{chunk}.x.slow-exfil.com")


def hex16_channel(rng: random.Random) -> Iterator[Packet]:
    """One 16-char hex label per query (8 payload bytes), one query every 2 s."""
    for n in range(3000):
        yield _q(T0 + 2 * n, f"{rng.randbytes(8).hex()}.h.hexchan.net")


WORDLIST = [
    "apple", "river", "stone", "cloud", "tiger", "maple", "ocean", "piano", "lemon", "eagle",
    "amber", "cedar", "delta", "ember", "fable", "grape", "harbor", "ivory", "jelly", "kiwi",
    "lotus", "mango", "noble", "olive", "pearl", "quartz", "raven", "sable", "tulip", "umber",
    "velvet", "willow",
]  # 32 words: 5 bits each


def word_channel(rng: random.Random) -> Iterator[Packet]:
    """Dictionary-word encoding: 4 words (20 bits) per name, one query every 5 s."""
    for n in range(20000):
        words = "-".join(rng.choice(WORDLIST) for _ in range(4))
        yield _q(T0 + 5 * n, f"{words}.w.wordy-cdn.com")


def encoded_payload_bits(packets: int, bits_per_query: int) -> int:
    return packets * bits_per_query // 8


def test_low_and_slow_base32_detected_within_a_day() -> None:
    found = run_stream(low_and_slow_base32(random.Random(1)), "slow-exfil.com")
    assert found.verdict is not None
    assert found.queries * 20 <= PAYLOAD_LIMIT  # 20 payload bytes per query
    assert "info_budget" in found.verdict.reasons
    assert found.verdict.evidence["window"] == "long"


def test_hex16_labels_detected() -> None:
    found = run_stream(hex16_channel(random.Random(2)), "hexchan.net")
    assert found.verdict is not None
    assert found.queries * 8 <= PAYLOAD_LIMIT


def test_dictionary_word_encoding_detected_by_information_budget() -> None:
    found = run_stream(word_channel(random.Random(3)), "wordy-cdn.com")
    assert found.verdict is not None
    assert encoded_payload_bits(found.queries, 20) <= PAYLOAD_LIMIT
    assert "info_budget" in found.verdict.reasons
    assert "entropy" not in found.verdict.reasons  # words do not look random


# --- benign -------------------------------------------------------------------------


def test_benign_day_flags_no_domain() -> None:
    settings = DetectorSettings()
    detector = Detector(MemoryState())
    flagged: dict[tuple[str, str], Verdict] = {}
    day = benign_day(seed=11, queries=200_000)
    for ts, client, qname, qtype in day:
        namespace = client_namespace(client)
        verdict = detector.observe(namespace, client, qname, qtype, ts, settings)
        detector.observe_response(namespace, client, qname, rcode_for(qname), ts + 0.005, settings)
        if verdict is not None:
            flagged.setdefault((namespace, verdict.domain), verdict)
    assert detector.observed == len(day)
    assert not flagged, {k: (v.reasons, v.evidence) for k, v in flagged.items()}


def test_benign_day_mixed_with_a_tunnel_flags_only_the_tunnel() -> None:
    settings = DetectorSettings()
    detector = Detector(MemoryState())
    rows = [(ts, c, q, t) for ts, c, q, t in benign_day(seed=5, queries=60_000)]
    start = rows[0][0]
    for i, pkt in enumerate(read_pcap(os.path.join(CORPUS, "dnscat2_dev.pcap"))):
        if pkt.is_query:
            rows.append((start + 3600 + i, pkt.client, pkt.qname, pkt.qtype))
    rows.sort(key=lambda row: row[0])
    flagged = set()
    for ts, client, qname, qtype in rows:
        verdict = detector.observe("default", client, qname, qtype, ts, settings)
        if verdict is not None:
            flagged.add(verdict.domain)
    assert flagged == {"devlab-dnscat.org"}


def test_detection_table(capsys: pytest.CaptureFixture[str]) -> None:
    """The measured table of docs/detection.md (run with -s to see it)."""
    cases = [(c, TUNNEL_DOMAINS[c], read_pcap(os.path.join(CORPUS, c))) for c in TUNNEL_DOMAINS]
    cases += [
        ("synthetic low-and-slow base32, 1 q/min", "slow-exfil.com",
         low_and_slow_base32(random.Random(1))),
        ("synthetic 16-char hex, 1 q/2 s", "hexchan.net", hex16_channel(random.Random(2))),
        ("synthetic 4 words/name, 1 q/5 s", "wordy-cdn.com", word_channel(random.Random(3))),
    ]
    lines = ["| tunnel | detected | queries | payload bytes | first reasons | severity |",
             "|---|---|---|---|---|---|"]
    for label, domain, stream in cases:
        found = run_stream(stream, domain)
        assert found.verdict is not None, label
        lines.append(
            f"| {label} | yes | {found.queries} | {found.payload} | "
            f"{', '.join(found.verdict.reasons)} | {found.verdict.severity} |"
        )
    with capsys.disabled():
        print("\n" + "\n".join(lines))
