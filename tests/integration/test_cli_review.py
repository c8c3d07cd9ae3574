"""Bad input and odd outputs at the console command: one line naming the problem, never a
traceback, and exit statuses that keep their documented meaning.

Each case runs the real ``dnsgate`` command (``python -m resolver.cli``) as a
subprocess: a closed stdout, a capture whose timestamps are out of range or
reversed, files that are not UTF-8 or not regular files.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import dpkt
import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TUNNEL = ROOT / "tests" / "data" / "tunnels" / "synth_hex16.pcap"  # one tunnel: alerts on stdout
BENIGN = ROOT / "tests" / "data" / "captures" / "eth.pcap"  # no alert at all
HOSTS = ROOT / "tests" / "data" / "declared" / "hosts.txt"
STDOUT_CLOSED = 141


def dnsgate(*args: str, closed_stdout: bool = False, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run the command; with ``closed_stdout``, stdout is a pipe whose reader is already gone."""
    if not closed_stdout:
        return subprocess.run([sys.executable, "-m", "resolver.cli", *args], capture_output=True, text=True,
                              cwd=cwd, timeout=120)
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "resolver.cli", *args], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, cwd=cwd, timeout=120)
    finally:
        os.close(write_end)
    return subprocess.CompletedProcess(done.args, done.returncode, "", done.stderr)


def no_traceback(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stderr, done.stderr
    assert "Exception ignored" not in done.stderr, done.stderr


# --- a closed stdout -----------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    ("replay", str(TUNNEL)),
    ("replay", str(TUNNEL), "--format", "table"),
    ("replay", str(TUNNEL), "--sweep", "unique_short=1,2", "--jobs", "1"),
    ("propose", str(TUNNEL)),
    ("diff", "--declared", str(HOSTS), "--", str(TUNNEL)),
    ("check-config", "zones/default.yaml"),
    ("import", str(HOSTS)),
])
def test_a_closed_stdout_ends_quietly_with_its_own_status(args: tuple[str, ...]) -> None:
    done = dnsgate(*args, closed_stdout=True)
    no_traceback(done)
    assert done.returncode == STDOUT_CLOSED, done.stderr


def test_a_closed_stdout_nothing_was_written_to_keeps_the_status() -> None:
    # No alert to write: nothing was lost, so the replay's own status (0: queries were replayed).
    done = dnsgate("replay", str(BENIGN), closed_stdout=True)
    no_traceback(done)
    assert done.returncode == 0, done.stderr
    assert "dnsgate replay:" in done.stderr  # the summary still goes to stderr


def test_help_names_the_closed_stdout_status() -> None:
    assert "141" in dnsgate("--help").stdout


# --- capture times out of the calendar, or out of order ----------------------------------


def _block(kind: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    return struct.pack("<II", kind, len(body) + 12) + body + struct.pack("<I", len(body) + 12)


def write_pcapng(path: Path, source: Path, tsoffset: int) -> None:
    """``source``'s packets as a pcapng whose interface adds ``tsoffset`` seconds to every time."""
    offset = struct.pack("<HH", 14, 8) + struct.pack("<q", tsoffset)  # if_tsoffset
    out = [_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)),
           _block(1, struct.pack("<HHI", dpkt.pcap.DLT_EN10MB, 0, 65535) + offset + b"\0\0\0\0")]
    with source.open("rb") as fh:
        for ts, frame in dpkt.pcap.Reader(fh):
            micros = round(ts * 1e6)
            out.append(_block(6, struct.pack("<IIIII", 0, micros >> 32, micros & 0xFFFFFFFF, len(frame), len(frame))
                              + frame))
    path.write_bytes(b"".join(out))


@pytest.mark.parametrize("tsoffset", [2**62, -(2**62)])
def test_capture_times_out_of_the_calendar_are_shown_not_fatal(tmp_path: Path, tsoffset: int) -> None:
    capture = tmp_path / "far.pcapng"
    write_pcapng(capture, TUNNEL, tsoffset)
    far = f"@{float(tsoffset):.3g}s"  # seconds from the epoch, as the time cannot be a date

    table = dnsgate("replay", str(capture), "--format", "table")
    no_traceback(table)
    assert table.returncode == 0, table.stderr

    page = tmp_path / "r.html"
    report = dnsgate("replay", str(capture), "--report", str(page))
    no_traceback(report)
    assert report.returncode == 0, report.stderr
    assert f"report written to {page}" in report.stderr
    assert far in page.read_text(encoding="utf-8")

    proposed = dnsgate("propose", str(capture))
    no_traceback(proposed)
    assert proposed.returncode == 0, proposed.stderr
    assert far in proposed.stdout

    diff = dnsgate("diff", "--declared", str(HOSTS), "--", str(capture))
    no_traceback(diff)
    assert diff.returncode == 1, diff.stderr  # undeclared names seen: the documented 1, not a crash's
    assert far in diff.stdout


