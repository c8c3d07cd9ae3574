"""Issue 3's measurement, through ``dnsgate replay``: detection table for every tunnel capture.

Each capture goes through :func:`resolver.replay.replay` -- the same Pipeline the
live server runs -- with the replay default config (no ``--config``: every client
in namespace ``default``, mode ``learn``, detection ``observe``, default
thresholds). Nothing is re-implemented here: an ``on_query`` hook sees each query
after ``Pipeline.decide`` and a sink sees each alert, so this module only counts.

Per tunnel capture it reports:

* **detected**: a ``kind: tunnel`` alert whose ``domain`` is the tunnel's
  registrable domain (from tests/data/tunnels/MANIFEST.md and
  tests/data/corpus/README.md);
* **queries**: queries to that registrable domain up to and including the one
  that raised the first alert (retransmissions included);
* **encoded bytes**: octets of the labels left of the tunnel zone (e.g. left of
  ``t1.lab-iod1.net``; left of the registrable domain for names outside the
  zone), dots not counted, summed over the *distinct* names among those queries
  (a retransmitted name carries nothing new);
* **decoded bytes** (estimate of the payload those names can carry): per label,
  length x log2(alphabet) / 8, the alphabet read from the label as sent (case
  kept): hex 16, base32 32, lowercase alnum 36, LDH 38, mixed-case alnum 62
  (base58/base62), base64/base64url 64, any octet outside LDH 128 (iodine's
  base128); labels of digits only (sequence counters) count 0; for a channel
  whose word list is known (``synth_words``) one word = one byte. Protocol
  headers inside the labels (iodine's user/sequence bytes, dnscat2's packet
  header) are counted as payload, so this is an upper bound;
* the first alert's reasons and severity, and the capture time from the first
  query to the domain to the first alert.

Variants (``--no-variants`` to skip) are tunnels and one benign workload written
here with dpkt at run time, never sent anywhere: see ``VARIANTS``. They use
domains, label lengths, encodings and rates that none of the checked-in captures
use, to check the detector generalises; thresholds are not changed for them.

The benign corpus (tests/benign_corpus.py, seeded; 40 clients) is written out as a
pcap of queries and realistic responses and replayed the same way: every
registrable domain with a tunnel alert is listed (target: none).

Run:  .venv/bin/python -m benchmarks.detection_table [--benign-queries 200000] [--keep DIR]
Writes benchmarks/results/detection.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import math
import os
import platform
import random
import re
import socket
import string
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dpkt

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import save_results  # noqa: E402
from heuristics import registrable_domain  # noqa: E402
from resolver.offline.replay import replay, replay_config  # noqa: E402
from resolver.pipeline.alerts import Alert  # noqa: E402
from resolver.pipeline.query import Query, Reply  # noqa: E402
from tests.benign_corpus import benign_day, rcode_for  # noqa: E402

TUNNELS = ROOT / "tests" / "data" / "tunnels"
CORPUS = Path(os.environ.get("DNSGATE_SHARED_CORPUS", str(ROOT / "tests" / "data" / "corpus")))
RESULTS = ROOT / "benchmarks" / "results" / "detection.json"
PAYLOAD_LIMIT = 4096  # issue 3: "every tunnel detected, within about 4 KB of payload"
COMMAND = ".venv/bin/python -m benchmarks.detection_table"

A, NS, CNAME, SOA, PTR, MX, TXT, AAAA, SRV = 1, 2, 5, 6, 12, 15, 16, 28, 33
NOERROR, NXDOMAIN = 0, 3


# --- what each capture is -------------------------------------------------------------


@dataclass
class Case:
    name: str  # file name, or variant id
    path: Path
    zone: str | None  # the tunnel's delegated zone; None for benign workloads
    kind: str  # capture | shared | variant | benign
    description: str = ""
    words: frozenset[bytes] = frozenset()  # known word list: one word = one byte

    @property
    def domain(self) -> str | None:
        return _registrable(self.zone) if self.zone else None


def _registrable(text: str) -> str:
    wire = b"".join(bytes([len(p)]) + p.encode() for p in text.strip(".").split(".")) + b"\0"
    return registrable_domain(wire.lower())


_ROW = re.compile(r"^\|\s*`([^`]+\.pcap)`\s*\|(.*)$")


def manifest_cases(directory: Path, kind: str) -> list[Case]:
    """Every *.pcap in ``directory`` with its tunnel zone from the markdown table next to it.

    The table (MANIFEST.md or README.md) has the file in backticks in the first
    column and the tunnel domain as the last backticked cell of the row. A pcap
    missing from the table is an error: a new capture must say what it tunnels to.
    """
    table: dict[str, tuple[str, str]] = {}
    for doc in ("MANIFEST.md", "README.md"):
        path = directory / doc
        if not path.exists():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            m = _ROW.match(line)
            if not m:
                continue
            cells = [c.strip() for c in m.group(2).split("|")]
            domains = [c.strip("`") for c in cells if re.fullmatch(r"`[a-z0-9.-]+\.[a-z]+`", c)]
            if domains:
                table[m.group(1)] = (domains[-1], " ".join(c for c in cells[:2] if c).replace("\\", ""))
    cases = []
    for pcap in sorted(directory.glob("*.pcap")):
        if pcap.name not in table:
            raise SystemExit(f"{pcap}: no tunnel domain in {directory}/MANIFEST.md or README.md")
        zone, desc = table[pcap.name]
        words = frozenset()
        if "dictionary words" in desc:
            words = _channel_words()
        cases.append(Case(pcap.name, pcap, zone, kind, desc, words))
    return cases


def _channel_words() -> frozenset[bytes]:
    sys.path.insert(0, str(ROOT / "tests" / "tunnels"))
    try:
        import channels  # tests/tunnels/channels.py: the 256-word list of synth_words
    finally:
        sys.path.pop(0)
    return frozenset(w.encode() for w in channels.WORDS)


# --- payload accounting ---------------------------------------------------------------


_HEX = frozenset(b"0123456789abcdef")
_B32 = frozenset(b"abcdefghijklmnopqrstuvwxyz234567")
_B32_UPPER = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
_ALNUM_LOWER = frozenset(string.ascii_lowercase.encode() + string.digits.encode())
_ALNUM_UPPER = frozenset(string.ascii_uppercase.encode() + string.digits.encode())
_LDH_LOWER = _ALNUM_LOWER | {ord("-")}
_ALNUM = frozenset((string.ascii_letters + string.digits).encode())
_B64 = _ALNUM | frozenset(b"-_+/=")
_DIGITS = frozenset(string.digits.encode())


def label_bits(label: bytes) -> float:
    """Information a label of this alphabet can carry: length x log2(alphabet size)."""
    chars = set(label)
    if chars <= _DIGITS:
        return 0.0  # a sequence counter
    lower = set(label.lower())
    if lower <= _HEX:
        size = 16
    elif chars <= _B32 or chars <= _B32_UPPER:
        size = 32
    elif chars <= _ALNUM_LOWER or chars <= _ALNUM_UPPER:
        size = 36
    elif chars <= _LDH_LOWER:
        size = 38
    elif chars <= _ALNUM:
        size = 62
    elif chars <= _B64:
        size = 64
    else:
        size = 128
    return len(label) * math.log2(size)


def split_labels(wire_name: bytes) -> list[bytes]:
    labels, pos = [], 0
    while wire_name[pos]:
        n = wire_name[pos]
        labels.append(wire_name[pos + 1 : pos + 1 + n])
        pos += 1 + n
    return labels


@dataclass
class DomainCount:
    """Queries to one registrable domain until its first tunnel alert (then frozen)."""

    queries: int = 0
    names: set[bytes] = field(default_factory=set)
    encoded_bytes: int = 0
    decoded_bits: float = 0.0
    first_query_ts: float | None = None
    frozen: bool = False


class Tracker:
    """The ``on_query`` hook and the alert sink of one replay: counts until first alert."""

    name = "detection-table"

    def __init__(self, zones: dict[str, str] | None = None, words: frozenset[bytes] = frozenset()) -> None:
        self.zones = {d: [lab.encode() for lab in z.lower().split(".")] for d, z in (zones or {}).items()}
        self.words = words
        self.counts: dict[str, DomainCount] = {}
        self.first_alert: dict[str, Alert] = {}
        self.alerts: dict[str, int] = {}

    # Sink protocol
    def submit(self, alert: Alert) -> None:
        if alert.kind != "tunnel":
            return
        self.alerts[alert.domain] = self.alerts.get(alert.domain, 0) + 1
        self.first_alert.setdefault(alert.domain, alert)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    # on_query hook: runs after Pipeline.decide, so this query's alert is already in
    def on_query(self, query: Query, _reply: Reply | None) -> None:
        q = query.question
        domain = query.domain or registrable_domain(q.qname)
        count = self.counts.get(domain)
        if count is None:
            count = self.counts[domain] = DomainCount(first_query_ts=query.now)
        if count.frozen:
            return
        count.queries += 1
        if q.qname not in count.names:
            count.names.add(q.qname)
            sent = query.wire[12 : q.end - 4]  # the name as sent, case kept
            labels = split_labels(sent)
            keep = len(labels) - self._suffix_len(domain, labels)
            for label in labels[:keep]:
                count.encoded_bytes += len(label)
                if self.words and label.lower() in self.words:
                    count.decoded_bits += 8
                else:
                    count.decoded_bits += label_bits(label)
        if domain in self.first_alert:
            count.frozen = True

    def _suffix_len(self, domain: str, labels: list[bytes]) -> int:
        """Labels of the tunnel zone (or of the registrable domain) at the end of the name."""
        lower = [lab.lower() for lab in labels]
        zone = self.zones.get(domain)
        if zone and lower[-len(zone):] == zone:
            return len(zone)
        return domain.count(".") + 1 if domain not in ("", ".") else 0


@dataclass
class Row:
    name: str
    kind: str
    description: str
    zone: str | None
    domain: str | None
    queries_total: int
    seconds_of_capture: float
    detected: bool | None = None
    queries: int | None = None
    encoded_bytes: int | None = None
    decoded_bytes: int | None = None
    reasons: list[str] | None = None
    severity: str | None = None
    time_to_alert_s: float | None = None
    evidence: dict[str, Any] | None = None
    flagged_other: list[str] = field(default_factory=list)  # flagged domains that are not the tunnel
    replay_seconds: float = 0.0


def measure(case: Case) -> Row:
    """Replay one capture with the default config and read the first alert on its domain."""
    zones = {case.domain: case.zone} if case.zone and case.domain else {}
    tracker = Tracker(zones, case.words)
    report = replay([str(case.path)], replay_config(None), sinks=[tracker], on_query=tracker.on_query)
    span = report.span
    row = Row(case.name, case.kind, case.description, case.zone, case.domain, report.queries,
              round(span, 1), replay_seconds=round(report.seconds, 3))
    row.flagged_other = sorted(d for d in tracker.first_alert if d != case.domain)
    if case.domain is None:
        return row
    count = tracker.counts.get(case.domain, DomainCount())
    alert = tracker.first_alert.get(case.domain)
    row.detected = alert is not None
    row.queries = count.queries
    row.encoded_bytes = count.encoded_bytes
    row.decoded_bytes = round(count.decoded_bits / 8)
    if alert is not None:
        row.reasons = list(alert.reasons)
        row.severity = alert.severity
        row.time_to_alert_s = round(alert.ts - (count.first_query_ts or alert.ts), 1)
        row.evidence = {k: alert.evidence.get(k) for k in (
            "scope", "window", "points", "queries", "new_names", "info_bytes", "budget_bytes",
            "encoded_names", "rare_qtype_names", "nxdomain_ratio") if k in alert.evidence}
    return row


# --- writing captures with dpkt ---------------------------------------------------------


def _wire(name: str | bytes) -> bytes:
    if isinstance(name, bytes):
        return name
    return b"".join(bytes([len(p)]) + p.encode() for p in name.strip(".").split(".")) + b"\0"


_OPT = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"  # EDNS0, 1232-byte buffer


def query_message(msg_id: int, qname: bytes, qtype: int) -> bytes:
    return struct.pack("!HHHHHH", msg_id, 0x0100, 1, 0, 0, 1) + qname + struct.pack("!HH", qtype, 1) + _OPT


def response_message(msg_id: int, qname: bytes, qtype: int, rcode: int, rng: random.Random,
                     zone_offset: int = 0) -> bytes:
    """A plausible authoritative/recursive answer: records for NOERROR, SOA for NXDOMAIN/NODATA.

    ``zone_offset`` is where the zone's name starts inside ``qname`` (for the SOA owner).
    """
    question = qname + struct.pack("!HH", qtype, 1)
    ptr_q = b"\xc0\x0c"
    ptr_zone = struct.pack("!H", 0xC000 | (12 + zone_offset))
    answers: list[bytes] = []
    if rcode == NOERROR:
        ttl = rng.choice((30, 60, 300, 3600))
        if qtype == A:
            answers.append(ptr_q + struct.pack("!HHIH", A, 1, ttl, 4) + bytes([10, rng.randint(0, 255), rng.randint(0, 255), rng.randint(1, 254)]))
        elif qtype == AAAA:
            answers.append(ptr_q + struct.pack("!HHIH", AAAA, 1, ttl, 16) + b"\x20\x01\x0d\xb8" + rng.randbytes(12))
        elif qtype == TXT:
            text = rng.choice((b"v=spf1 include:_spf.example.net ~all", b"v=DMARC1; p=none",
                               b"v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQC" + rng.randbytes(24).hex().encode(),
                               b"OK"))
            answers.append(ptr_q + struct.pack("!HHIH", TXT, 1, ttl, len(text) + 1) + bytes([len(text)]) + text)
        elif qtype == MX:
            rdata = struct.pack("!H", 10) + b"\x02mx" + ptr_zone
            answers.append(ptr_q + struct.pack("!HHIH", MX, 1, ttl, len(rdata)) + rdata)
        elif qtype == SRV:
            rdata = struct.pack("!HHH", 0, 5, 443) + b"\x03srv" + ptr_zone
            answers.append(ptr_q + struct.pack("!HHIH", SRV, 1, ttl, len(rdata)) + rdata)
        elif qtype == PTR:
            rdata = b"\x04host\x07example\x03net\x00"
            answers.append(ptr_q + struct.pack("!HHIH", PTR, 1, ttl, len(rdata)) + rdata)
    authority: list[bytes] = []
    if not answers:
        soa = b"\x03ns1" + ptr_zone + b"\x0ahostmaster" + ptr_zone + struct.pack("!IIIII", 2024010101, 3600, 600, 86400, 60)
        authority.append(ptr_zone + struct.pack("!HHIH", SOA, 1, 60, len(soa)) + soa)
    flags = 0x8180 | rcode
    header = struct.pack("!HHHHHH", msg_id, flags, 1, len(answers), len(authority), 1)
    return header + question + b"".join(answers) + b"".join(authority) + _OPT


def frame(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    udp = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    udp.ulen = 8 + len(payload)
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=dpkt.ip.IP_PROTO_UDP,
                    ttl=64, data=udp)
    ip.len = 20 + udp.ulen
    eth = dpkt.ethernet.Ethernet(src=b"\x02\x00\x00\x00\x00\x02", dst=b"\x02\x00\x00\x00\x00\x01",
                                 type=dpkt.ethernet.ETH_TYPE_IP, data=ip)
    return bytes(eth)


@dataclass
class Lookup:
    ts: float
    client: str
    qname: bytes  # wire, case as sent
    qtype: int
    rcode: int = NOERROR
    delay: float = 0.02
    zone_offset: int = 0


def write_pcap(path: Path, lookups: Iterable[Lookup], resolver: str, seed: int) -> int:
    """Each lookup as a query and its response, in capture-time order; returns queries written."""
    rng = random.Random(seed)
    packets: list[tuple[float, bytes]] = []
    n = 0
    for lk in lookups:
        msg_id = rng.getrandbits(16)
        sport = rng.randint(20000, 60999)
        packets.append((lk.ts, frame(lk.client, resolver, sport, 53, query_message(msg_id, lk.qname, lk.qtype))))
        resp = response_message(msg_id, lk.qname, lk.qtype, lk.rcode, rng, lk.zone_offset)
        packets.append((lk.ts + lk.delay, frame(resolver, lk.client, 53, sport, resp)))
        n += 1
    packets.sort(key=lambda p: p[0])
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        writer = dpkt.pcap.Writer(fh, linktype=dpkt.pcap.DLT_EN10MB)
        for ts, buf in packets:
            writer.writepkt(buf, ts=ts)
    tmp.replace(path)
    return n


def _zone_offset(qname: bytes, domain: str) -> int:
    suffix = _wire(domain).lower()
    low = qname.lower()
    return len(low) - len(suffix) if low.endswith(suffix) else 0


# --- the benign corpus as a pcap -------------------------------------------------------

BENIGN_START = 1_795_300_000.0


def write_benign(path: Path, queries: int, seed: int = 11) -> int:
    rng = random.Random(seed)

    def lookups() -> Iterator[Lookup]:
        for ts, client, qname, qtype in benign_day(seed=seed, queries=queries, start=BENIGN_START):
            yield Lookup(ts, client, qname, qtype, rcode_for(qname), rng.uniform(0.001, 0.06),
                         _zone_offset(qname, registrable_domain(qname)))

    return write_pcap(path, lookups(), "10.96.0.10", seed)


# --- variants: channels none of the checked-in captures use ------------------------------

VARIANT_START = 1_796_000_000.0
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def _payload(n: int, seed: str) -> bytes:
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{i}".encode()).digest()
        i += 1
    return bytes(out[:n])


def b58encode(data: bytes) -> str:
    num = int.from_bytes(data, "big")
    out = ""
    while num:
        num, r = divmod(num, 58)
        out = _B58[r] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


def variant_b64url30(path: Path) -> Case:
    """DNSExfiltrator-like in base64url (case kept): ``<seq>.<30 chars>.<zone>``, TXT, 1 q/2 s."""
    zone = "up.sync-b64u.net"
    data = base64.urlsafe_b64encode(_payload(9000, "b64url30")).decode().rstrip("=")
    rng = random.Random(31)
    lk = []
    for seq, i in enumerate(range(0, len(data), 30)):
        name = _wire(f"{seq}.{data[i:i + 30]}.{zone}")
        lk.append(Lookup(VARIANT_START + 2 * seq + rng.uniform(0, 0.3), "10.20.0.7", name, TXT, NOERROR,
                         0.03, _zone_offset(name, zone)))
    write_pcap(path, lk, "10.20.0.53", 31)
    return Case("variant: base64url 30-char chunks", path, zone, "variant",
                "<seq>.<30 base64url chars, case kept = 22 B>.up.sync-b64u.net, TXT answered TXT, 1 q/2 s")


def variant_base58_beacon(path: Path) -> Case:
    """Sliver/Cobalt-Strike-like beacon: sleep 60 s +-30 %, each check-in 1-3 base58 names, A+TXT."""
    zone = "cdn.metrics-relay.com"
    data = _payload(12000, "base58")
    rng = random.Random(58)
    lk = []
    t = VARIANT_START
    i = 0
    while i < len(data):
        for _ in range(rng.randint(1, 3)):
            chunk = data[i : i + 28]
            i += 28
            label = b58encode(b"\x01" + chunk)  # leading byte keeps leading zeros
            name = _wire(f"{label}.{zone}")
            qtype = rng.choice((A, TXT))
            lk.append(Lookup(t, "10.20.1.9", name, qtype, NOERROR, 0.04, _zone_offset(name, zone)))
            t += rng.uniform(0.05, 0.4)
        t += 60 * rng.uniform(0.7, 1.3)
    write_pcap(path, lk, "10.20.0.53", 58)
    return Case("variant: base58 beacon, 60 s sleep", path, zone, "variant",
                "1-3 names per check-in, one base58 label (~39 chars = 28 B), A/TXT, sleep 60 s +-30 %")


def variant_slow_5min(path: Path) -> Case:
    """Low and slower: one 32-char base32 label (20 B) a query, 1 q / 5 min +-30 s, 2 days."""
    zone = "s.backup-agent.org"
    data = _payload(20 * 576, "slow5")
    rng = random.Random(5)
    lk = []
    for seq, i in enumerate(range(0, len(data), 20)):
        label = base64.b32encode(data[i : i + 20]).decode().rstrip("=").lower()
        name = _wire(f"{label}.{seq}.{zone}")
        lk.append(Lookup(VARIANT_START + 300 * seq + rng.uniform(-30, 30), "10.20.2.4", name, A, NOERROR,
                         0.05, _zone_offset(name, zone)))
    write_pcap(path, lk, "10.20.0.53", 5)
    return Case("variant: base32 1 q/5 min over 2 days", path, zone, "variant",
                "<32 base32 chars = 20 B>.<seq>.s.backup-agent.org, A, 1 q/5 min, 576 queries, 48 h "
                "(5.8 KB/day)")


def variant_slow_15min(path: Path) -> Case:
    """Below the daily budget: one 32-char base32 label (20 B) a query, 1 q / 15 min, 3 days."""
    zone = "u.update-check.net"
    data = _payload(20 * 288, "slow15")
    rng = random.Random(15)
    lk = []
    for seq, i in enumerate(range(0, len(data), 20)):
        label = base64.b32encode(data[i : i + 20]).decode().rstrip("=").lower()
        name = _wire(f"{label}.{seq}.{zone}")
        lk.append(Lookup(VARIANT_START + 900 * seq + rng.uniform(-60, 60), "10.20.2.8", name, A, NOERROR,
                         0.05, _zone_offset(name, zone)))
    write_pcap(path, lk, "10.20.0.53", 15)
    return Case("variant: base32 1 q/15 min over 3 days", path, zone, "variant",
                "<32 base32 chars = 20 B>.<seq>.u.update-check.net, A, 1 q/15 min, 288 queries, 72 h "
                "(1.9 KB/day)")


def variant_words_noerror(path: Path) -> Case:
    """Dictionary words (1 byte = 1 of 256 words, 4 words a name) answered NOERROR, 1 q/10 s.

    The checked-in ``synth_words`` is answered NXDOMAIN, which alone gives it away;
    here only the information budget can see it.
    """
    zone = "q.wordmail-sync.com"
    words = sorted(_channel_words())
    data = _payload(8000, "words")
    rng = random.Random(4)
    lk = []
    for seq, i in enumerate(range(0, len(data), 4)):
        name = _wire(".".join(words[b].decode() for b in data[i : i + 4]) + "." + zone)
        lk.append(Lookup(VARIANT_START + 10 * seq + rng.uniform(0, 1), "10.20.3.3", name, A, NOERROR,
                         0.03, _zone_offset(name, zone)))
    write_pcap(path, lk, "10.20.0.53", 4)
    return Case("variant: dictionary words answered NOERROR, 1 q/10 s", path, zone, "variant",
                "4 word labels (4 B) per name, word list of synth_words, A answered A, 1 q/10 s",
                words=frozenset(words))


def variant_cdn_hashes(path: Path) -> Case:
    """Benign: a CDN serving content-addressed host names, a fixed pool re-resolved as TTLs expire.

    600 names ``<20 hex>.<edge>.imgedge-cdn.net`` (12 edges), popularity Zipf-like,
    25 clients over 8 h, each re-resolving a name only after its 60 s TTL;
    30 new names published an hour.
    """
    domain = "imgedge-cdn.net"
    rng = random.Random(600)
    pool = [f"{rng.randbytes(10).hex()}.e{rng.randint(1, 12)}.{domain}" for _ in range(600)]
    weights = [1 / (k + 1) ** 1.1 for k in range(len(pool))]
    clients = [f"10.30.{i // 10}.{i % 10 + 10}" for i in range(25)]
    lk: list[Lookup] = []
    cached: dict[tuple[str, str], float] = {}
    published = 300
    t = VARIANT_START
    end = t + 8 * 3600
    while t < end:
        t += rng.expovariate(1 / 3.0)  # a page view every ~3 s over the fleet
        published = min(len(pool), 300 + int((t - VARIANT_START) / 120))  # 30 new names an hour
        client = rng.choice(clients)
        for name in rng.choices(pool[:published], weights[:published], k=rng.randint(1, 4)):
            if cached.get((client, name), 0) > t:
                continue
            cached[(client, name)] = t + 60
            for qtype in (A, AAAA):
                w = _wire(name)
                lk.append(Lookup(t, client, w, qtype, NOERROR, rng.uniform(0.005, 0.04), _zone_offset(w, domain)))
    write_pcap(path, lk, "10.96.0.10", 600)
    return Case("variant (benign): CDN content-hash host names", path, None, "variant-benign",
                "600 names <20 hex>.e<N>.imgedge-cdn.net, Zipf popularity, 25 clients, 8 h, 60 s TTL, "
                "A+AAAA, 30 new names/h")


VARIANTS: list[Callable[[Path], Case]] = [
    variant_b64url30, variant_base58_beacon, variant_slow_5min, variant_slow_15min, variant_words_noerror,
    variant_cdn_hashes,
]


# --- the table ----------------------------------------------------------------------------


def checked_in_cases() -> list[Case]:
    return manifest_cases(TUNNELS, "capture") + (manifest_cases(CORPUS, "shared") if CORPUS.is_dir() else [])


def run(work: Path, benign_queries: int, variants: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    started = time.monotonic()
    cases = checked_in_cases()
    if variants:
        for make in VARIANTS:
            fname = make.__name__.removeprefix("variant_") + ".pcap"
            cases.append(make(work / fname))
    rows: list[Row] = []
    for case in cases:
        row = measure(case)
        rows.append(row)
        log(f"  {case.name}: detected={row.detected} queries={row.queries} "
            f"encoded={row.encoded_bytes} decoded={row.decoded_bytes} other={row.flagged_other}")
    benign = None
    if benign_queries:
        bpath = work / "benign_corpus.pcap"
        write_benign(bpath, benign_queries)
        benign = measure(Case("benign corpus (tests/benign_corpus.py)", bpath, None, "benign",
                              f"seed 11, {benign_queries:,} queries + responses, 40 clients"))
        log(f"  benign: {benign.queries_total} queries, flagged {benign.flagged_other}")
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": COMMAND,
        "config": "replay default (namespace default, mode learn, detection observe, default thresholds)",
        "payload_limit_bytes": PAYLOAD_LIMIT,
        "definitions": {
            "queries": "queries to the tunnel's registrable domain up to and including the first alert",
            "encoded_bytes": "octets of labels left of the tunnel zone, dots excluded, over distinct names",
            "decoded_bytes": "sum over those labels of length*log2(alphabet)/8 (digit-only labels 0; "
                             "known word list: 1 byte/word); includes protocol headers (upper bound)",
            "time_to_alert_s": "capture time from the first query to the domain to the first alert",
        },
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "rows": [asdict(r) for r in rows],
        "benign": asdict(benign) if benign else None,
        "seconds": round(time.monotonic() - started, 1),
    }


def _dur(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def render(result: dict[str, Any]) -> str:
    out = ["| capture | tunnel domain | detected | queries | payload before alert, encoded B | decoded B (est.) "
           "| first alert: reasons | severity | capture time to alert |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if r["domain"] is None:
            continue
        label = f"`{r['name']}`" if r["kind"] in ("capture", "shared") else f"*{r['name']}*"
        if r["kind"] == "shared":
            label += " (shared corpus)"
        det = "yes" if r["detected"] else "**no** (all queries shown)"
        if r["flagged_other"]:
            det += f" (also flagged: {', '.join(r['flagged_other'])})"
        out.append(
            f"| {label} | `{r['zone']}` | {det} | {r['queries']} | {r['encoded_bytes']:,} | "
            f"{r['decoded_bytes']:,} | {', '.join(r['reasons'] or []) or '-'} | {r['severity'] or '-'} | "
            f"{_dur(r['time_to_alert_s'])} |"
        )
    out.append("")
    out.append("| benign workload | queries | capture span | registrable domains flagged |")
    out.append("|---|---|---|---|")
    benign_rows = [r for r in result["rows"] if r["domain"] is None]
    if result.get("benign"):
        benign_rows.append(result["benign"])
    for r in benign_rows:
        label = f"*{r['name']}*" if r["kind"].startswith("variant") else r["name"]
        flagged = ", ".join(f"`{d}`" for d in r["flagged_other"]) or "**none**"
        out.append(f"| {label} | {r['queries_total']:,} | {_dur(r['seconds_of_capture'])} | {flagged} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--benign-queries", type=int, default=200_000,
                   help="size of the benign corpus pcap (0: skip; default 200000)")
    p.add_argument("--no-variants", action="store_true", help="only the checked-in captures")
    p.add_argument("--keep", metavar="DIR", help="write the generated pcaps here and keep them")
    p.add_argument("--out", default=str(RESULTS), help=f"results JSON (default {RESULTS.relative_to(ROOT)})")
    args = p.parse_args(argv)
    if args.keep:
        work = Path(args.keep)
        work.mkdir(parents=True, exist_ok=True)
        result = run(work, args.benign_queries, not args.no_variants, log=lambda s: print(s, file=sys.stderr))
    else:
        with tempfile.TemporaryDirectory(prefix="dnsgate-detection-") as tmp:
            result = run(Path(tmp), args.benign_queries, not args.no_variants,
                         log=lambda s: print(s, file=sys.stderr))
    out = save_results(Path(args.out), result)
    sys.stdout.write(render(result))
    print(f"\n{result['seconds']} s; results in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
