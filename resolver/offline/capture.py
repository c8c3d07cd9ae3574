"""Stream DNS messages out of pcap and pcapng capture files.

`read_dns` yields one `DnsPacket` per DNS message found in a capture: one per
UDP datagram, and one per length-framed message of a reassembled TCP stream
(RFC 1035 section 4.2.2, RFC 7766). `read_many` merges several captures in
capture-time order. Both stream: a file is read record by record, and TCP
and IP fragment reassembly are bounded (per flow or datagram, their number,
total bytes), so memory stays flat on a multi-GB capture; a segment or a
fragment costs work in proportion to its own length, however many wait.

Anything that cannot be decoded (a truncated record, a corrupt header, a DNS
message shorter than its 12-byte header) is reported as a `CaptureProblem` to
`on_problem` and skipped; only a file that cannot be read at all (missing, not
pcap/pcapng, unsupported link type) raises `CaptureError`. Well-formed traffic
that simply is not DNS (ARP, other ports) is skipped silently.

Example::

    for pkt in read_dns("queries.pcap", on_problem=print):
        if not pkt.is_response:
            print(pkt.ts, pkt.src, dns.message.from_wire(pkt.wire).question)

The file header is validated by `dpkt.pcap.Reader` / `dpkt.pcapng.Reader`;
records and protocol headers are then unpacked with `struct` directly, which
is several times faster than building dpkt objects per packet and lets a
truncated record be told apart from a short one (dpkt's pcap Reader either
raises on or silently yields a partial tail).
"""

from __future__ import annotations

import heapq
import logging
import operator
import socket
import struct
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import BinaryIO, Final

import dpkt

from resolver.wire.message import MalformedMessage, skip_name

__all__ = ["CaptureError", "CaptureProblem", "DnsPacket", "read_dns", "read_many", "utc_text"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, init=False)
class DnsPacket:
    """One DNS message seen in a capture."""

    number: int  # 1-based packet number in its file (the packet completing a TCP message)
    ts: float  # capture time, epoch seconds
    src: str
    sport: int
    dst: str
    dport: int
    transport: str  # "udp" | "tcp"
    wire: bytes  # one whole DNS message (TCP: without the 2-byte length prefix)
    is_response: bool  # QR bit

    def __init__(
        self, number: int, ts: float, src: str, sport: int, dst: str, dport: int, transport: str, wire: bytes,
        is_response: bool,
    ) -> None:
        object.__setattr__(self, "number", number)
        object.__setattr__(self, "ts", ts)
        object.__setattr__(self, "src", src)
        object.__setattr__(self, "sport", sport)
        object.__setattr__(self, "dst", dst)
        object.__setattr__(self, "dport", dport)
        object.__setattr__(self, "transport", transport)
        object.__setattr__(self, "wire", wire)
        object.__setattr__(self, "is_response", is_response)


@dataclass(frozen=True, slots=True)
class CaptureProblem:
    """A packet or record that was skipped, and why."""

    path: str
    number: int
    message: str


class CaptureError(Exception):
    """The capture file cannot be read at all (missing, not pcap/pcapng, ...)."""


ProblemHandler = Callable[[CaptureProblem], None]

# Link-layer header types (https://www.tcpdump.org/linktypes.html).
_LINK_NULL: Final = 0  # BSD loopback: 4-byte address family in the capturing host's byte order
_LINK_ETHERNET: Final = 1
_LINK_LOOP: Final = 108  # OpenBSD loopback: address family in network byte order
_LINK_SLL: Final = 113
_LINK_SLL2: Final = 276
_LINK_RAW: Final = frozenset({12, 14, 101, 228, 229})  # 12/14 are DLT_RAW on some platforms
SUPPORTED_LINK_TYPES = frozenset({_LINK_NULL, _LINK_ETHERNET, _LINK_LOOP, _LINK_SLL, _LINK_SLL2})
SUPPORTED_LINK_TYPES |= _LINK_RAW

_ETH_IPV4: Final = 0x0800
_ETH_IPV6: Final = 0x86DD
_ETH_VLAN: Final = frozenset({0x8100, 0x88A8, 0x9100})
# AF_INET6 differs per OS: Linux 10, NetBSD/OpenBSD 24, FreeBSD 28, macOS 30.
_AF_INET6: Final = frozenset({10, 24, 28, 30})
# IPv6 extension headers we step over: hop-by-hop, routing, destination options,
# mobility, HIP, shim6 ((len + 1) * 8 bytes); AH is (len + 2) * 4 bytes.
_IPV6_EXT: Final = frozenset({0, 43, 60, 135, 139, 140})
_IPV6_AH: Final = 51
_IPV6_FRAGMENT: Final = 44
_PROTO_TCP: Final = 6
_PROTO_UDP: Final = 17

