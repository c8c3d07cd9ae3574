"""resolver.offline.capture against real captures (tests/data/captures, made by make_captures.sh).

eth.pcap is the reference: NSD on loopback (MTU 1280) in a private namespace,
captured by tcpdump while dig and a small client queried it:

- UDP/IPv4: a A, b AAAA, big TXT (answer fragmented), nx A; UDP/IPv6: a A;
  a final UDP/IPv4 ns A
- TCP/IPv4, one connection (dig +keepopen): a A, c A, big TXT (answer spans
  three segments); TCP/IPv6: c A
- TCP/IPv4: d1 and d2 written in one segment; e written in three segments,
  the first split inside the 2-byte length prefix

The other fixtures are the same traffic on other link types or rewritten
(VLAN tags, reordered segments, corrupt records).
"""

from __future__ import annotations

import glob
import shutil
import struct
import subprocess
from collections import Counter
from pathlib import Path

import dns.message
import dpkt
import pytest

from resolver.offline import capture
from resolver.offline.capture import CaptureError, CaptureProblem, DnsPacket, read_dns, read_many

DATA = Path(__file__).resolve().parents[1] / "data" / "captures"
ETH = str(DATA / "eth.pcap")
CORPUS = sorted(glob.glob(str(Path(__file__).resolve().parents[1] / "data" / "corpus" / "*.pcap")))

UDP_QUERIES = ["a", "b", "big", "nx", "a", "big", "ns"]
TCP_QUERIES = ["a", "c", "big", "c", "d1", "d2", "e"]


def _read(path: str | Path, **kw: object) -> tuple[list[DnsPacket], list[CaptureProblem]]:
    problems: list[CaptureProblem] = []
    packets = list(read_dns(str(path), on_problem=problems.append, **kw))  # type: ignore[arg-type]
    return packets, problems


def _qname(pkt: DnsPacket) -> str:
    return dns.message.from_wire(pkt.wire).question[0].name.to_text().removesuffix(
        ".example.test."
    )


def _flow_view(packets: list[DnsPacket]) -> list[tuple[object, ...]]:
    """What must survive a change of link type or segment order."""
    return [(p.src, p.sport, p.dst, p.dport, p.transport, p.wire, p.is_response)
            for p in packets]


@pytest.fixture(scope="module")
def eth() -> list[DnsPacket]:
    packets, problems = _read(ETH)
    assert problems == []
    return packets


# --- the reference capture -----------------------------------------------------


def test_reference_capture_yields_every_query_and_answer(eth: list[DnsPacket]) -> None:
    for transport, expected in (("udp", UDP_QUERIES), ("tcp", TCP_QUERIES)):
        queries = [_qname(p) for p in eth if p.transport == transport and not p.is_response]
        answers = [_qname(p) for p in eth if p.transport == transport and p.is_response]
        assert queries == expected
        assert sorted(answers) == sorted(expected)
    for p in eth:
        msg = dns.message.from_wire(p.wire)
        assert p.is_response == bool(msg.flags & dns.flags.QR)
        assert (p.sport == 53) == p.is_response
        assert p.number >= 1
        assert p.ts > 1_600_000_000
    assert [p.ts for p in eth] == sorted(p.ts for p in eth)
    assert {p.src for p in eth} == {"127.0.0.1", "::1"}


@pytest.mark.parametrize("server", ["127.0.0.1", "::1"])
def test_fragmented_udp_answer_is_reassembled(server: str, eth: list[DnsPacket]) -> None:
    (big,) = [p for p in eth if p.transport == "udp" and p.is_response and p.src == server
              and _qname(p) == "big"]
    assert len(big.wire) > 1280
    msg = dns.message.from_wire(big.wire)
    assert not msg.flags & dns.flags.TC
    assert sum(len(rrset) for rrset in msg.answer) == 12


def test_tcp_several_messages_per_connection(eth: list[DnsPacket]) -> None:
    keepopen = [p for p in eth if p.transport == "tcp" and p.src == "127.0.0.1"
                and _qname(p) in ("a", "c", "big")]
    assert len(keepopen) == 6
    assert len({(p.sport, p.dport) for p in keepopen if not p.is_response}) == 1
    (big,) = [p for p in keepopen if p.is_response and _qname(p) == "big"]
    assert len(big.wire) > 2 * 1280  # spans three segments


