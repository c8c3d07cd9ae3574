"""Small captures built in memory for resolver.offline.capture's tests.

Frames are put together with struct, field by field, so a test can write
exactly the header it means (a short block, a zero length, an extension header
in an odd place). Checksums are left at zero: the reader never checks them.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable
from pathlib import Path

import dns.message

CLIENT4, SERVER4 = "10.0.0.2", "10.0.0.1"
CLIENT6, SERVER6 = "fd00::2", "fd00::1"
TS = 1_700_000_000.0


def query(name: str = "www.example.com", qid: int = 1234) -> bytes:
    message = dns.message.make_query(name, "A")
    message.id = qid
    return message.to_wire()


def udp(payload: bytes, sport: int = 40000, dport: int = 53) -> bytes:
    return struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload


def tcp(payload: bytes, seq: int, flags: int = 0x18, sport: int = 40000, dport: int = 53) -> bytes:
    """A TCP segment without options (flags: 0x02 SYN, 0x10 ACK, 0x18 PSH+ACK)."""
    return struct.pack(">HHIIBBHHH", sport, dport, seq, 0, 5 << 4, flags, 65535, 0, 0) + payload


def ip4(payload: bytes, proto: int = 17, ident: int = 1, frag: int = 0, total: int | None = None,
        src: str = CLIENT4, dst: str = SERVER4) -> bytes:
    """IPv4 header + payload; `frag` is the flags/fragment-offset field, `total` overrides the length."""
    length = 20 + len(payload) if total is None else total
    return struct.pack(">BBHHHBBH4s4s", 0x45, 0, length, ident, frag, 64, proto, 0,
                       socket.inet_aton(src), socket.inet_aton(dst)) + payload


def ip6(payload: bytes, next_header: int = 17, src: str = CLIENT6, dst: str = SERVER6) -> bytes:
    return struct.pack(">IHBB16s16s", 0x60000000, len(payload), next_header, 64,
                       socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)) + payload


def ipv6_options(next_header: int) -> bytes:
    """An 8-byte Hop-by-Hop or Destination Options header holding one PadN option."""
    return bytes([next_header, 0, 1, 4, 0, 0, 0, 0])


def ipv6_fragment(next_header: int, offset: int, more: bool, ident: int) -> bytes:
    """An IPv6 Fragment header; `offset` in bytes (a multiple of 8)."""
    return struct.pack(">BBHI", next_header, 0, offset | int(more), ident)


def eth(packet: bytes, ethertype: int = 0x0800) -> bytes:
    return b"\x00" * 6 + b"\x11" * 6 + struct.pack(">H", ethertype) + packet


def pcap(frames: Iterable[bytes], linktype: int = 1) -> bytes:
    """A little-endian microsecond pcap file; `linktype` is the whole 32-bit header field."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)]
    for i, frame in enumerate(frames):
        out.append(struct.pack("<IIII", int(TS) + i, 0, len(frame), len(frame)) + frame)
    return b"".join(out)


# --- pcapng (little-endian) ---------------------------------------------------


def ng_block(btype: int, body: bytes) -> bytes:
    """A well-formed pcapng block: body padded to 4 bytes, lengths on both ends."""
    body += b"\x00" * (-len(body) % 4)
    size = 12 + len(body)
    return struct.pack("<II", btype, size) + body + struct.pack("<I", size)


def ng_shb() -> bytes:
    return ng_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))


def ng_option(code: int, data: bytes) -> bytes:
    return struct.pack("<HH", code, len(data)) + data + b"\x00" * (-len(data) % 4)


def ng_idb(linktype: int = 1, options: bytes = b"") -> bytes:
    if options:
        options += ng_option(0, b"")  # opt_endofopt
    return ng_block(1, struct.pack("<HHI", linktype, 0, 65535) + options)


def ng_epb(frame: bytes, usec: int = int(TS * 1e6), iface: int = 0) -> bytes:
    return ng_block(6, struct.pack("<IIIII", iface, usec >> 32, usec & 0xFFFFFFFF, len(frame), len(frame)) + frame)


def write(path: Path, content: bytes) -> str:
    path.write_bytes(content)
    return str(path)


def udp_frame(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    """An Ethernet/IPv4/UDP frame built with dpkt, lengths filled in (IPv4 addresses only)."""
    import dpkt

    datagram = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    datagram.ulen = len(datagram)
    packet = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=dpkt.ip.IP_PROTO_UDP, data=datagram)
    packet.len = len(packet)
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=dpkt.ethernet.ETH_TYPE_IP, data=packet))
