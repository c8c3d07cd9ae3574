"""Helpers for make_captures.sh: a pipelining DNS/TCP client, and frame rewriting.

    make_captures.py tcp-client HOST PORT   # run inside the capture namespace
    make_captures.py rewrite ETH_PCAP OUTDIR

`rewrite` takes the real Ethernet capture and writes variants of the same
frames: other link types (raw IP, BSD null, OpenBSD loop), 802.1Q / QinQ tags,
a TCP session with reordered and retransmitted segments, and corrupt records.
"""

from __future__ import annotations

import socket
import struct
import sys
import time
from pathlib import Path

import dns.message
import dpkt


def _framed(name: str) -> bytes:
    wire = dns.message.make_query(name, "A").to_wire()
    return struct.pack("!H", len(wire)) + wire


def _read_message(sock: socket.socket) -> bytes:
    buf = b""
    while len(buf) < 2 or len(buf) < 2 + struct.unpack("!H", buf[:2])[0]:
        chunk = sock.recv(65535)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    return buf


def tcp_client(host: str, port: int) -> None:
    # Two queries written at once: one TCP segment carrying two messages.
    with socket.create_connection((host, port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(_framed("d1.example.test") + _framed("d2.example.test"))
        got = _read_message(sock)
        if len(got) < 2 + struct.unpack("!H", got[:2])[0] + 2:
            _read_message(sock)
    # One query in three segments: the split falls inside the length prefix.
    with socket.create_connection((host, port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        msg = _framed("e.example.test")
        for part in (msg[:1], msg[1:12], msg[12:]):
            sock.sendall(part)
            time.sleep(0.05)  # keep the writes in separate segments
        _read_message(sock)


def _frames(path: str) -> list[tuple[float, bytes]]:
    with open(path, "rb") as f:
        return [(ts, bytes(buf)) for ts, buf in dpkt.pcap.Reader(f)]


def _write(path: Path, linktype: int, frames: list[tuple[float, bytes]]) -> None:
    with open(path, "wb") as f:
        writer = dpkt.pcap.Writer(f, linktype=linktype, snaplen=262144)
        for ts, buf in frames:
            writer.writepkt(buf, ts)


def _is_v6(frame: bytes) -> bool:
    return frame[12:14] == b"\x86\xdd"


def _tcp(frame: bytes) -> dpkt.tcp.TCP | None:
    ip = dpkt.ethernet.Ethernet(frame).data
    return ip.data if isinstance(ip.data, dpkt.tcp.TCP) else None


def rewrite(eth_pcap: str, outdir: str) -> None:
    out = Path(outdir)
    frames = _frames(eth_pcap)

    _write(out / "raw.pcap", 101, [(ts, f[14:]) for ts, f in frames])
    _write(out / "null.pcap", 0, [
        (ts, struct.pack("<I", 30 if _is_v6(f) else 2) + f[14:]) for ts, f in frames
    ])
    _write(out / "loop.pcap", 108, [
        (ts, struct.pack(">I", 24 if _is_v6(f) else 2) + f[14:]) for ts, f in frames
    ])
    qinq = b"\x88\xa8\x00\x64\x81\x00\x00\x0a"  # S-tag VID 100, C-tag VID 10
    dot1q = b"\x81\x00\x00\x0a"
    _write(out / "vlan.pcap", 1, [
        (ts, f[:12] + (qinq if _is_v6(f) else dot1q) + f[12:]) for ts, f in frames
    ])

    # Reorder: in the server-to-client flow with the most data segments (dig
    # +keepopen; the TXT answer spans segments), swap its last two segments and
    # retransmit its first one afterwards. In the client's query split in
    # three segments, deliver the last piece before the middle one.
    by_flow: dict[tuple[int, int], list[int]] = {}
    for i, (_, f) in enumerate(frames):
        tcp = _tcp(f)
        if tcp is not None and tcp.data:
            by_flow.setdefault((tcp.sport, tcp.dport), []).append(i)
    order = list(range(len(frames)))

    def swap(x: int, y: int) -> None:
        i, j = order.index(x), order.index(y)
        order[i], order[j] = order[j], order[i]

    server = max((idx for (sport, _), idx in by_flow.items() if sport == 53), key=len)
    split = next(  # the client's query written 1 + 11 + rest bytes
        idx for (_, dport), idx in by_flow.items()
        if dport == 53 and len(_tcp(frames[idx[0]][1]).data) == 1
    )
    if len(server) < 4:
        raise SystemExit("no TCP answer spanning segments captured")
    swap(server[-2], server[-1])
    order.insert(order.index(server[-2]) + 1, server[0])
    swap(split[1], split[2])
    reordered = [frames[i] for i in order]
    _write(out / "tcp_reorder.pcap", 1, reordered)

    # Corrupt: a mangled IPv4 header, a 6-byte DNS payload, then a record
    # header whose captured length is garbage.
    corrupt = list(frames)
    udp_queries = [
        i for i, (_, f) in enumerate(frames)
        if not _is_v6(f) and f[23] == 17 and f[36:38] == b"\x00\x35"
    ]
    first, second = udp_queries[0], udp_queries[1]
    f = bytearray(frames[first][1])
    f[14] = 0x05  # IP version 0
    corrupt[first] = (frames[first][0], bytes(f))
    f = bytearray(frames[second][1][: 14 + 20 + 8 + 6])
    struct.pack_into("!H", f, 16, 20 + 8 + 6)
    struct.pack_into("!H", f, 38, 8 + 6)
    corrupt[second] = (frames[second][0], bytes(f))
    path = out / "corrupt.pcap"
    _write(path, 1, corrupt)
    with open(path, "ab") as fh:
        fh.write(struct.pack("<IIII", int(frames[-1][0]), 0, 0x7FFFFFF0, 0x7FFFFFF0))
        fh.write(b"\x00" * 64)
    print(f"corrupt.pcap: mangled packet {first + 1}, short DNS packet {second + 1}, "
          f"bogus record {len(frames) + 1}")


def main(argv: list[str]) -> None:
    if argv[:1] == ["tcp-client"]:
        tcp_client(argv[1], int(argv[2]))
    elif argv[:1] == ["rewrite"]:
        rewrite(argv[1], argv[2])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