def test_tcp_two_messages_in_one_segment(eth: list[DnsPacket]) -> None:
    d1, d2 = [p for p in eth if not p.is_response and _qname(p) in ("d1", "d2")]
    assert d1.number == d2.number
    assert (d1.sport, d1.ts) == (d2.sport, d2.ts)


def test_tcp_message_split_across_segments(eth: list[DnsPacket]) -> None:
    (e,) = [p for p in eth if not p.is_response and _qname(p) == "e"]
    with open(ETH, "rb") as f:
        frames = list(dpkt.pcap.Reader(f))
    client = [
        (i + 1, len(tcp.data)) for i, (_, buf) in enumerate(frames)
        if isinstance(tcp := dpkt.ethernet.Ethernet(buf).data.data, dpkt.tcp.TCP)
        and tcp.sport == e.sport and tcp.data
    ]
    assert [n for _, n in client] == [1, 11, len(e.wire) + 2 - 12]
    assert e.number == client[-1][0]  # reported at the segment completing it


# --- link types and containers ----------------------------------------------------


@pytest.mark.parametrize("name", [
    "eth.pcapng", "raw.pcap", "null.pcap", "loop.pcap", "vlan.pcap",
])
def test_rewritten_link_types_yield_the_same_messages(name: str, eth: list[DnsPacket]) -> None:
    packets, problems = _read(DATA / name)
    assert problems == []
    assert packets == eth  # same numbers and timestamps too


@pytest.mark.parametrize("linktype", [12, 14])
def test_raw_ip_under_platform_dlt_numbers(linktype: int, tmp_path: Path,
                                           eth: list[DnsPacket]) -> None:
    data = bytearray((DATA / "raw.pcap").read_bytes())
    struct.pack_into("<I", data, 20, linktype)
    path = tmp_path / f"raw{linktype}.pcap"
    path.write_bytes(data)
    packets, problems = _read(path)
    assert (packets, problems) == (eth, [])


@pytest.mark.parametrize("name", ["sll.pcap", "sll2_nano.pcap"])
def test_linux_cooked_captures(name: str, eth: list[DnsPacket]) -> None:
    # Captured by their own tcpdump at the same time as eth.pcap.
    packets, problems = _read(DATA / name)
    assert problems == []
    assert _flow_view(packets) == _flow_view(eth)
    assert all(abs(p.ts - q.ts) < 0.05 for p, q in zip(packets, eth, strict=True))


def test_nanosecond_pcap_keeps_sub_microsecond_time() -> None:
    assert (DATA / "sll2_nano.pcap").read_bytes()[:4] == b"\x4d\x3c\xb2\xa1"
    packets, _ = _read(DATA / "sll2_nano.pcap")
    assert any(round(p.ts * 1e6) != p.ts * 1e6 for p in packets)


def test_pcapng_with_two_interfaces_of_different_link_types(eth: list[DnsPacket]) -> None:
    packets, problems = _read(DATA / "eth_sll2_mixed.pcapng")
    assert problems == []
    first, second = packets[: len(eth)], packets[len(eth):]
    assert _flow_view(first) == _flow_view(eth)
    assert _flow_view(second) == _flow_view(eth)
    assert all(abs(q.ts - p.ts - 3600) < 0.05 for p, q in zip(first, second, strict=True))


# --- TCP reassembly -------------------------------------------------------------


def test_tcp_out_of_order_and_retransmitted_segments(eth: list[DnsPacket]) -> None:
    packets, problems = _read(DATA / "tcp_reorder.pcap")
    assert problems == []
    key = lambda p: (p.transport, p.sport, p.dport, p.wire)  # noqa: E731
    assert sorted(_flow_view(packets)) == sorted(_flow_view(eth))
    assert [key(p) for p in packets if p.transport == "udp"] == [
        key(p) for p in eth if p.transport == "udp"
    ]


