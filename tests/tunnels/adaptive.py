"""A seeded generator of adaptive DNS exfiltration channels, and a scorer.

An attacker who has read the detector picks the encoding, the chunking, the
pacing, the answers and the spread of the channel. :func:`draw` picks those
parameters at random from a seed (one :class:`Channel` per draw);
:meth:`Channel.lookups` yields the channel's queries with the payload bytes each
one carries. :func:`score` runs a draw through the same ``Replay`` pipeline
``dnsgate replay`` runs (in process: packets are built here, not read from a
file) and reports whether the detector raised a ``kind: tunnel`` alert on one of
the channel's domains, and how many payload bytes had left by then.

Nothing here opens a socket: queries and responses are DNS messages in memory.

Families (``draw(seed, family)``):

* ``bulk``: as fast as the tool goes (20 ms to 1 s between queries);
* ``slow``: one query every 10 s to 15 min (log-uniform), with jitter; channels
  below 1 KB/day are kept but reported apart (:attr:`Channel.bytes_per_day`);
* ``words``: word-list and syllable encodings at any pace (the low-entropy evasion).

A fourth family, ``rotation`` (:data:`ROTATION`), is drawn apart so that the
three above keep their draws: one client (or 2-3), 10-60 registrable domains,
each used for 1 or 2 names only (:attr:`Channel.names_per_domain`), then never
again; any encoding, chunking and pace of ``bulk`` and ``slow``. The channel
ends when its domains are used up, so it carries at most domains x names x
what a name holds (:meth:`Channel.capacity`).

A fifth, ``clients`` (:data:`MANY_CLIENTS`), is drawn apart too: one channel
spread over 9-48 clients of one namespace (an agent fleet or a CI runner pool
an attacker controls), 1-2 registrable domains, each client sending its share
of the names in turn (round robin) or at random (:attr:`Channel.random_clients`);
any encoding, chunking and pace of ``bulk`` and ``slow``.

Encodings: hex, base32, base64 (case kept), base58, decimal numbers, word lists
of 16, 64, 256 and 4,096 words (pairs of words), proquint-like syllables.
Chunking: 1-4 labels, fixed or varying length, optionally under an
ordinary-looking parent label (``img``, ``api``, ``cdn`` ...) and with a
sequence counter. Answers: NXDOMAIN or NOERROR. Spread: 1-8 clients of one
namespace, 1-5 registrable domains from the same client(s).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import heapq
import math
import random
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.tunnels.channels import WORDS

__all__ = [
    "ENCODINGS",
    "FAMILIES",
    "MANY_CLIENTS",
    "ROTATION",
    "START",
    "Channel",
    "Lookup",
    "Outcome",
    "draw",
    "flagged_domains",
    "percentile",
    "score",
]

A, CNAME, TXT, AAAA = 1, 5, 16, 28
NOERROR, NXDOMAIN = 0, 3
START = 1_797_000_000.0
RESOLVER = "10.96.0.10"

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_CONSONANTS = "bdfghjklmnprstvz"  # proquint: 16 consonants (4 bits), 4 vowels (2 bits)
_VOWELS = "aiou"
_PARENTS = ("img", "api", "cdn", "static", "www", "assets", "m", "edge", "media", "sync")
_TLDS = ("com", "net", "io", "org", "co.uk", "de", "app")
_WORD_LISTS = {16: WORDS[:16], 64: WORDS[:64], 256: WORDS}

# name -> bits carried per symbol (a character, a word or a syllable)
ENCODINGS: dict[str, float] = {
    "hex": 4.0,
    "base32": 5.0,
    "base64": 6.0,
    "base58": math.log2(58),
    "numbers": math.log2(10),
    "words16": 4.0,
    "words64": 6.0,
    "words256": 8.0,
    "words4096": 12.0,
    "proquint": 16.0,
}
_WORDY = ("words16", "words64", "words256", "words4096", "proquint")
FAMILIES = ("bulk", "slow", "words")
ROTATION = "rotation"  # drawn and reported apart: FAMILIES' draws stay as they were
MANY_CLIENTS = "clients"  # drawn and reported apart too


@dataclass(frozen=True, slots=True)
class Lookup:
    """One query of a channel, with the payload bytes its name carries."""

    ts: float
    client: str
    qname: bytes  # wire format, case as sent
    qtype: int
    rcode: int
    payload: int  # bytes of the secret carried by this name
    domain: str  # registrable domain (text)


@dataclass(frozen=True, slots=True)
class Channel:
    """The parameters of one adaptive channel (one draw)."""

    seed: int
    family: str
    encoding: str
    labels: int  # data labels per query
    label_len: int  # characters per data label (character encodings)
    symbols_per_label: int  # words or syllables per label (word encodings)
    vary: bool  # label lengths vary per query
    parent: str  # ordinary-looking label between data and domain, or ""
    counter: bool  # a decimal sequence label before the domain
    interval: float  # mean seconds between queries
    jitter: float  # +- fraction of the interval
    rcode: int
    qtype: int
    clients: tuple[str, ...]
    domains: tuple[str, ...]
    limit_bytes: int  # payload sent at most
    limit_seconds: float  # capture time at most
    names_per_domain: int = 0  # rotation: each domain gets this many names, then never again (0: round robin)
    random_clients: bool = False  # each name from a client picked at random (else clients take turns)
    # Each name asked twice, A then AAAA, as a dual-stack SDK asks: half the queries re-ask a
    # name, which is what telemetry from a fleet looks like to the namespace budget.
    dual_stack: bool = False

    @property
    def payload_per_query(self) -> float:
        """Mean payload bytes carried by one query."""
        bits = ENCODINGS[self.encoding]
        if self.encoding in _WORDY:
            return self.labels * self.symbols_per_label * bits / 8
        return self.labels * self.label_len * (0.75 if self.vary else 1.0) * bits / 8

    @property
    def bytes_per_day(self) -> float:
        """The channel's rate, payload bytes per day."""
        return self.payload_per_query * 86400.0 / self.interval

    def describe(self) -> str:
        """One line: encoding, chunking, pacing, answers, spread."""
        shape = (f"{self.labels}x{self.symbols_per_label} {'syllables' if self.encoding == 'proquint' else 'words'}"
                 if self.encoding in _WORDY else
                 f"{self.labels}x{'<=' if self.vary else ''}{self.label_len} chars")
        return (
            f"{self.encoding} {shape}{' +parent ' + self.parent if self.parent else ''}"
            f"{' +seq' if self.counter else ''}, 1 q/{self.interval:.3g} s +-{self.jitter:.0%}, "
            f"{'NXDOMAIN' if self.rcode == NXDOMAIN else 'NOERROR'}, qtype {self.qtype}, "
            f"{len(self.clients)} client(s), {len(self.domains)} domain(s)"
            f"{f' x {self.names_per_domain} name(s) each' if self.names_per_domain else ''}, "
            f"{self.bytes_per_day:,.0f} B/day"
        )

    def capacity(self) -> int:
        """Payload bytes the channel sends in all, when nothing stops it."""
        return sum(lookup.payload for lookup in self.lookups())

    def lookups(self) -> Iterator[Lookup]:
        """The channel's queries in time order, until ``limit_bytes`` or ``limit_seconds``."""
        rng = random.Random(self.seed * 7919 + 1)
        secret = _secret(self.seed)
        bitpos = 0  # bits of the secret sent so far
        sent = 0
        seq = 0
        t = START
        end = START + self.limit_seconds
        room = 250 - len(self.parent) - 1 - max(len(d) + 2 for d in self.domains) - 8
        per_domain = self.names_per_domain
        last = len(self.domains) * per_domain if per_domain else math.inf
        while sent < self.limit_bytes and t < end and seq < last:
            labels, bits = self._name_labels(rng, secret, bitpos, room)
            used = (bitpos + bits) // 8 - bitpos // 8
            bitpos += bits
            if per_domain:
                # Rotation: the next domain once this one had its names; a client a domain.
                domain = self.domains[seq // per_domain]
                client = self.clients[(seq // per_domain) % len(self.clients)]
            else:
                domain = self.domains[seq % len(self.domains)]
                client = self.clients[(seq // len(self.domains)) % len(self.clients)]
            if self.random_clients:
                client = rng.choice(self.clients)
            tail = ([self.parent] if self.parent else []) + ([str(seq)] if self.counter else [])
            qname = _wire([*labels, *tail, *domain.split(".")])
            if self.dual_stack:
                yield Lookup(t, client, qname, A, self.rcode, used, domain)
                yield Lookup(t + 0.0005, client, qname, AAAA, self.rcode, 0, domain)
            else:
                yield Lookup(t, client, qname, self.qtype, self.rcode, used, domain)
            sent += used
            seq += 1
            t += max(0.001, self.interval * (1 + rng.uniform(-self.jitter, self.jitter)))

    def _name_labels(self, rng: random.Random, secret: bytes, bitpos: int, room: int
                     ) -> tuple[list[str], int]:
        """Data labels for the next query (at most ``room`` octets) and the payload bits they carry."""
        bits = ENCODINGS[self.encoding]
        labels: list[str] = []
        carried = 0
        for _ in range(self.labels):
            room -= sum(len(label) + 1 for label in labels[-1:])
            if room < 16:
                break
            if self.encoding in _WORDY:
                count = self.symbols_per_label
                if self.vary:
                    count = rng.randint(max(1, count // 2), count)
                labels.append(_words(self.encoding, _bits(secret, bitpos + carried, count, bits)))
                carried += count * int(bits)
                continue
            length = min(self.label_len, room - 1)
            if self.vary:
                length = rng.randint(max(4, length // 2), length)
            nbytes = max(1, int(length * bits / 8))
            # Character encodings carry whole bytes: start at the next byte boundary.
            start = (bitpos + carried + 7) // 8
            carried = start * 8 - bitpos
            labels.append(_chars(self.encoding, _take(secret, start, nbytes))[:63])
            carried += nbytes * 8
        return labels, carried


def _secret(seed: int) -> bytes:
    """Incompressible bytes standing in for an encrypted archive (64 KiB, repeating)."""
    out = bytearray()
    i = 0
    while len(out) < 65536:
        out += hashlib.sha256(f"secret:{seed}:{i}".encode()).digest()
        i += 1
    return bytes(out)


def _take(secret: bytes, pos: int, n: int) -> bytes:
    pos %= len(secret) - n
    return secret[pos : pos + n]


def _bits(secret: bytes, bitpos: int, count: int, bits: float) -> list[int]:
    """``count`` symbols of ``bits`` bits each, read from the secret at ``bitpos``."""
    width = int(bits)
    need = (count * width + 7) // 8 + 1
    chunk = _take(secret, bitpos // 8, need)
    value = int.from_bytes(chunk, "big")
    total = len(chunk) * 8
    out = []
    for i in range(count):
        shift = total - (i + 1) * width
        out.append((value >> shift) & ((1 << width) - 1))
    return out


def _chars(encoding: str, chunk: bytes) -> str:
    if encoding == "hex":
        return chunk.hex()
    if encoding == "base32":
        return base64.b32encode(chunk).decode().rstrip("=").lower()
    if encoding == "base64":
        return base64.urlsafe_b64encode(chunk).decode().rstrip("=")
    if encoding == "base58":
        num = int.from_bytes(b"\x01" + chunk, "big")  # the 1 keeps leading zero bytes
        out = ""
        while num:
            num, r = divmod(num, 58)
            out = _B58[r] + out
        return out
    if encoding == "numbers":
        width = math.ceil(len(chunk) * 8 / math.log2(10))
        return str(int.from_bytes(chunk, "big")).zfill(width)
    raise ValueError(encoding)


def _words(encoding: str, symbols: Sequence[int]) -> str:
    if encoding == "proquint":
        parts = []
        for s in symbols:
            c = _CONSONANTS
            v = _VOWELS
            parts.append(c[s >> 12 & 15] + v[s >> 10 & 3] + c[s >> 6 & 15] + v[s >> 4 & 3] + c[s & 15])
        return "-".join(parts)
    if encoding == "words4096":
        return "-".join(WORDS[s >> 6 & 63] + WORDS[64 + (s & 63)] for s in symbols)
    size = int(encoding.removeprefix("words"))
    return "-".join(_WORD_LISTS[size][s] for s in symbols)


def _wire(labels: Sequence[str]) -> bytes:
    out = bytearray()
    for label in labels:
        raw = label.encode()
        out.append(len(raw))
        out += raw
    out.append(0)
    return bytes(out)


def _domain(rng: random.Random) -> str:
    return f"{rng.choice(WORDS)}{rng.choice(WORDS)}{rng.choice(('', '-', ''))}{rng.choice(WORDS)}.{rng.choice(_TLDS)}"


def _distinct_domains(rng: random.Random, count: int) -> tuple[str, ...]:
    """``count`` distinct registrable domains (a rotation must not come back to one by chance)."""
    found: dict[str, None] = {}
    while len(found) < count:
        found[_domain(rng)] = None
    return tuple(found)


def draw(seed: int, family: str) -> Channel:
    """One channel with randomised parameters; the same (seed, family) gives the same channel."""
    if family not in (*FAMILIES, ROTATION, MANY_CLIENTS):
        raise ValueError(f"family must be one of {(*FAMILIES, ROTATION, MANY_CLIENTS)}, not {family!r}")
    rng = random.Random(f"{family}:{seed}")
    if family == "words":
        encoding = rng.choice(_WORDY)
    else:
        encoding = rng.choice([e for e in ENCODINGS if e not in _WORDY] + ["words256", "proquint"])
    if family == "bulk":
        interval = rng.uniform(0.02, 1.0)
    elif family == "slow":
        interval = math.exp(rng.uniform(math.log(10), math.log(900)))
    elif family in (ROTATION, MANY_CLIENTS):
        interval = rng.choice((rng.uniform(0.02, 1.0), math.exp(rng.uniform(math.log(10), math.log(900)))))
    else:
        interval = rng.choice((rng.uniform(0.05, 2.0), math.exp(rng.uniform(math.log(10), math.log(900)))))
    names_per_domain = 0
    if family == ROTATION:
        count = rng.choice((1, 1, 1, rng.randint(2, 3)))
        domain_count = rng.randint(10, 60)
        names_per_domain = rng.choice((1, 2))
    elif family == MANY_CLIENTS:
        count = rng.randint(9, 48)
        domain_count = rng.choice((1, 1, 2))
    else:
        count = rng.choice((1, 1, 1, rng.randint(2, 8)))
        domain_count = rng.choice((1, 1, 1, rng.randint(2, 5)))
    clients = tuple(f"10.{40 + seed % 50}.{i}.{(seed * 13 + i) % 250 + 2}" for i in range(count))
    domains = _distinct_domains(rng, domain_count) if family == ROTATION else tuple(
        _domain(rng) for _ in range(domain_count))
    labels = rng.randint(1, 4)
    symbols = rng.randint(1, 4) if encoding != "proquint" else rng.randint(1, 3)
    label_len = rng.choice((rng.randint(8, 24), rng.randint(24, 63)))
    vary = rng.random() < 0.4
    # fewest symbols a label can hold (varying labels shrink to half)
    low = symbols if encoding in _WORDY else label_len
    low = max(1, low // 2) if vary else low
    return Channel(
        seed=seed,
        family=family,
        encoding=encoding,
        labels=labels,
        label_len=label_len,
        symbols_per_label=symbols,
        vary=vary,
        parent=rng.choice(_PARENTS) if rng.random() < 0.6 else "",
        # Names that repeat are answered from the resolver's cache and never reach the
        # attacker's server: with fewer than 24 bits a name, the attacker adds a counter.
        counter=rng.random() < 0.3 or labels * low * ENCODINGS[encoding] < 24,
        interval=interval,
        jitter=rng.uniform(0.0, 0.5),
        rcode=rng.choice((NOERROR, NXDOMAIN)),
        qtype=rng.choice((A, A, A, AAAA, TXT, CNAME)),
        clients=clients,
        domains=domains,
        limit_bytes=32_768,
        limit_seconds=3 * 86400.0,
        names_per_domain=names_per_domain,
        random_clients=family == MANY_CLIENTS and rng.random() < 0.5,
    )


# --- scoring through the replay pipeline ------------------------------------------


@dataclass(slots=True)
class Outcome:
    """What the detector made of one channel."""

    channel: Channel
    detected: bool
    bytes_sent: int  # payload up to and including the alerting query (all of it if missed)
    queries: int
    seconds: float  # capture time from the first query to the alert (or to the end)
    reasons: tuple[str, ...] = ()
    other_flagged: list[str] = field(default_factory=list)


def _query_message(msg_id: int, qname: bytes, qtype: int) -> bytes:
    return struct.pack("!HHHHHH", msg_id, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", qtype, 1)


def _response_message(msg_id: int, qname: bytes, qtype: int, rcode: int) -> bytes:
    question = qname + struct.pack("!HH", qtype, 1)
    if rcode == NOERROR and qtype == A:
        answer = b"\xc0\x0c" + struct.pack("!HHIH", A, 1, 60, 4) + bytes([192, 0, 2, msg_id % 250 + 1])
        return struct.pack("!HHHHHH", msg_id, 0x8180, 1, 1, 0, 0) + question + answer
    return struct.pack("!HHHHHH", msg_id, 0x8180 | rcode, 1, 0, 0, 0) + question


Row = tuple[float, str, bytes, int, int]  # (ts, client, qname wire, qtype, rcode)


class _FirstAlerts:
    """A sink keeping the first tunnel alert per registrable domain."""

    name = "adaptive-score"

    def __init__(self) -> None:
        self.flagged: dict[str, Any] = {}

    def submit(self, alert: Any) -> None:
        if alert.kind == "tunnel":
            self.flagged.setdefault(alert.domain, alert)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


class _Feed:
    """One fresh replay pipeline (replay's default config) fed query/response pairs."""

    def __init__(self, seed: int, ipv6_client_prefix: int = 128) -> None:
        from resolver.offline.replay import Replay, replay_config

        self.sink = _FirstAlerts()
        config = dataclasses.replace(replay_config(None), ipv6_client_prefix=ipv6_client_prefix)
        self.run = Replay(config, [self.sink])
        self.rng = random.Random(seed)
        self.number = 0

    def lookup(self, ts: float, client: str, qname: bytes, qtype: int, rcode: int) -> None:
        from resolver.offline.capture import DnsPacket

        msg_id = self.rng.getrandbits(16)
        port = 1024 + self.rng.getrandbits(15)
        self.number += 2
        self.run.feed(DnsPacket(self.number - 1, ts, client, port, RESOLVER, 53, "udp",
                                _query_message(msg_id, qname, qtype), False))
        self.run.feed(DnsPacket(self.number, ts + 0.02, RESOLVER, 53, client, port, "udp",
                                _response_message(msg_id, qname, qtype, rcode), True))

    def finish(self) -> dict[str, Any]:
        self.run.finish()
        return self.sink.flagged


def score(channel: Channel, background: Sequence[Row] = (), ipv6_client_prefix: int = 128) -> Outcome:
    """Run ``channel`` (and optional benign ``background`` rows) through a fresh replay
    pipeline with the replay default config (and ``ipv6_client_prefix``); stop at the
    first tunnel alert on one of the channel's domains."""
    feed = _Feed(channel.seed, ipv6_client_prefix)
    domains = set(channel.domains)
    rows: Iterator[tuple[float, str, bytes, int, int, int]] = (
        (lk.ts, lk.client, lk.qname, lk.qtype, lk.rcode, lk.payload) for lk in channel.lookups()
    )
    if background:
        rows = heapq.merge(rows, ((*b, -1) for b in background), key=lambda r: r[0])
    sent = queries = 0
    last = START
    hit = None
    flagged = feed.sink.flagged
    for ts, client, qname, qtype, rcode, payload in rows:
        feed.lookup(ts, client, qname, qtype, rcode)
        if payload < 0:
            continue
        sent += payload
        queries += 1
        last = ts
        if flagged:
            found = [flagged[d] for d in channel.domains if d in flagged]
            if found:
                hit = found[0]
                break
    other = sorted(d for d in feed.finish() if d not in domains)
    if hit is None:
        return Outcome(channel, False, sent, queries, last - START, (), other)
    return Outcome(channel, True, sent, queries, hit.ts - START, tuple(hit.reasons), other)


def flagged_domains(rows: Sequence[Row], seed: int = 0) -> dict[str, Any]:
    """Registrable domains with a tunnel alert (first alert each) when ``rows`` are replayed."""
    feed = _Feed(seed)
    for row in rows:
        feed.lookup(*row)
    return feed.finish()


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
