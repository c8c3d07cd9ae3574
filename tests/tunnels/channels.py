"""Helpers run *inside* the lab network namespaces by ``generate.py``.

Sub-commands (all bounded in time, all exit by themselves):

  sink      TCP sink for iodine: accept one connection, read to EOF, reply "got N".
  push      TCP client for iodine: send N seeded pseudo-random bytes, print the reply.
  echo      TCP echo for dns2tcp: accept one connection, echo to EOF.
  respond   tiny authoritative UDP DNS responder for the synthetic channels.
  send      synthetic exfiltration client (dnsexfil | hex16 | words | lowslow).
  text      print N bytes of seeded English-like text (dns2tcp payload).

Nothing here opens a socket to anything but the address given on the command
line; generate.py only ever passes addresses inside its own namespaces.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import random
import socket
import sys
import time
import zlib

# 256 common English words: one word = one payload byte (8 bits).
WORDS = ["able", "acid", "aged", "also", "area", "army", "away", "baby", "back", "ball", "band", "bank", "base", "bath", "bear", "beat", "been", "beer", "bell", "belt", "best", "bird", "blow", "blue", "boat", "body", "bone", "book", "boot", "born", "boss", "both", "bowl", "bulk", "burn", "bush", "busy", "cake", "call", "calm", "came", "camp", "card", "care", "case", "cash", "cast", "cell", "chat", "chip", "city", "club", "coal", "coat", "code", "cold", "come", "cook", "cool", "cope", "copy", "core", "cost", "crew", "crop", "dark", "data", "date", "dawn", "days", "dead", "deal", "dear", "debt", "deep", "deny", "desk", "diet", "disc", "dish", "door", "dose", "down", "draw", "drew", "drop", "drug", "dual", "duke", "dust", "duty", "each", "earn", "ease", "east", "easy", "edge", "else", "even", "ever", "evil", "exit", "face", "fact", "fail", "fair", "fall", "farm", "fast", "fate", "fear", "feed", "feel", "feet", "fell", "felt", "file", "fill", "film", "find", "fine", "fire", "firm", "fish", "five", "flat", "flow", "food", "foot", "ford", "form", "fort", "four", "free", "from", "fuel", "full", "fund", "gain", "game", "gate", "gave", "gear", "gift", "girl", "give", "glad", "goal", "goes", "gold", "golf", "gone", "good", "gray", "grew", "grey", "grow", "gulf", "hair", "half", "hall", "hand", "hang", "hard", "harm", "hate", "have", "head", "hear", "heat", "held", "hell", "help", "here", "hero", "high", "hill", "hire", "hold", "hole", "holy", "home", "hope", "host", "hour", "huge", "hung", "hunt", "hurt", "idea", "inch", "into", "iron", "item", "jack", "jane", "jean", "john", "join", "jump", "jury", "just", "keen", "keep", "kent", "kept", "kick", "kill", "kind", "king", "knee", "knew", "know", "lack", "lady", "laid", "lake", "land", "lane", "last", "late", "lead", "left", "less", "life", "lift", "like", "line", "link", "list", "live", "load", "loan", "lock", "logo", "long", "look", "lord", "lose", "loss", "lost", "love", "luck", "made", "mail", "main", "make", "male", "many", "mark", "mass", "matt", "meal", "mean", "meat", "meet"]
assert len(WORDS) == 256, len(WORDS)
assert len(set(WORDS)) == 256, len(WORDS)


def seeded_bytes(n: int, seed: str) -> bytes:
    """Deterministic incompressible bytes (stands in for an encrypted archive)."""
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:n])


def seeded_text(n: int, seed: str) -> bytes:
    rnd = random.Random(seed)
    lines = []
    size = 0
    while size < n:
        line = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(6, 14))).capitalize() + ".\n"
        lines.append(line)
        size += len(line)
    return "".join(lines).encode()[:n]


def b32(data: bytes) -> str:
    return base64.b32encode(data).decode().rstrip("=").lower()


def rc4(key: bytes, data: bytes) -> bytes:
    s = list(range(256))
    j = 0
    for i in range(256):
        j = (j + s[i] + key[i % len(key)]) % 256
        s[i], s[j] = s[j], s[i]
    i = j = 0
    out = bytearray()
    for byte in data:
        i = (i + 1) % 256
        j = (j + s[i]) % 256
        s[i], s[j] = s[j], s[i]
        out.append(byte ^ s[(s[i] + s[j]) % 256])
    return bytes(out)


# --------------------------------------------------------------------------- TCP helpers


def cmd_sink(a: argparse.Namespace) -> int:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((a.bind, a.port))
    srv.listen(1)
    srv.settimeout(a.timeout)
    print("READY", flush=True)
    conn, _ = srv.accept()
    conn.settimeout(a.timeout)
    total = 0
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            break
        total += len(chunk)
    conn.sendall(f"got {total}\n".encode())
    conn.close()
    print(f"sink received {total}", flush=True)
    return 0


def cmd_push(a: argparse.Namespace) -> int:
    payload = seeded_bytes(a.bytes, a.seed)
    conn = socket.create_connection((a.host, a.port), timeout=a.timeout)
    conn.settimeout(a.timeout)
    conn.sendall(payload)
    conn.shutdown(socket.SHUT_WR)
    reply = conn.recv(100).decode().strip()
    print(reply, flush=True)
    return 0 if reply == f"got {a.bytes}" else 1


def cmd_echo(a: argparse.Namespace) -> int:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((a.bind, a.port))
    srv.listen(1)
    srv.settimeout(a.timeout)
    print("READY", flush=True)
    conn, _ = srv.accept()
    conn.settimeout(a.timeout)
    total = 0
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            break
        total += len(chunk)
        conn.sendall(chunk)
    print(f"echoed {total}", flush=True)
    return 0


def cmd_text(a: argparse.Namespace) -> int:
    sys.stdout.buffer.write(seeded_text(a.bytes, a.seed))
    return 0


# --------------------------------------------------------------------------- DNS responder


def cmd_respond(a: argparse.Namespace) -> int:
    import dns.flags
    import dns.message
    import dns.name
    import dns.rcode
    import dns.rdatatype
    import dns.rrset

    zone = dns.name.from_text(a.domain)
    soa = dns.rrset.from_text(zone, 300, "IN", "SOA", f"ns1.{zone} hostmaster.{zone} 2024010101 3600 600 86400 60")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((a.bind, 53))
    sock.settimeout(1.0)
    deadline = time.monotonic() + a.timeout
    print("READY", flush=True)
    answered = 0
    while time.monotonic() < deadline:
        try:
            wire, peer = sock.recvfrom(4096)
        except TimeoutError:
            continue
        try:
            query = dns.message.from_wire(wire)
        except Exception:  # noqa: S112, BLE001
            continue
        resp = dns.message.make_response(query)
        resp.flags |= dns.flags.AA
        q = query.question[0] if query.question else None
        if q is None or not q.name.is_subdomain(zone):
            resp.set_rcode(dns.rcode.REFUSED)
            resp.flags &= ~dns.flags.AA
        elif a.mode == "nxdomain":
            resp.set_rcode(dns.rcode.NXDOMAIN)
            resp.authority.append(soa)
        elif a.mode == "txt" and q.rdtype == dns.rdatatype.TXT:
            resp.answer.append(dns.rrset.from_text(q.name, 0, "IN", "TXT", '"OK"'))
        elif a.mode == "a" and q.rdtype == dns.rdatatype.A:
            last = int.from_bytes(hashlib.sha256(q.name.to_wire()).digest()[:1], "big")
            resp.answer.append(dns.rrset.from_text(q.name, 0, "IN", "A", f"10.99.0.{last}"))
        else:  # NODATA
            resp.authority.append(soa)
        sock.sendto(resp.to_wire(), peer)
        answered += 1
    print(f"answered {answered}", flush=True)
    return 0


# --------------------------------------------------------------------------- synthetic clients


def ask(server: str, name: str, rdtype: str, timeout: float) -> bool:
    import dns.exception
    import dns.message
    import dns.query

    q = dns.message.make_query(name, rdtype)
    for _ in range(2):
        try:
            dns.query.udp(q, server, timeout=timeout)
            return True
        except dns.exception.Timeout:
            continue
    return False


def names_dnsexfil(data: bytes, domain: str, max_name: int = 255, label: int = 63):
    """DNSExfiltrator-style: zlib + RC4 + base32, ``<n>.<chunk labels>.<domain>`` TXT.

    First an ``init.<base32(filename|nchunks)>.base32.<domain>`` request, as the tool does.
    """
    blob = b32(rc4(b"lab-password", zlib.compress(data, 9)))
    # room for "<index>." + chunk labels + "." + domain, with dots every 63 chars
    room = max_name - len(domain) - 1 - 6
    per_query = (room // (label + 1)) * label
    chunks = [blob[i : i + per_query] for i in range(0, len(blob), per_query)]
    yield "init." + b32(f"secrets.zip|{len(chunks)}".encode()) + ".base32." + domain, "TXT"
    for n, chunk in enumerate(chunks):
        labels = [chunk[i : i + label] for i in range(0, len(chunk), label)]
        yield f"{n}." + ".".join(labels) + "." + domain, "TXT"


def names_hex16(data: bytes, domain: str):
    """8 payload bytes per query as one 16-char hex label, plus a sequence counter."""
    for seq, i in enumerate(range(0, len(data), 8)):
        yield f"{data[i : i + 8].hex():0<16}.{seq}.{domain}", "A"


def names_words(data: bytes, domain: str, per_query: int = 4):
    """Each payload byte becomes one English word; 4 words (labels) per query."""
    for i in range(0, len(data), per_query):
        yield ".".join(WORDS[b] for b in data[i : i + per_query]) + "." + domain, "A"


def names_lowslow(data: bytes, domain: str, per_query: int = 10):
    """10 bytes per query as one 16-char base32 label (one a minute after rewriting)."""
    for i in range(0, len(data), per_query):
        yield b32(data[i : i + per_query]) + "." + domain, "A"


CHANNELS = {
    "dnsexfil": names_dnsexfil,
    "hex16": names_hex16,
    "words": names_words,
    "lowslow": names_lowslow,
}


def cmd_send(a: argparse.Namespace) -> int:
    data = seeded_bytes(a.bytes, a.seed)
    sent = failed = 0
    deadline = time.monotonic() + a.timeout
    for name, rdtype in CHANNELS[a.channel](data, a.domain):
        if time.monotonic() > deadline:
            print("deadline reached", flush=True)
            break
        if ask(a.server, name, rdtype, 1.0):
            sent += 1
        else:
            failed += 1
        time.sleep(a.throttle_ms / 1000.0)
    print(f"queries {sent} unanswered {failed}", flush=True)
    return 0 if failed == 0 else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("sink", "echo"):
        s = sub.add_parser(name)
        s.add_argument("--bind", required=True)
        s.add_argument("--port", type=int, required=True)
        s.add_argument("--timeout", type=float, default=60)
    s = sub.add_parser("push")
    s.add_argument("--host", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--bytes", type=int, required=True)
    s.add_argument("--seed", default="dnsgate")
    s.add_argument("--timeout", type=float, default=60)
    s = sub.add_parser("text")
    s.add_argument("--bytes", type=int, required=True)
    s.add_argument("--seed", default="dnsgate")
    s = sub.add_parser("respond")
    s.add_argument("--bind", required=True)
    s.add_argument("--domain", required=True)
    s.add_argument("--mode", choices=("nxdomain", "txt", "a"), default="nxdomain")
    s.add_argument("--timeout", type=float, default=120)
    s = sub.add_parser("send")
    s.add_argument("--server", required=True)
    s.add_argument("--domain", required=True)
    s.add_argument("--channel", choices=sorted(CHANNELS), required=True)
    s.add_argument("--bytes", type=int, required=True)
    s.add_argument("--seed", default="dnsgate")
    s.add_argument("--throttle-ms", type=float, default=0)
    s.add_argument("--timeout", type=float, default=120)
    a = p.parse_args(argv)
    return {
        "sink": cmd_sink,
        "push": cmd_push,
        "echo": cmd_echo,
        "text": cmd_text,
        "respond": cmd_respond,
        "send": cmd_send,
    }[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