def _rewrite(src: str, dst: Path, keep: object) -> None:
    with open(src, "rb") as f, open(dst, "wb") as out:
        reader = dpkt.pcap.Reader(f)
        writer = dpkt.pcap.Writer(out, linktype=reader.datalink(), snaplen=262144)
        for number, (ts, buf) in enumerate(reader, 1):
            frame = keep(number, bytes(buf))  # type: ignore[operator]
            if frame is not None:
                writer.writepkt(frame, ts)


def _tcp_data_frames(path: str) -> list[tuple[int, dpkt.tcp.TCP]]:
    with open(path, "rb") as f:
        out = []
        for number, (_, buf) in enumerate(dpkt.pcap.Reader(f), 1):
            tcp = dpkt.ethernet.Ethernet(buf).data.data
            if isinstance(tcp, dpkt.tcp.TCP) and tcp.data:
                out.append((number, tcp))
        return out


def test_tcp_segment_missing_from_capture(tmp_path: Path, eth: list[DnsPacket]) -> None:
    big = max(_tcp_data_frames(ETH), key=lambda item: len(item[1].data))[0]
    path = tmp_path / "gap.pcap"
    _rewrite(ETH, path, lambda n, frame: None if n == big else frame)
    packets, problems = _read(path)
    assert len(packets) == len(eth) - 1
    assert [p.message for p in problems] == [
        "TCP stream gap (segment missing from capture) at end of file"
    ]


def test_tcp_flow_bounds_evict_and_report(monkeypatch: pytest.MonkeyPatch,
                                          eth: list[DnsPacket]) -> None:
    monkeypatch.setattr(capture, "TCP_TOTAL_CAP", 1000)
    packets, problems = _read(ETH)
    assert [p for p in packets if p.transport == "udp"] == [
        p for p in eth if p.transport == "udp"
    ]
    big = [p for p in packets if p.transport == "tcp" and len(p.wire) > 1000]
    assert big == []
    assert any("evicted" in p.message for p in problems)


# --- damaged files -----------------------------------------------------------------


def test_corrupt_records_are_reported_and_skipped(eth: list[DnsPacket]) -> None:
    with open(ETH, "rb") as f:
        frames = len(list(dpkt.pcap.Reader(f)))
    packets, problems = _read(DATA / "corrupt.pcap")
    assert [(p.number, p.message) for p in problems] == [
        (1, "corrupt IPv4 header"),
        (3, "DNS message shorter than 12 bytes (6)"),
        (frames + 1, "corrupt packet record (captured length 2147483632); rest of file skipped"),
    ]
    assert all(p.path == str(DATA / "corrupt.pcap") for p in problems)
    assert packets == [p for p in eth if p.number not in (1, 3)]


@pytest.mark.parametrize("name", ["eth.pcap", "eth.pcapng"])
@pytest.mark.parametrize("cut", [1, 10, 70, 200])
def test_truncated_file_end_is_a_problem(name: str, cut: int, tmp_path: Path,
                                         eth: list[DnsPacket]) -> None:
    data = (DATA / name).read_bytes()
    path = tmp_path / name
    path.write_bytes(data[:-cut])
    packets, problems = _read(path)
    assert len(problems) >= 1
    assert problems[0].message.startswith("truncated packet record")
    last = problems[0].number
    assert last <= eth[-1].number
    # Every message completed before the damaged record is still there.
    assert packets == [p for p in eth if p.number < last]


@pytest.mark.usefixtures("eth")
def test_snaplen_truncated_packets(tmp_path: Path) -> None:
    path = tmp_path / "snap.pcap"
    with open(ETH, "rb") as f, open(path, "wb") as out:
        writer = dpkt.pcap.Writer(out, linktype=1, snaplen=60)
        for ts, buf in dpkt.pcap.Reader(f):
            writer._Writer__f.write(struct.pack("<IIII", int(ts), round(ts % 1 * 1e6),
                                                min(len(buf), 60), len(buf)))
            writer._Writer__f.write(buf[:60])
    packets, problems = _read(path)
    assert packets == []
    assert problems
    assert {p.message for p in problems} == {"packet truncated by capture snap length"}