_MAX_RECORD: Final = 256 * 1024  # libpcap rejects larger records as bogus
_MAX_BLOCK = 16 * 1024 * 1024
# Smallest pcapng packet blocks: 12 bytes of block type and lengths around the fixed
# fields, 20 of them in an enhanced (or obsolete) packet block, 4 in a simple one.
_MIN_EPB: Final = 32
_MIN_SPB: Final = 16

# A pcap header's link type field: the link type is its low 16 bits; when the "P" bit
# is set, the top 4 bits say how many 16-bit words of frame check sequence end
# every frame (libpcap's LT_FCS_LENGTH_PRESENT and LT_FCS_LENGTH).
_LINKTYPE_MASK: Final = 0xFFFF
_FCS_PRESENT: Final = 0x04000000

# TCP reassembly bounds. A DNS message is at most 65535 bytes, so a flow never
# needs more than one message plus a segment buffered in order.
MAX_TCP_FLOWS = 4096
TCP_FLOW_CAP = 2 * 65537
TCP_TOTAL_CAP = 64 * 1024 * 1024
# What keeping one out-of-order segment costs beyond its payload (its bytes object,
# dictionary and heap entries), charged to the caps with it: one-byte segments ahead
# of a gap must not fill memory a hundred times faster than their payload says.
TCP_WAITING_COST = 96

_SEQ_MASK = 0xFFFFFFFF
_TCP_FIN = 0x01
_TCP_SYN = 0x02
_TCP_RST = 0x04

_PCAP_MAGIC: Final = {
    # magic bytes as stored: (record header format, fraction divisor, record header length)
    b"\xd4\xc3\xb2\xa1": ("<IIII", 1e6, 16),
    b"\xa1\xb2\xc3\xd4": (">IIII", 1e6, 16),
    b"\x4d\x3c\xb2\xa1": ("<IIII", 1e9, 16),
    b"\xa1\xb2\x3c\x4d": (">IIII", 1e9, 16),
    b"\x34\xcd\xb2\xa1": ("<IIII", 1e6, 24),  # Kuznetzov "modified" pcap
    b"\xa1\xb2\xcd\x34": (">IIII", 1e6, 24),
}
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"

# (number, ts, linktype, frame, original length)
_Record = tuple[int, float, int, bytes, int]


ANY_PORT: frozenset[int] = frozenset()  # ``--port any``: UDP is DNS when its content is


def read_dns(
    path: str,
    *,
    ports: frozenset[int] = frozenset({53}),
    on_problem: ProblemHandler | None = None,
    elsewhere: Counter[int] | None = None,
) -> Iterator[DnsPacket]:
    """Yield every DNS message in the capture at `path`, in file order.

    A UDP datagram or TCP connection counts as DNS when either port is in
    `ports`; with ``ANY_PORT`` a UDP datagram on any port counts when it reads
    as a DNS message (TCP still needs port 53 or a listed port). UDP datagrams
    that read as DNS on other ports are counted by server port in `elsewhere`,
    so a caller can say "DNS was also seen on port 5353". Skipped packets are
    reported to `on_problem` (default: logged at WARNING). Raises
    `CaptureError` at once if the file cannot be read at all.
    """
    kind = _sniff(path)
    report = _reporter(path, on_problem)
    return _stream(path, kind, frozenset(ports), report, elsewhere)


def read_many(
    paths: Sequence[str],
    *,
    ports: frozenset[int] = frozenset({53}),
    on_problem: ProblemHandler | None = None,
    elsewhere: Counter[int] | None = None,
) -> Iterator[DnsPacket]:
    """Yield the DNS messages of several captures merged in capture-time order.

    Each file is streamed; ties keep the order of `paths`. Every file is
    checked up front, so a bad path raises `CaptureError` before any output.
    """
    streams = [read_dns(p, ports=ports, on_problem=on_problem, elsewhere=elsewhere) for p in paths]
    if len(streams) == 1:
        return streams[0]  # nothing to merge: skip the heap's cost per packet
    return heapq.merge(*streams, key=operator.attrgetter("ts"))


def looks_like_dns(wire: bytes) -> bool:
    """A standard query or response with one question of class IN/CH/HS/ANY: what a resolver carries.

    Cheap enough for every UDP datagram of a capture; multicast DNS is
    excluded by its caller (by destination), not here.
    """
    if len(wire) < 17 or wire[4:6] != b"\x00\x01" or (wire[2] >> 3) & 0x0F:
        return False
    try:
        end = skip_name(wire, 12)
    except MalformedMessage:
        return False
    if wire[12] & 0xC0 or end + 4 > len(wire):  # the first name of a message cannot be a pointer
        return False
    qclass = (wire[end + 2] << 8) | wire[end + 3]
    return qclass in (1, 3, 4, 255)


# --- file formats -----------------------------------------------------------


