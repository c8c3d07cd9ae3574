"""Link type fields with FCS bits, and IPv6 extension headers after a Fragment header."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from resolver.offline.capture import CaptureProblem, DnsPacket, read_dns
from tests.support.frames import (
    eth,
    ip4,
    ip6,
    ipv6_fragment,
    ipv6_options,
    pcap,
    query,
    tcp,
    udp,
    write,
)

FCS = b"\xde\xad\xbe\xef"
ETH_IPV6 = 0x86DD
DEST_OPTIONS = 60
FRAGMENT = 44


def _read(path: str) -> tuple[list[DnsPacket], list[CaptureProblem]]:
    problems: list[CaptureProblem] = []
    return list(read_dns(path, on_problem=problems.append)), problems


# --- FCS bits in a pcap header's link type field ------------------------------


@pytest.mark.parametrize("linkinfo", [
    0x10000001,  # upper bits set, the "P" bit not: FCS length unknown
    0x24000001,  # P bit, 2 16-bit words: a 4-byte FCS
])
def test_link_type_is_the_low_16_bits(tmp_path: Path, linkinfo: int) -> None:
    # UDP's length bounds the message: a trailing FCS never joins it.
    path = write(tmp_path / "fcs.pcap", pcap([eth(ip4(udp(query()))) + FCS], linkinfo))
    packets, problems = _read(path)
    assert problems == []
    assert [p.wire for p in packets] == [query()]


def test_fcs_length_from_the_link_type_field_is_stripped(tmp_path: Path) -> None:
    # An IPv4 total length of 0 (segmentation offload) ends the packet at the
    # frame's end: only the FCS length of the header keeps the FCS out of the stream.
    message = query()
    frames = [
        eth(ip4(tcp(b"", 999, flags=0x02), proto=6)) + FCS,
        eth(ip4(tcp(struct.pack(">H", len(message)) + message, 1000), proto=6, total=0)) + FCS,
    ]
    packets, problems = _read(write(tmp_path / "tso.pcap", pcap(frames, 0x24000001)))
    assert problems == []  # not "TCP stream ends inside a DNS message"
    assert [(p.transport, p.wire) for p in packets] == [("tcp", message)]


def test_fcs_length_never_cuts_into_a_snapped_frame(tmp_path: Path) -> None:
    # A record whose captured length is short of the original one lost the FCS
    # (and more) to the snap length: nothing of the frame is taken off.
    frame = eth(ip4(udp(query())))
    content = bytearray(pcap([frame], 0x24000001))
    struct.pack_into("<I", content, 24 + 12, len(frame) + 4 + 100)  # original length: FCS and 100 more
    packets, problems = _read(write(tmp_path / "snap.pcap", bytes(content)))
    assert problems == []
    assert [p.wire for p in packets] == [query()]


# --- IPv6: headers after the Fragment header ----------------------------------


def test_destination_options_after_an_atomic_fragment_header(tmp_path: Path) -> None:
    # RFC 8200 4.1: Destination Options may follow the Fragment header.
    packet = ip6(ipv6_fragment(DEST_OPTIONS, 0, False, 9) + ipv6_options(17) + udp(query()), FRAGMENT)
    packets, problems = _read(write(tmp_path / "atomic.pcap", pcap([eth(packet, ETH_IPV6)])))
    assert problems == []
    assert [(p.src, p.dst, p.wire) for p in packets] == [("fd00::2", "fd00::1", query())]


def test_destination_options_inside_a_fragmented_datagram(tmp_path: Path) -> None:
    # The options header is part of the fragmentable part: it is in the first
    # fragment's payload and is read after reassembly.
    message = query("a-rather-long-name-to-split.example.com")
    payload = ipv6_options(17) + udp(message)
    cut = 24  # a multiple of 8
    frames = [
        eth(ip6(ipv6_fragment(DEST_OPTIONS, cut, False, 7) + payload[cut:], FRAGMENT), ETH_IPV6),
        eth(ip6(ipv6_fragment(DEST_OPTIONS, 0, True, 7) + payload[:cut], FRAGMENT), ETH_IPV6),
    ]
    packets, problems = _read(write(tmp_path / "frag.pcap", pcap(frames)))
    assert problems == []
    assert [(p.number, p.wire) for p in packets] == [(2, message)]


def test_two_fragment_headers_are_reported(tmp_path: Path) -> None:
    inner = ipv6_fragment(17, 0, False, 2) + udp(query())
    packet = ip6(ipv6_fragment(DEST_OPTIONS, 0, False, 1) + ipv6_options(FRAGMENT) + inner, FRAGMENT)
    packets, problems = _read(write(tmp_path / "two.pcap", pcap([eth(packet, ETH_IPV6)])))
    assert packets == []
    assert [p.message for p in problems] == ["IPv6 packet with two fragment headers"]