def test_report_blames_the_file_only_for_writing_it(tmp_path: Path) -> None:
    done = dnsgate("replay", str(TUNNEL), "--report", str(tmp_path / "no-such-dir" / "r.html"))
    assert done.returncode == 2
    assert f"dnsgate replay: --report {tmp_path / 'no-such-dir' / 'r.html'}: No such file or directory" in done.stderr


def test_table_span_runs_from_the_earliest_time_to_the_latest(tmp_path: Path) -> None:
    capture = tmp_path / "reversed.pcap"
    with capture.open("wb") as fh:
        writer = dpkt.pcap.Writer(fh)
        with TUNNEL.open("rb") as src:
            frames = [frame for _ts, frame in dpkt.pcap.Reader(src)][:20]
        for i, frame in enumerate(frames):  # one packet a second, the last one first
            writer.writepkt(frame, 1_800_000_000.0 + len(frames) - 1 - i)
    done = dnsgate("replay", str(capture), "--format", "table")
    assert done.returncode == 0, done.stderr
    assert f"over {len(frames) - 1}s of capture" in done.stdout.splitlines()[0]


# --- threshold values that are not YAML ----------------------------------------------------


@pytest.mark.parametrize(("option", "value", "shown"), [
    ("--set", "unique_short=[1,2", "--set unique_short: '[1,2' is not a YAML value: expected ',' or ']'"),
    ("--sweep", "unique_short=[1,2", "--sweep unique_short: '[1' is not a YAML value: expected ',' or ']'"),
    ("--sweep", "unique_short=1,@x", "--sweep unique_short: '@x' is not a YAML value: found character '@'"),
])
def test_a_value_that_is_not_yaml_is_one_line(option: str, value: str, shown: str) -> None:
    done = dnsgate("replay", str(TUNNEL), option, value)
    no_traceback(done)
    assert done.returncode == 2
    assert done.stderr.startswith(f"dnsgate replay: {shown}"), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr


# --- config and zone files that are not UTF-8, or not files ----------------------------------


def test_files_that_are_not_utf8_are_one_line_each_and_every_file_is_checked(tmp_path: Path) -> None:
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"namespaces:\n  default:\n    allow: [a.com] # \xff\xfe\n")
    (tmp_path / "bad.rpz").write_bytes(b"\xff\xfe$ORIGIN rpz.\n")
    zoned = tmp_path / "zoned.yaml"
    zoned.write_text("namespaces:\n  default:\n    allow: [a.com]\n    rpz: [bad.rpz]\n")
    (tmp_path / "zones.d").mkdir()
    folder = tmp_path / "folder.yaml"
    folder.write_text("namespaces:\n  default:\n    allow: [a.com]\n    rpz: [zones.d]\n")

    done = dnsgate("check-config", str(latin), str(zoned), str(folder), "zones/default.yaml")
    no_traceback(done)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"{latin}:3: not UTF-8 (byte 0xff at column 22)",
        f"{tmp_path / 'bad.rpz'}:1: rpz: not UTF-8 (byte 0xff at column 1)",
        f"{folder}:4: namespaces.default.rpz[0]: RPZ zone file {tmp_path / 'zones.d'} is a directory",
    ]
    assert done.stdout == "zones/default.yaml: ok (1 namespaces, 9 policy triggers)\n"  # checked after the bad ones

    diff = dnsgate("diff", "--config", str(latin), "--declared", str(HOSTS), "--", str(TUNNEL))
    no_traceback(diff)
    assert diff.returncode == 2  # an error, not "undeclared egress seen"
    assert diff.stderr == f"dnsgate diff: {latin}:3: not UTF-8 (byte 0xff at column 22)\n"

    replay = dnsgate("replay", "--config", str(zoned), str(TUNNEL))
    no_traceback(replay)
    assert replay.returncode == 2
    assert "bad.rpz:1: rpz: not UTF-8" in replay.stderr


# --- a Redis URL the client cannot use -------------------------------------------------------


@pytest.mark.parametrize("args", [
    ("propose", "--from-redis", "notaurl"),
    ("diff", "--declared", str(HOSTS), "--from-redis", "notaurl"),
])
def test_a_redis_url_that_is_no_url_is_one_line_naming_the_option(args: tuple[str, ...]) -> None:
    done = dnsgate(*args)
    no_traceback(done)
    assert done.returncode == 2
    assert done.stderr == (f"dnsgate {args[0]}: --from-redis notaurl: Redis URL must specify one of the "
                           "following schemes (redis://, rediss://, unix://)\n")
