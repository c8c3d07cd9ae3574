"""pcapng blocks too short for their fixed fields, and arbitrary blocks: reported, never raised.

A block whose length is a multiple of 4 and at least 12 is still framed (the
next block starts where it says), so the reader reports it and goes on; a
length below 12 or not a multiple of 4 leaves no way to the next block.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resolver.offline.capture import CaptureProblem, DnsPacket, read_dns
from tests.support.frames import eth, ip4, ng_block, ng_epb, ng_idb, ng_option, ng_shb, query, tcp, udp, write

FRAME = eth(ip4(udp(query())))


def _read(path: str) -> tuple[list[DnsPacket], list[CaptureProblem]]:
    problems: list[CaptureProblem] = []
    return list(read_dns(path, on_problem=problems.append)), problems


def _short_block(btype: int, size: int) -> bytes:
    """A block of `size` bytes: its type and length, `size - 12` zero bytes, its length again."""
    return struct.pack("<II", btype, size) + b"\x00" * (size - 12) + struct.pack("<I", size)


@pytest.mark.parametrize(("btype", "size", "what"), [
    (6, 12, "enhanced packet block of length 12"),
    (6, 16, "enhanced packet block of length 16"),
    (6, 28, "enhanced packet block of length 28"),
    (2, 12, "packet block of length 12"),
    (2, 28, "packet block of length 28"),
    (3, 12, "simple packet block of length 12"),
])
def test_packet_block_shorter_than_its_fixed_fields(tmp_path: Path, btype: int, size: int, what: str) -> None:
    path = write(tmp_path / "short.pcapng",
                 ng_shb() + ng_idb() + ng_epb(FRAME) + _short_block(btype, size) + ng_epb(FRAME))
    packets, problems = _read(path)
    assert [p.number for p in packets] == [1, 3]  # the packet after it is read
    assert [(p.number, p.message) for p in problems] == [(2, f"corrupt pcapng block ({what})")]


def test_smallest_well_formed_packet_blocks_are_read(tmp_path: Path) -> None:
    # An empty EPB is 32 bytes, an empty SPB 16: no frame, so nothing to decode.
    spb = ng_block(3, struct.pack("<I", len(FRAME)) + FRAME)
    path = write(tmp_path / "min.pcapng",
                 ng_shb() + ng_idb() + ng_epb(b"") + _short_block(3, 16) + spb)
    packets, problems = _read(path)
    assert [p.number for p in packets] == [3]
    assert [p.message for p in problems] == ["truncated or corrupt packet headers"] * 2


_BLOCK_TYPES = st.sampled_from([1, 2, 3, 4, 5, 6, 0x0A0D0D0A, 0x00000BAD])


@st.composite
def _blocks(draw: st.DrawFn) -> bytes:
    """A block with any type, any declared length and any body (often a consistent one)."""
    btype = draw(_BLOCK_TYPES)
    body = draw(st.binary(max_size=64))
    consistent = draw(st.booleans())
    size = 12 + len(body) + (-len(body) % 4) if consistent else draw(st.integers(0, 2**32 - 1))
    body += b"\x00" * (-len(body) % 4)
    return struct.pack("<II", btype, size) + body + struct.pack("<I", size)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blocks=st.lists(st.one_of(_blocks(), st.just(ng_epb(FRAME))), max_size=6))
def test_arbitrary_blocks_are_reported_never_raised(tmp_path: Path, blocks: list[bytes]) -> None:
    path = write(tmp_path / "any.pcapng", ng_shb() + ng_idb() + b"".join(blocks))
    packets, problems = _read(path)  # anything but a CaptureProblem would raise here
    assert all(p.wire == FRAME[42:] for p in packets)
    assert all(isinstance(p.message, str) for p in problems)


def test_interface_fcs_length_is_stripped(tmp_path: Path) -> None:
    # if_fcslen (option 13) = 4: every frame ends with a 4-byte FCS. With an IPv4
    # total length of 0 (segmentation offload) the frame's end is the packet's
    # end: without the option, the FCS would go into the TCP stream.
    message = query()
    fcs = b"\xde\xad\xbe\xef"
    syn = eth(ip4(tcp(b"", 999, flags=0x02), proto=6)) + fcs
    data = eth(ip4(tcp(struct.pack(">H", len(message)) + message, 1000), proto=6, total=0)) + fcs
    idb = ng_idb(options=ng_option(13, b"\x04"))
    path = write(tmp_path / "fcs.pcapng", ng_shb() + idb + ng_epb(syn) + ng_epb(data))
    packets, problems = _read(path)
    assert problems == []  # not "TCP stream ends inside a DNS message"
    assert [(p.transport, p.wire) for p in packets] == [("tcp", message)]