def _sniff(path: str) -> str:
    """Return "pcap" or "pcapng", or raise CaptureError naming the file."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
            f.seek(0)
            if magic in _PCAP_MAGIC:
                linktype = dpkt.pcap.Reader(f).datalink() & _LINKTYPE_MASK
                if linktype not in SUPPORTED_LINK_TYPES:
                    raise CaptureError(f"{path}: unsupported link type {linktype}")
                return "pcap"
            if magic == _PCAPNG_MAGIC:
                dpkt.pcapng.Reader(f)
                return "pcapng"
    except OSError as e:
        raise CaptureError(f"{path}: cannot read capture: {e.strerror or e}") from e
    except (ValueError, dpkt.UnpackError, struct.error) as e:
        raise CaptureError(f"{path}: corrupt capture file header: {e}") from e
    raise CaptureError(f"{path}: not a pcap or pcapng capture file")


def _fcs_octets(linkinfo: int) -> int:
    """Octets of frame check sequence ending every frame, from a pcap link type field (0: none or unknown)."""
    if linkinfo & _FCS_PRESENT:
        return (linkinfo >> 28) * 2
    return 0


def _strip_fcs(frame: bytes, wirelen: int, fcs: int) -> tuple[bytes, int]:
    """`frame` and its original length without the trailing `fcs` octets (the part of them captured)."""
    wirelen = max(wirelen - fcs, 0)
    if len(frame) > wirelen:
        frame = frame[:wirelen]
    return frame, wirelen


def _pcap_records(f: BinaryIO, report: Callable[[int, str], None]) -> Iterator[_Record]:
    magic = f.read(4)
    f.seek(0)
    fmt, divisor, hdr_len = _PCAP_MAGIC[magic]
    linkinfo = dpkt.pcap.Reader(f).datalink()  # consumes the 24-byte file header
    linktype = linkinfo & _LINKTYPE_MASK
    fcs = _fcs_octets(linkinfo)
    unpack = struct.Struct(fmt).unpack_from
    read = f.read
    number = 0
    while True:
        hdr = read(hdr_len)
        if len(hdr) < hdr_len:
            if hdr:
                report(number + 1, "truncated packet record (file ends inside a record header)")
            return
        number += 1
        # Typed: compiled, the arithmetic and comparisons below are then on machine ints.
        fields: tuple[int, int, int, int] = unpack(hdr)
        sec, frac, caplen, wirelen = fields
        if caplen > _MAX_RECORD:
            # The record header is garbage; there is no way to find the next one.
            report(number, f"corrupt packet record (captured length {caplen}); "
                           "rest of file skipped")
            return
        frame = read(caplen)
        if len(frame) < caplen:
            report(number, "truncated packet record (file ends inside packet data)")
            return
        if fcs:
            frame, wirelen = _strip_fcs(frame, wirelen, fcs)
        yield number, sec + frac / divisor, linktype, frame, wirelen


@dataclass(slots=True)
class _Interface:
    linktype: int
    divisor: float
    offset: int  # seconds added to every timestamp (if_tsoffset)
    fcs: int = 0  # octets of frame check sequence ending every frame (if_fcslen)


_OPT_IF_FCSLEN: Final = 13


def _interface(idb: dpkt.pcapng.InterfaceDescriptionBlock, le: bool) -> _Interface:
    divisor, offset, fcs = 1e6, 0, 0
    for opt in idb.opts:
        if opt.code == dpkt.pcapng.PCAPNG_OPT_IF_TSRESOL and opt.data:
            res = opt.data[0]
            divisor = float((2 if res & 0x80 else 10) ** (res & 0x7F))
        elif opt.code == dpkt.pcapng.PCAPNG_OPT_IF_TSOFFSET and len(opt.data) == 8:
            offset = struct.unpack("<q" if le else ">q", opt.data)[0]
        elif opt.code == _OPT_IF_FCSLEN and opt.data:
            fcs = opt.data[0]
    return _Interface(idb.linktype, divisor, offset, fcs)


def _pcapng_records(f: BinaryIO, report: Callable[[int, str], None]) -> Iterator[_Record]:
    first = dpkt.pcapng.Reader(f)  # validates the SHB and consumes it and the first IDB
    le = isinstance(first.idb, dpkt.pcapng.InterfaceDescriptionBlockLE)
    interfaces = [_interface(first.idb, le)]
    unsupported: set[int] = set()
    block_hdr = struct.Struct("<II" if le else ">II")
    epb = struct.Struct("<IIIII" if le else ">IIIII")
    read = f.read
    number = 0
    ts = 0.0
    while True:
        hdr = read(8)
        if len(hdr) < 8:
            if hdr:
                report(number + 1, "truncated packet record (file ends inside a block header)")
            return
        btype, blen = block_hdr.unpack(hdr)
        if btype == dpkt.pcapng.PCAPNG_BT_SHB:
            # A new section (e.g. concatenated files) may switch byte order.
            bom = read(4)
            if len(bom) < 4:
                report(number + 1, "truncated packet record (file ends inside a section header)")
                return
            le = bom == b"\x4d\x3c\x2b\x1a"
            block_hdr = struct.Struct("<II" if le else ">II")
            epb = struct.Struct("<IIIII" if le else ">IIIII")
            blen = block_hdr.unpack(hdr)[1]
            if blen < 28 or blen % 4 or blen > _MAX_BLOCK:
                report(number + 1, f"corrupt pcapng section header (length {blen}); "
                                   "rest of file skipped")
                return
            body = bom + read(max(blen - 12, 0))
            interfaces = []
            if len(body) < blen - 8:
                report(number + 1, "truncated packet record (file ends inside a section header)")
                return
            continue
        if blen < 12 or blen % 4 or blen > _MAX_BLOCK:
            report(number + 1, f"corrupt pcapng block (length {blen}); rest of file skipped")
            return
        body = read(blen - 8)
        if len(body) < blen - 8:
            report(number + 1, "truncated packet record (file ends inside a block)")
            return
        if btype == dpkt.pcapng.PCAPNG_BT_EPB:
            number += 1
            if blen < _MIN_EPB:  # too short for its fixed fields; the next block is intact
                report(number, f"corrupt pcapng block (enhanced packet block of length {blen})")
                continue
            iface_id, ts_high, ts_low, caplen, wirelen = epb.unpack_from(body)
            if caplen > blen - 32:
                report(number, f"corrupt packet record (captured length {caplen})")
                continue
            frame = body[20 : 20 + caplen]
        elif btype == dpkt.pcapng.PCAPNG_BT_SPB:
            number += 1
            if blen < _MIN_SPB:
                report(number, f"corrupt pcapng block (simple packet block of length {blen})")
                continue
            iface_id, ts_high, ts_low = 0, -1, 0  # no timestamp: keep the previous one
            wirelen = block_hdr.unpack_from(body)[0]
            frame = body[4 : 4 + min(wirelen, blen - 16)]
        elif btype == dpkt.pcapng.PCAPNG_BT_PB:
            number += 1
            if blen < _MIN_EPB:
                report(number, f"corrupt pcapng block (packet block of length {blen})")
                continue
            fields = struct.unpack_from("<HHIIII" if le else ">HHIIII", body)
            iface_id, _, ts_high, ts_low, caplen, wirelen = fields
            if caplen > blen - 32:
                report(number, f"corrupt packet record (captured length {caplen})")
                continue
            frame = body[20 : 20 + caplen]
        elif btype == dpkt.pcapng.PCAPNG_BT_IDB:
            cls = (
                dpkt.pcapng.InterfaceDescriptionBlockLE if le
                else dpkt.pcapng.InterfaceDescriptionBlock
            )
            try:
                interfaces.append(_interface(cls(hdr + body), le))
            except (dpkt.UnpackError, struct.error, ValueError):
                report(number + 1, "corrupt pcapng interface description block")
                interfaces.append(_Interface(-1, 1e6, 0))
            continue
        else:
            continue  # name resolution, statistics, journal ... blocks
        if iface_id >= len(interfaces):
            report(number, f"packet refers to undefined interface {iface_id}")
            continue
        iface = interfaces[iface_id]
        if ts_high >= 0:
            ts = iface.offset + ((ts_high << 32) | ts_low) / iface.divisor
        if iface.linktype not in SUPPORTED_LINK_TYPES:
            if iface_id not in unsupported:
                unsupported.add(iface_id)
                report(number, f"unsupported link type {iface.linktype} on interface "
                               f"{iface_id}; its packets are skipped")
            continue
        if iface.fcs:
            frame, wirelen = _strip_fcs(frame, wirelen, iface.fcs)
        yield number, ts, iface.linktype, frame, wirelen


# --- decoding ---------------------------------------------------------------


def _reporter(path: str, on_problem: ProblemHandler | None) -> Callable[[int, str], None]:
    def report(number: int, message: str) -> None:
        problem = CaptureProblem(path, number, message)
        if on_problem is None:
            logger.warning("%s: packet %d: %s", path, number, message)
        else:
            on_problem(problem)

    return report


def _stream(
    path: str, kind: str, ports: frozenset[int], report: Callable[[int, str], None],
    elsewhere: Counter[int] | None = None,
) -> Iterator[DnsPacket]:
    with open(path, "rb", buffering=1 << 20) as f:
        records = _pcap_records(f, report) if kind == "pcap" else _pcapng_records(f, report)
        decoder = _Decoder(ports, report, elsewhere)
        out = decoder.out
        decode = decoder.frame
        for number, ts, linktype, frame, wirelen in records:
            decode(number, ts, linktype, frame, wirelen)
            if out:
                yield from out
                out.clear()
        decoder.fragments.finish()
        decoder.tcp.finish()


class _Decoder:
    """Link, IP and transport headers of one frame -> DnsPackets appended to `out`."""

    def __init__(self, ports: frozenset[int], report: Callable[[int, str], None],
                 elsewhere: Counter[int] | None = None) -> None:
        self.ports = ports or frozenset({53})  # ANY_PORT: 53 for TCP, content for UDP
        self.by_content = not ports
        self.elsewhere = elsewhere
        self.report = report
        self.out: list[DnsPacket] = []
        self.tcp = _TcpStreams(report, self.out)
        self.fragments = _Fragments(report)
        self._names: dict[bytes, str] = {}

    def address(self, raw: bytes) -> str:
        name = self._names.get(raw)
        if name is None:
            if len(self._names) > 65536:
                self._names.clear()
            family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
            name = self._names[raw] = socket.inet_ntop(family, raw)
        return name

    def frame(self, number: int, ts: float, linktype: int, data: bytes, wirelen: int) -> None:
        try:
            self._frame(number, ts, linktype, data, wirelen)
        except (IndexError, struct.error):
            # A header ran past the end of the captured bytes.
            if len(data) < wirelen:
                self.report(number, "packet truncated by capture snap length")
            else:
                self.report(number, "truncated or corrupt packet headers")

    def _frame(self, number: int, ts: float, linktype: int, data: bytes, wirelen: int) -> None:
        # Link layer: find the ethertype and where the IP header starts.
        if linktype == _LINK_ETHERNET:
            off = 14
            etype = (data[12] << 8) | data[13]
            while etype in _ETH_VLAN:  # 802.1Q / 802.1ad tags, possibly stacked
                etype = (data[off + 2] << 8) | data[off + 3]
                off += 4
        elif linktype == _LINK_SLL2:
            off = 20
            etype = (data[0] << 8) | data[1]
        elif linktype == _LINK_SLL:
            off = 16
            etype = (data[14] << 8) | data[15]
        elif linktype in _LINK_RAW:
            off = 0
            version = data[0] >> 4
            etype = _ETH_IPV4 if version == 4 else _ETH_IPV6 if version == 6 else 0
            if not etype:
                self.report(number, "not an IP packet")
                return
        else:  # _LINK_NULL, _LINK_LOOP
            off = 4
            family = data[0:4]
            af = int.from_bytes(family, "little") if linktype == _LINK_NULL else 0
            af_be = int.from_bytes(family, "big")
            if af == 2 or af_be == 2:
                etype = _ETH_IPV4
            elif af in _AF_INET6 or af_be in _AF_INET6:
                etype = _ETH_IPV6
            else:
                self.report(number, "not an IP packet")
                return
        if linktype in (_LINK_SLL, _LINK_SLL2):
            while etype in _ETH_VLAN:
                etype = (data[off + 2] << 8) | data[off + 3]
                off += 4

        # Network layer.
        if etype == _ETH_IPV4:
            vihl = data[off]
            ihl = (vihl & 0x0F) * 4
            if vihl >> 4 != 4 or ihl < 20:
                self.report(number, "corrupt IPv4 header")
                return
            total = (data[off + 2] << 8) | data[off + 3]
            # Total length 0 is what segmentation offload leaves in a capture.
            end = off + total if total else len(data)
            if total and total < ihl:
                self.report(number, "corrupt IPv4 header (total length)")
                return
            proto = data[off + 9]
            src = data[off + 12 : off + 16]
            dst = data[off + 16 : off + 20]
            l4 = off + ihl
            frag = ((data[off + 6] << 8) | data[off + 7]) & 0x3FFF
            if frag:
                ident = data[off + 4 : off + 6]
                self._fragment(number, ts, data, wirelen, 4, src, dst, ident, proto,
                               (frag & 0x1FFF) * 8, bool(frag & 0x2000), l4, end)
                return
        elif etype == _ETH_IPV6:
            if data[off] >> 4 != 6:
                self.report(number, "corrupt IPv6 header")
                return
            plen = (data[off + 4] << 8) | data[off + 5]
            proto = data[off + 6]
            src = data[off + 8 : off + 24]
            dst = data[off + 24 : off + 40]
            l4 = off + 40
            end = l4 + plen if plen else len(data)
            proto, l4 = _ipv6_headers(data, proto, l4)
            if proto == _IPV6_FRAGMENT:
                proto = data[l4]
                fo = (data[l4 + 2] << 8) | data[l4 + 3]
                ident = data[l4 + 4 : l4 + 8]
                l4 += 8
                if fo & 0xFFF9:  # offset or more-fragments: not an atomic fragment
                    self._fragment(number, ts, data, wirelen, 6, src, dst, ident, proto,
                                   fo & 0xFFF8, bool(fo & 1), l4, end)
                    return
                # An atomic fragment is a whole datagram; destination options may follow.
                proto, l4 = _ipv6_headers(data, proto, l4)
                if proto == _IPV6_FRAGMENT:
                    self.report(number, "IPv6 packet with two fragment headers")
                    return
        else:
            return  # ARP, LLDP, ...: not IP, nothing to report
        self._transport(number, ts, data, wirelen, proto, src, dst, l4, end)

    def _transport(self, number: int, ts: float, data: bytes, wirelen: int, proto: int,
                   src: bytes, dst: bytes, l4: int, end: int) -> None:
        if proto != _PROTO_UDP and proto != _PROTO_TCP:
            return
        sport = (data[l4] << 8) | data[l4 + 1]
        dport = (data[l4 + 2] << 8) | data[l4 + 3]
        # Multicast (mDNS on 5353, LLMNR) is hosts announcing themselves, never a resolver's traffic.
        multicast = dst[0] & 0xF0 == 0xE0 if len(dst) == 4 else dst[0] == 0xFF
        if multicast:
            return
        if sport not in self.ports and dport not in self.ports:
            if proto != _PROTO_UDP or (not self.by_content and self.elsewhere is None):
                return
            if not looks_like_dns(data[l4 + 8 : end]):
                return
            if not self.by_content:
                assert self.elsewhere is not None
                self.elsewhere[sport if data[l4 + 10] & 0x80 else dport] += 1  # the server's port
                return
        if end > len(data):
            self._short(number, data, wirelen)
            return
        if proto == _PROTO_UDP:
            ulen = (data[l4 + 4] << 8) | data[l4 + 5]
            if ulen < 8 or l4 + ulen > end:
                self.report(number, f"corrupt UDP header (length {ulen})")
                return
            wire = data[l4 + 8 : l4 + ulen]
            if len(wire) < 12:
                self.report(number, f"DNS message shorter than 12 bytes ({len(wire)})")
                return
            self.out.append(DnsPacket(number, ts, self.address(src), sport, self.address(dst),
                                      dport, "udp", wire, wire[2] >= 0x80))
        else:
            seq = int.from_bytes(data[l4 + 4 : l4 + 8], "big")
            doff = (data[l4 + 12] >> 4) * 4
            if doff < 20 or l4 + doff > end:
                self.report(number, "corrupt TCP header")
                return
            self.tcp.segment(number, ts, self.address(src), sport, self.address(dst), dport,
                             seq, data[l4 + 13], data[l4 + doff : end])

    def _short(self, number: int, data: bytes, wirelen: int) -> None:
        if len(data) < wirelen:
            self.report(number, "packet truncated by capture snap length")
        else:
            self.report(number, "truncated IP packet (shorter than its length field)")

    def _fragment(self, number: int, ts: float, data: bytes, wirelen: int, version: int,
                  src: bytes, dst: bytes, ident: bytes, proto: int, offset: int, more: bool,
                  l4: int, end: int) -> None:
        # IPv6: destination options (RFC 8200 section 4.5) may sit between the
        # fragment header and UDP; they are part of the fragmented payload.
        ipv6_ext = version == 6 and (proto in _IPV6_EXT or proto == _IPV6_AH)
        if proto != _PROTO_UDP and proto != _PROTO_TCP and not ipv6_ext:
            return
        if end > len(data):
            self._short(number, data, wirelen)
            return
        key = (version, src, dst, ident, proto)
        payload = self.fragments.add(number, key, offset, more, data[l4:end])
        if payload is None:
            return
        start = 0
        if ipv6_ext:
            proto, start = _ipv6_headers(payload, proto, 0)
            if proto == _IPV6_FRAGMENT:
                self.report(number, "IPv6 packet with two fragment headers")
                return
        self._transport(number, ts, payload, wirelen, proto, src, dst, start, len(payload))


def _ipv6_headers(data: bytes, proto: int, at: int) -> tuple[int, int]:
    """Step over IPv6 extension headers from `at`: (next protocol, where its header starts).

    Stops at the fragment header, which the caller reads itself.
    """
    while proto in _IPV6_EXT or proto == _IPV6_AH:
        size = (data[at + 1] + 2) * 4 if proto == _IPV6_AH else (data[at + 1] + 1) * 8
        proto = data[at]
        at += size
    return proto, at


# IP fragment reassembly bounds. A datagram's payload is at most 65535 bytes (the
# IPv4 total length and the IPv6 payload length are 16 bits), so that bounds what
# one datagram holds; the total bounds all of them together.
MAX_FRAGMENTED_DATAGRAMS = 256
FRAGMENT_DATAGRAM_CAP = 65535
FRAGMENT_TOTAL_CAP = 8 * 1024 * 1024

_FragmentKey = tuple[int, bytes, bytes, bytes, int]  # IP version, source, destination, id, protocol


class _Datagram:
    """The fragments of one IP datagram received so far, laid out at their offsets."""

    __slots__ = ("covered", "data", "have", "number", "total")

    def __init__(self, number: int) -> None:
        self.data = bytearray()  # payload bytes at their offsets; zeros where nothing came yet
        self.have = bytearray()  # 1 for each byte of `data` some fragment supplied
        self.covered = 0  # how many bytes of `data` were supplied: the ones in `have`
        self.total = -1  # payload length, once the last fragment came
        self.number = number  # first packet, for problem reports


class _Fragments:
    """Bounded IP fragment reassembly (enough for large UDP DNS responses).

    Each fragment costs work in proportion to its own length, whatever the
    number of fragments before it: its bytes go straight into the datagram's
    buffer, and a byte mask counts how many of the datagram's bytes are there.
    Overlapping fragments are allowed; where they disagree, the later one's
    bytes are kept. Fragments that contradict the datagram's length drop it.
    """

    def __init__(self, report: Callable[[int, str], None]) -> None:
        self.report = report
        self.pending: dict[_FragmentKey, _Datagram] = {}  # oldest first
        self.held = 0  # len(data) over every pending datagram

    def add(self, number: int, key: _FragmentKey, offset: int, more: bool,
            chunk: bytes) -> bytes | None:
        """Add one fragment; return the whole payload when this one completes it."""
        end = offset + len(chunk)
        if end > FRAGMENT_DATAGRAM_CAP:
            self.report(number, f"IP fragment ends past 65535 bytes (at {end}); skipped")
            return None
        dgram = self.pending.get(key)
        if dgram is None:
            if len(self.pending) >= MAX_FRAGMENTED_DATAGRAMS:
                self._drop(next(iter(self.pending)), "IP fragments never completed; dropped")
            dgram = self.pending[key] = _Datagram(number)
        # Bytes past the end the last fragment gave, or a last fragment ending
        # before bytes already there: the fragments contradict each other (Linux
        # drops such a datagram too). Past this, len(data) never exceeds total.
        if dgram.total >= 0:
            contradicts = end > dgram.total or (not more and end != dgram.total)
        else:
            contradicts = not more and end < len(dgram.data)
        if contradicts:
            self._drop(key, "IP fragments disagree on the datagram's length; dropped")
            return None
        if not more:
            dgram.total = end
        grow = end - len(dgram.data)
        if grow > 0:
            dgram.data.extend(bytes(grow))
            dgram.have.extend(bytes(grow))
            self.held += grow
        have = dgram.have
        dgram.covered += len(chunk) - have.count(1, offset, end)
        have[offset:end] = b"\x01" * len(chunk)
        dgram.data[offset:end] = chunk
        if dgram.covered == dgram.total:  # every byte of [0, total) is there
            del self.pending[key]
            self.held -= len(dgram.data)
            return bytes(dgram.data)
        while self.held > FRAGMENT_TOTAL_CAP:
            self._drop(next(iter(self.pending)),
                       "IP fragments never completed (too many bytes waiting); dropped")
        return None

    def _drop(self, key: _FragmentKey, why: str) -> None:
        dgram = self.pending.pop(key)
        self.held -= len(dgram.data)
        self.report(dgram.number, why)

    def finish(self) -> None:
        """Report datagrams still missing fragments; called at end of file."""
        for key in list(self.pending):
            self._drop(key, "IP fragments never completed at end of file")


class _Flow:
    """One direction of a TCP connection: in-order bytes not yet framed."""

    __slots__ = ("broken", "buf", "next_seq", "number", "pending", "pending_bytes", "pos", "waiting")

    def __init__(self, next_seq: int, number: int) -> None:
        self.next_seq = next_seq
        # Bytes taken in order since the flow began: an unbounded count, so that
        # positions of waiting segments compare without sequence-number wrap.
        self.pos = 0
        self.buf = bytearray()
        self.pending: dict[int, bytes] = {}  # out-of-order segments by stream position
        self.waiting: list[int] = []  # the keys of `pending`, a heap: the nearest first
        self.pending_bytes = 0
        self.broken = False  # a gap we cannot bridge: ignore until a new SYN
        self.number = number  # last packet seen, for problem reports

    def size(self) -> int:
        return len(self.buf) + self.pending_bytes

    def take(self, data: bytes, skip: int) -> None:
        """Append `data` to the in-order bytes, but for its first `skip` bytes, already there."""
        self.buf += data[skip:] if skip else data
        self.pos += len(data) - skip
        self.next_seq = (self.next_seq + len(data) - skip) & _SEQ_MASK


def _seq_diff(a: int, b: int) -> int:
    """a - b in sequence space, as a signed 32-bit number."""
    d = (a - b) & _SEQ_MASK
    return d - 0x100000000 if d & 0x80000000 else d


class _TcpStreams:
    """Per-direction TCP reassembly and DNS length-prefix framing.

    Simple and robust rather than a full TCP: bytes already delivered are
    trimmed (retransmissions, overlaps), segments ahead of the next expected
    byte wait until the gap fills. Flows are kept in LRU order and bounded.
    """

    def __init__(self, report: Callable[[int, str], None], out: list[DnsPacket]) -> None:
        self.report = report
        self.out = out
        self.flows: dict[tuple[str, int, str, int], _Flow] = {}
        self.buffered = 0

    def segment(self, number: int, ts: float, src: str, sport: int, dst: str, dport: int,
                seq: int, flags: int, payload: bytes) -> None:
        key = (src, sport, dst, dport)
        flows = self.flows
        flow = flows.pop(key, None)
        before = flow.size() if flow is not None else 0
        if flags & _TCP_RST:
            if flow is not None:
                self._drop(flow, "TCP connection reset inside a DNS message")
                self.buffered -= before
            return
        if flags & _TCP_SYN:
            seq = (seq + 1) & _SEQ_MASK  # SYN takes one sequence number
            if flow is None or (flow.next_seq != seq and not flow.buf and not flow.pending):
                flow = _Flow(seq, number)
            elif flow.next_seq != seq:  # port reuse with data left over
                self._drop(flow, "TCP connection reopened inside a DNS message")
                self.buffered -= before
                before = 0
                flow = _Flow(seq, number)
        elif flow is None:
            if not payload:
                return
            flow = _Flow(seq, number)  # capture began mid-connection
        flows[key] = flow  # most recently used last
        flow.number = number
        if payload and not flow.broken:
            self._add(flow, seq, payload)
            self._frame(flow, number, ts, src, sport, dst, dport)
        self.buffered += flow.size() - before
        if len(flows) > MAX_TCP_FLOWS or self.buffered > TCP_TOTAL_CAP:
            self._evict()

    def _add(self, flow: _Flow, seq: int, payload: bytes) -> None:
        ahead = _seq_diff(seq, flow.next_seq)
        if ahead > 0:
            if ahead + len(payload) > TCP_FLOW_CAP or flow.pending_bytes > TCP_FLOW_CAP:
                self._drop(flow, "TCP stream gap (segment missing from capture); "
                                 "connection skipped")
                flow.broken = True
                return
            at = flow.pos + ahead
            old = flow.pending.get(at)
            if old is None:
                heapq.heappush(flow.waiting, at)
                flow.pending[at] = payload
                flow.pending_bytes += len(payload) + TCP_WAITING_COST
            elif len(old) < len(payload):
                flow.pending[at] = payload
                flow.pending_bytes += len(payload) - len(old)
            return
        if len(payload) > -ahead:
            flow.take(payload, -ahead)
        # Out-of-order segments that now fit, nearest first: each is looked at
        # once, however many wait behind it.
        waiting = flow.waiting
        while waiting and waiting[0] <= flow.pos:
            at = heapq.heappop(waiting)
            chunk = flow.pending.pop(at)
            flow.pending_bytes -= len(chunk) + TCP_WAITING_COST
            behind = flow.pos - at
            if len(chunk) > behind:
                flow.take(chunk, behind)

    def _frame(self, flow: _Flow, number: int, ts: float, src: str, sport: int, dst: str,
               dport: int) -> None:
        buf = flow.buf
        pos = 0
        avail = len(buf)
        while avail - pos >= 2:
            size = (buf[pos] << 8) | buf[pos + 1]
            if avail - pos - 2 < size:
                break
            wire = bytes(buf[pos + 2 : pos + 2 + size])
            pos += 2 + size
            if size < 12:
                self.report(number, f"DNS message shorter than 12 bytes ({size})")
                continue
            self.out.append(DnsPacket(number, ts, src, sport, dst, dport, "tcp", wire,
                                      wire[2] >= 0x80))
        if pos:
            del buf[:pos]

    def _drop(self, flow: _Flow, why: str) -> None:
        if flow.buf or flow.pending:
            self.report(flow.number, why)
        flow.buf = bytearray()
        flow.pending = {}
        flow.waiting = []
        flow.pending_bytes = 0

    def _evict(self) -> None:
        flows = self.flows
        while flows and (len(flows) > MAX_TCP_FLOWS or self.buffered > TCP_TOTAL_CAP):
            flow = flows.pop(next(iter(flows)))
            self.buffered -= flow.size()
            self._drop(flow, "TCP flow evicted (too many open flows) inside a DNS message")

    def finish(self) -> None:
        """Report flows that end inside a message; called at end of file."""
        for flow in self.flows.values():
            if flow.pending:
                self._drop(flow, "TCP stream gap (segment missing from capture) at end of file")
            elif flow.buf:
                self._drop(flow, "TCP stream ends inside a DNS message")
        self.flows.clear()
        self.buffered = 0


def is_capture(path: str) -> bool:
    """True when the file starts like a pcap or pcapng capture (magic number only)."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError:
        return False
    return magic in _PCAP_MAGIC or magic == _PCAPNG_MAGIC


def utc_text(ts: float, fmt: str = "%Y-%m-%dT%H:%M:%SZ") -> str:
    """A capture time as UTC text in ``fmt`` (strftime).

    A capture's clock is whatever its writer put there: a pcapng interface's
    ``if_tsresol`` or ``if_tsoffset`` can put a packet billions of years away.
    A time outside the calendar (years 1 to 9999) is shown as seconds from the
    epoch, ``@4.61e+18s``, instead of failing.
    """
    try:
        return datetime.fromtimestamp(ts, UTC).strftime(fmt)
    except (OverflowError, OSError, ValueError):
        return f"@{ts:.3g}s"