@pytest.mark.parametrize("content", [b"", b"hello, not a capture\n", b"\xd4\xc3\xb2\xa1\x02"])
def test_not_a_capture_file(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    with pytest.raises(CaptureError, match=r"notes\.txt"):
        read_dns(str(path))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match=r"missing\.pcap"):
        read_dns(str(tmp_path / "missing.pcap"))


def test_unsupported_link_type(tmp_path: Path) -> None:
    path = tmp_path / "wifi.pcap"
    with open(path, "wb") as f:
        dpkt.pcap.Writer(f, linktype=105)  # 802.11
    with pytest.raises(CaptureError, match="unsupported link type 105"):
        read_dns(str(path))


def test_header_only_capture_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.pcap"
    path.write_bytes((DATA / "eth.pcap").read_bytes()[:24])
    assert _read(path) == ([], [])


# --- options and merging -----------------------------------------------------------


def test_ports_select_the_traffic() -> None:
    assert _read(ETH, ports=frozenset({5353})) == ([], [])


def test_problems_default_to_the_log(caplog: pytest.LogCaptureFixture) -> None:
    list(read_dns(str(DATA / "corrupt.pcap")))
    assert "corrupt IPv4 header" in caplog.text


def test_read_many_merges_in_capture_time(eth: list[DnsPacket]) -> None:
    mixed = str(DATA / "eth_sll2_mixed.pcapng")
    paths = [mixed, ETH, *CORPUS]
    merged = list(read_many(paths))
    assert [p.ts for p in merged] == sorted(p.ts for p in merged)
    assert len(merged) == sum(len(_read(p)[0]) for p in paths)
    assert Counter(p.wire for p in merged)[eth[0].wire] == 3


def test_read_many_checks_every_file_first(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match=r"nope\.pcap"):
        read_many([ETH, str(tmp_path / "nope.pcap")])


# --- agreement with tshark ----------------------------------------------------------

needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")


def _tshark_queries(path: str, display_filter: str) -> int:
    out = subprocess.run(
        ["tshark", "-n", "-r", path, "-Y", display_filter, "-T", "fields", "-e", "dns.qry.name"],
        check=True, capture_output=True, text=True,
    ).stdout
    return len(out.splitlines())


@needs_tshark
@pytest.mark.parametrize("path", CORPUS, ids=[Path(p).name for p in CORPUS])
def test_corpus_query_count_matches_tshark(path: str) -> None:
    packets, problems = _read(path)
    assert problems == []
    queries = sum(not p.is_response for p in packets)
    assert queries == _tshark_queries(path, "dns.flags.response==0")


@needs_tshark
@pytest.mark.parametrize("name", ["eth.pcap", "sll.pcap", "raw.pcap", "vlan.pcap", "eth.pcapng"])
def test_fixture_udp_query_count_matches_tshark(name: str) -> None:
    packets, _ = _read(DATA / name)
    queries = sum(not p.is_response and p.transport == "udp" for p in packets)
    assert queries == _tshark_queries(str(DATA / name), "udp && dns.flags.response==0")


def test_ipv6_extension_headers_are_stepped_over(tmp_path: Path, eth: list[DnsPacket]) -> None:
    # Give every IPv6 packet a Hop-by-Hop and a Destination Options header.
    def add_headers(_: int, frame: bytes) -> bytes:
        if frame[12:14] != b"\x86\xdd":
            return frame
        ip = bytearray(frame[14:54])
        nxt = ip[6]
        hop = bytes([60, 0, 1, 4, 0, 0, 0, 0])  # next: dest opts; PadN
        dest = bytes([nxt, 0, 1, 4, 0, 0, 0, 0])
        struct.pack_into("!H", ip, 4, struct.unpack_from("!H", ip, 4)[0] + 16)
        ip[6] = 0  # Hop-by-Hop
        return frame[:14] + bytes(ip) + hop + dest + frame[54:]

    path = tmp_path / "ext.pcap"
    _rewrite(ETH, path, add_headers)
    packets, problems = _read(path)
    assert problems == []
    assert packets == eth
