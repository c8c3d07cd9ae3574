"""`dnsgate replay` over real captures: the shared corpus, the generated tunnels and
link-type captures, and damaged files. Run as the console command, so the stdout
contract (alert objects only) is what is tested."""

from __future__ import annotations

import gc
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import dpkt
import pytest

from resolver import config as config_mod
from resolver.offline.replay import PENDING_MAX, Replay, apply_overrides, replay, replay_config, score

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus"
TUNNELS = ROOT / "tests" / "data" / "tunnels"
CAPTURES = ROOT / "tests" / "data" / "captures"
CORPUS_TUNNELS = {  # file -> registrable domain of its tunnel (corpus README)
    "dns2tcp_txt_dev.pcap": "devlab-tunnel.net",
    "iodine_dev.pcap": "devlab-iodine.net",
    "dnscat2_dev.pcap": "devlab-dnscat.org",
}
ALERT_FIELDS = {"ts", "kind", "severity", "namespace", "client", "qname", "qtype", "domain",
                "reasons", "action", "evidence"}


def dnsgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "resolver.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


def jsonl(out: str) -> list[dict[str, object]]:
    """Every stdout line must be one alert object with the DESIGN.md fields."""
    alerts = []
    for line in out.splitlines():
        obj = json.loads(line)
        assert isinstance(obj, dict), line
        assert set(obj) >= ALERT_FIELDS, line
        assert obj["kind"] in ("policy", "tunnel")
        assert obj["severity"] in ("info", "warning", "high", "critical")
        assert obj["action"] in ("alerted", "blocked", "quarantined")
        assert isinstance(obj["reasons"], list)
        assert isinstance(obj["evidence"], dict)
        alerts.append(obj)
    return alerts


def all_captures() -> list[Path]:
    found = sorted(CORPUS.glob("*.pcap")) + sorted(TUNNELS.glob("*.pcap"))
    found += sorted(CAPTURES.glob("*.pcap")) + sorted(CAPTURES.glob("*.pcapng"))
    return found


@pytest.mark.parametrize("name", sorted(CORPUS_TUNNELS))
def test_corpus_tunnels_raise_tunnel_alerts_on_clean_stdout(name: str) -> None:
    out = dnsgate("replay", str(CORPUS / name), "--format", "jsonl")
    assert out.returncode == 0, out.stderr
    alerts = jsonl(out.stdout)
    tunnel = [a for a in alerts if a["kind"] == "tunnel"]
    assert tunnel
    assert {a["domain"] for a in tunnel} == {CORPUS_TUNNELS[name]}
    assert all(a["namespace"] == "default" and a["action"] == "alerted" for a in tunnel)
    assert "dnsgate replay:" in out.stderr  # the summary goes to stderr


def test_every_available_capture_replays_with_only_alerts_on_stdout() -> None:
    paths = all_captures()
    assert len(paths) >= 3
    for path in paths:
        out = dnsgate("replay", str(path), "--port", "53", "--port", "5353")
        assert out.returncode == 0, (path, out.stderr)
        jsonl(out.stdout)


def test_dnscat_replies_feed_the_nxdomain_ratio() -> None:
    """The dnscat2 capture is answered NXDOMAIN: only matched replies can say so."""
    out = dnsgate("replay", str(CORPUS / "dnscat2_dev.pcap"))
    reasons = {r for a in jsonl(out.stdout) for r in a["reasons"]}  # type: ignore[attr-defined]
    assert "nxdomain_ratio" in reasons
    report = replay([str(CORPUS / "dnscat2_dev.pcap")], replay_config(None))
    assert report.matched == report.responses > 0


def test_generated_tunnels_are_all_flagged_and_sweep_scores_them() -> None:
    pcaps = sorted(str(p) for p in TUNNELS.glob("*.pcap"))
    labels = TUNNELS / "LABELS.txt"
    assert pcaps
    assert labels.exists()
    report = replay(pcaps, replay_config(None))
    wanted = {line.strip() for line in labels.read_text().splitlines() if line.strip()}
    tp, fp, fn = score(report.flagged_domains(), wanted)
    assert not fn
    assert not fp
    assert tp
    out = dnsgate("replay", *pcaps, "--sweep", "alert_points=3,1000", "--labels", str(labels))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:6] == ["alert_points", "flagged", "TP", "FP", "FN", "precision"]
    row3 = lines[1].split()
    row1000 = lines[2].split()
    assert row3[0] == "3"
    assert row3[2] == str(len(wanted))
    assert row3[4] == "0"
    assert row1000[0] == "1000"
    assert row1000[1] == "0"
    assert row1000[4] == str(len(wanted))


def test_table_format_per_namespace_summary() -> None:
    out = dnsgate("replay", *(str(CORPUS / n) for n in sorted(CORPUS_TUNNELS)), "--format", "table")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "namespace default  (mode learn, detection observe)" in text
    for label in ("queries", "unique names", "names denied", "flagged domains"):
        assert label in text
    for domain in CORPUS_TUNNELS.values():
        assert domain in text
    assert "reasons:" in text
    assert "evidence:" in text
    assert "info_bytes=" in text


def test_table_marks_unique_names_as_an_estimate_never_above_the_queries() -> None:
    # 1,000 names, each asked once: the HyperLogLog estimate is 1,040 for this capture.
    out = dnsgate("replay", str(TUNNELS / "synth_hex16.pcap"), "--format", "table")
    assert out.returncode == 0, out.stderr
    queries = re.search(r"^  queries +([\d,]+) ", out.stdout, re.M)
    unique = re.search(r"^  unique names +~([\d,]+)   \(estimate\)$", out.stdout, re.M)
    assert queries, out.stdout
    assert unique, out.stdout
    assert queries.group(1) == "1,000"
    assert unique.group(1) == "1,000"  # capped at the queries
    summary = dnsgate("replay", str(TUNNELS / "synth_hex16.pcap"))
    assert "1,000 queries, ~1,000 unique names" in summary.stderr


def test_set_overrides_a_threshold_and_rejects_unknown_keys() -> None:
    path = str(CORPUS / "dns2tcp_txt_dev.pcap")
    quiet = dnsgate("replay", path, "--set", "alert_points=1000")
    assert quiet.returncode == 0
    assert quiet.stdout == ""
    bad = dnsgate("replay", path, "--set", "no_such_threshold=3")
    assert bad.returncode == 2
    assert "no_such_threshold" in bad.stderr
    assert bad.stdout == ""
    cfg = apply_overrides(replay_config(None), {"unique_short": 7})
    assert cfg.namespaces["default"].detection.thresholds.unique_short == 7


def test_config_policy_denials_are_policy_alerts(tmp_path: Path) -> None:
    cfg = tmp_path / "enforce.yaml"
    cfg.write_text(
        "upstreams: [{address: 127.0.0.1, port: 9}]\n"
        "namespaces:\n"
        "  lab:\n"
        "    clients: [0.0.0.0/0, '::/0']\n"
        "    mode: enforce\n"
        "    allow: ['*.devlab-iodine.net']\n"
        "    detection: {mode: enforce}\n"
    )
    out = dnsgate("replay", str(CORPUS / "dns2tcp_txt_dev.pcap"), str(CORPUS / "iodine_dev.pcap"),
                  "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    alerts = jsonl(out.stdout)
    policy = [a for a in alerts if a["kind"] == "policy"]
    assert policy
    assert all(a["action"] == "blocked" and a["namespace"] == "lab" for a in policy)
    assert not any(str(a["qname"]).endswith("devlab-iodine.net") for a in policy)
    assert any(a["kind"] == "tunnel" and a["action"] == "quarantined" for a in alerts)
    table = dnsgate("replay", str(CORPUS / "dns2tcp_txt_dev.pcap"), "--config", str(cfg), "--format", "table")
    assert "namespace lab  (mode enforce, detection enforce)" in table.stdout
    assert "devlab-tunnel.net" in table.stdout.split("by domain (names denied):")[1]


def test_truncated_capture_reports_packet_number_and_finishes(tmp_path: Path) -> None:
    src = (CORPUS / "dns2tcp_txt_dev.pcap").read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(src[: len(src) * 2 // 3])
    out = dnsgate("replay", str(cut))
    assert out.returncode == 0
    assert f"{cut}: packet " in out.stderr
    assert "truncated" in out.stderr
    assert any(a["kind"] == "tunnel" for a in jsonl(out.stdout))


def test_corrupt_records_and_malformed_queries_are_skipped(tmp_path: Path) -> None:
    with open(CORPUS / "iodine_dev.pcap", "rb") as fh:
        frames = [(ts, bytes(buf)) for ts, buf in dpkt.pcap.Reader(fh)]
    ip = dpkt.ip.IP(src=b"\x0a\x00\x00\x07", dst=b"\x0a\x00\x00\x01", p=17)
    garbage = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x3f" + b"a" * 5  # label past the end
    ip.data = dpkt.udp.UDP(sport=4000, dport=53, ulen=8 + len(garbage), data=garbage)
    ip.len = len(bytes(ip))
    eth = dpkt.ethernet.Ethernet(src=b"\x00" * 6, dst=b"\x00" * 6, type=0x0800, data=ip)
    path = tmp_path / "bad.pcap"
    with open(path, "wb") as f:
        w = dpkt.pcap.Writer(f, linktype=1)
        w.writepkt(bytes(eth), frames[0][0])
        for ts, buf in frames:
            w.writepkt(buf, ts)
    data = bytearray(path.read_bytes())
    # Packet 3's record header claims 16 MB: nothing after it can be found.
    off = 24
    for _ in range(2):
        off += 16 + struct.unpack_from("<I", data, off + 8)[0]
    struct.pack_into("<I", data, off + 8, 16 * 1024 * 1024)
    path.write_bytes(bytes(data))
    out = dnsgate("replay", str(path), "--format", "table")
    assert out.returncode == 0, out.stderr
    assert f"{path}: packet 1: malformed DNS query" in out.stderr
    assert f"{path}: packet 3: corrupt packet record" in out.stderr
    assert "replayed 1 queries" in out.stdout
    assert "1 malformed queries" in out.stdout


def test_missing_or_non_capture_file_is_a_clear_error(tmp_path: Path) -> None:
    not_pcap = tmp_path / "notes.txt"
    not_pcap.write_text("hello")
    for path in (tmp_path / "missing.pcap", not_pcap):
        out = dnsgate("replay", str(path))
        assert out.returncode == 2
        assert str(path) in out.stderr
        assert out.stdout == ""


def test_no_upstream_traffic_and_bounded_pending_table() -> None:
    """A replay never forwards, and unanswered queries cannot grow memory."""
    cfg = replay_config(None)
    assert cfg.upstreams == ()
    assert cfg.state.backend == "memory"
    assert cfg.alerts == ()
    run = Replay(cfg)
    from resolver.offline.capture import DnsPacket

    wire = bytes.fromhex("0001010000010000000000000161047465737400" "00010001")
    for i in range(PENDING_MAX + 50):
        run.feed(DnsPacket(i + 1, 1_800_000_000.0 + i / 1000, "10.0.0.1", 1024 + i % 60000,
                           "10.0.0.53", 53, "udp", wire[:0] + (i % 65536).to_bytes(2, "big") + wire[2:], False))
    assert len(run._pending) == PENDING_MAX
    assert run.engine.forwarder.clients == []
    report = run.finish()
    assert report.queries == PENDING_MAX + 50


def test_listener_bound_namespace_is_used(tmp_path: Path) -> None:
    cfg_path = tmp_path / "bound.yaml"
    cfg_path.write_text(
        "listen: [{address: 127.0.0.1, port: 53}, {address: 127.0.0.1, port: 5300, namespace: ci}]\n"
        "upstreams: [{address: 127.0.0.1, port: 9}]\n"
        "unknown_clients: other\n"
        "namespaces:\n  ci: {mode: observe}\n  other: {mode: observe}\n"
    )
    cfg = replay_config(str(cfg_path))
    assert config_mod.load(cfg_path).listen[1].namespace == "ci"
    run = Replay(cfg)
    from resolver.offline.capture import DnsPacket

    wire = bytes.fromhex("abcd0100000100000000000003777777076578616d706c6503636f6d0000010001")
    run.feed(DnsPacket(1, 1.0, "10.1.1.1", 3333, "127.0.0.1", 5300, "udp", wire, False))
    run.feed(DnsPacket(2, 2.0, "10.1.1.1", 3334, "127.0.0.1", 53, "udp", wire, False))
    report = run.finish()
    assert report.namespaces["ci"].queries == 1
    assert report.namespaces["other"].queries == 1


def test_every_link_type_variant_replays_the_same_queries_and_matches_replies() -> None:
    """tests/data/captures holds one real session rewritten to other link types,
    VLAN tags, pcapng and reordered TCP: replay must see the same traffic in each."""
    base = replay([str(CAPTURES / "eth.pcap")], replay_config(None))
    assert base.queries > 0
    assert base.matched == base.queries
    variants = ["eth.pcapng", "raw.pcap", "null.pcap", "loop.pcap", "sll.pcap", "sll2_nano.pcap",
                "vlan.pcap", "tcp_reorder.pcap"]
    for name in variants:
        report = replay([str(CAPTURES / name)], replay_config(None))
        assert (report.queries, report.matched) == (base.queries, base.matched), name


def test_progress_bar_only_on_request_or_terminal() -> None:
    path = str(CORPUS / "dns2tcp_txt_dev.pcap")
    quiet = dnsgate("replay", path)  # stderr is a pipe here: no bar
    assert "] " not in quiet.stderr
    assert "%" not in quiet.stderr
    drawn = dnsgate("replay", path, "--progress", "always")
    assert "[###" in drawn.stderr
    assert "% " in drawn.stderr
    assert "packets" in drawn.stderr
    assert drawn.stdout == quiet.stdout  # the bar never touches stdout


def test_the_summary_and_the_alerts_are_the_same_on_every_run() -> None:
    """Python keys hash() per process; the unique-name count must not depend on it.

    Also the console entry's quick exit: every alert line reaches a pipe before it exits.
    """
    capture = str(CORPUS / "dns2tcp_txt_dev.pcap")  # past the sketch's exact (sparse) size
    runs = []
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-m", "resolver.cli", "replay", capture, "--format", "jsonl"],
                             capture_output=True, text=True, cwd=ROOT, timeout=300,
                             env={**os.environ, "PYTHONHASHSEED": seed})
        assert out.returncode == 0, out.stderr
        summary = [line for line in out.stderr.splitlines() if "unique names" in line]
        assert summary, out.stderr
        alerts = jsonl(out.stdout)
        counted = int(re.search(r"and ([\d,]+) tunnel alerts", out.stderr).group(1).replace(",", ""))
        assert len([a for a in alerts if a["kind"] == "tunnel"]) == counted
        runs.append((summary, out.stdout))
    assert runs[0] == runs[1]


@pytest.mark.parametrize("enabled", [True, False])
def test_the_collector_is_left_as_replay_found_it(enabled: bool) -> None:
    """Replay feeds packets with automatic collection off; afterwards the collector is
    on again only if it was, nothing is left frozen, and a caller's frozen objects
    stay frozen (replay then skips moving its own objects past the young generations)."""
    capture = str(CORPUS / "iodine_dev.pcap")
    was = gc.isenabled()
    try:
        if not enabled:
            gc.disable()
        assert gc.get_freeze_count() == 0
        report = replay([capture], replay_config(None))
        assert report.queries > 0
        assert gc.isenabled() is enabled
        assert gc.get_freeze_count() == 0
        gc.freeze()
        frozen = gc.get_freeze_count()
        again = replay([capture], replay_config(None))
        assert again.queries == report.queries
        assert gc.get_freeze_count() <= frozen  # none of the replay's own objects joined them
        assert gc.isenabled() is enabled
    finally:
        gc.unfreeze()
        if was:
            gc.enable()
        else:
            gc.disable()


def test_a_replays_state_is_freed_when_it_is_done_with() -> None:
    """The engine and detector state of a finished replay go away as soon as it returns:
    nothing ties them into a reference cycle (a sweep runs one replay per value, each
    peaking at one run's memory), with the cyclic collector off throughout."""
    from resolver.pipeline.chain import Engine

    def engines() -> int:
        return sum(1 for obj in gc.get_objects() if type(obj) is Engine)

    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        before = engines()
        seen: list[int] = []
        report = replay([str(CORPUS / "iodine_dev.pcap")], replay_config(None),
                        on_engine=lambda engine: seen.append(id(engine)))
        assert seen
        assert report.queries > 0
        assert engines() == before
    finally:
        if was:
            gc.enable()


def test_the_console_command_keeps_only_the_last_run_until_it_exits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under ``dnsgate`` (resolver.cli.entry), which exits without freeing, replay keeps its
    last run instead of freeing it object by object as it returns; an earlier run (a
    sweep's previous value, diff's first side) is freed when the next one starts, so a
    sweep still holds one run's state at a time."""
    from resolver.offline import replay as replay_mod
    from resolver.pipeline.chain import Engine

    def engines() -> int:
        return sum(1 for obj in gc.get_objects() if type(obj) is Engine)

    monkeypatch.setattr(replay_mod, "_last_run", None)
    replay_mod.keep_last_run()
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        before = engines()
        capture = str(CORPUS / "iodine_dev.pcap")
        first = replay([capture], replay_config(None))
        kept = replay_mod._last_run
        assert kept is not None
        assert len(kept) == 1
        assert kept[0].report is first
        assert engines() == before + 1  # the last run's engine is alive
        alive: list[int] = []
        second = replay([capture], replay_config(None), on_engine=lambda _: alive.append(engines()))
        assert alive == [before + 1]  # the kept run was freed before the next one was built
        assert replay_mod._last_run is kept
        assert len(kept) == 1
        assert kept[0].report is second
        assert engines() == before + 1  # the first run's engine was freed
        assert second.queries == first.queries
    finally:
        monkeypatch.setattr(replay_mod, "_last_run", None)
        if was:
            gc.enable()


def test_a_sweep_over_several_processes_prints_what_one_process_prints(tmp_path: Path) -> None:
    """``--jobs 2`` replays the values in two forked workers: the same table, the same
    per-value lines in value order and the same HTML page, as ``--jobs 1`` replaying them
    one after the other."""
    pcaps = sorted(str(p) for p in TUNNELS.glob("*.pcap"))
    labels = str(TUNNELS / "LABELS.txt")
    runs = []
    for jobs in ("1", "2"):
        page = tmp_path / f"sweep-{jobs}.html"
        out = dnsgate("replay", *pcaps, "--sweep", "alert_points=2,3,8,1000", "--labels", labels, "--jobs", jobs,
                      "--report", str(page))
        assert out.returncode == 0, out.stderr
        per_value = [re.sub(r" in [\d.]+s$", "", line) for line in out.stderr.splitlines() if "flagged domain" in line]
        # The page's plots and table come from the reports the workers sent back.
        runs.append((out.stdout, per_value, page.read_text()))
    assert runs[0] == runs[1]
    assert "alert_points" in runs[1][2]
    table, per_value, _ = runs[1]
    assert [line.split(": ")[1] for line in per_value] == [
        "alert_points=2", "alert_points=3", "alert_points=8", "alert_points=1000"
    ]
    assert table.splitlines()[4].split()[:2] == ["1000", "0"]


def test_a_parallel_sweep_runs_in_worker_processes() -> None:
    """The reports come back from forked workers, each replaying one value, in value order."""
    import multiprocessing

    from resolver.offline import replay as replay_mod

    pcaps = sorted(str(p) for p in TUNNELS.glob("*.pcap"))
    configs = [apply_overrides(replay_config(None), {"alert_points": v}) for v in (3, 1000, 3)]
    workers: list[int] = []
    reports = []
    for report in replay_mod._sweep_reports("dnsgate replay", pcaps, configs, frozenset({53}), 2):
        workers.append(len(multiprocessing.active_children()))
        reports.append(report)
    assert workers[0] >= 1  # a pool of worker processes was running
    assert not multiprocessing.active_children()  # and is gone afterwards
    assert replay_mod._sweep_work is None
    alone = replay(pcaps, configs[0])
    assert reports[0].flagged_domains() == reports[2].flagged_domains() == alone.flagged_domains()
    assert reports[0].queries == alone.queries
    assert not reports[1].flagged_domains()


def test_sweep_jobs_are_checked_and_bounded() -> None:
    from resolver.offline.replay import sweep_jobs

    cpus = len(os.sched_getaffinity(0))
    assert sweep_jobs(None, 100) == min(cpus, 100)
    assert sweep_jobs(None, 1) == 1
    assert sweep_jobs(8, 3) == 3
    assert sweep_jobs(1, 5) == 1
    pcap = str(TUNNELS / "dns2tcp_key.pcap")
    out = dnsgate("replay", pcap, "--sweep", "alert_points=3,5", "--jobs", "0")
    assert out.returncode == 2
    assert out.stderr.strip() == "dnsgate replay: --jobs: expected 1 or more, got 0"
    out = dnsgate("replay", pcap, "--jobs", "2")
    assert out.returncode == 2
    assert out.stderr.strip() == "dnsgate replay: --jobs needs --sweep"


def _writer_of(fifo: Path, deadline: float) -> int:
    """The write end of ``fifo`` once a reader has it open (ENXIO until then)."""
    import errno
    import time

    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO or time.monotonic() > deadline:
                raise


_READ_SYSCALL = {"x86_64": 0, "aarch64": 63}  # read(2)'s number, as /proc/PID/syscall shows it


def _waiting_in_read(pids: list[int] | None, parent: int, deadline: float) -> list[int]:
    """The processes of ``pids`` (or ``parent``'s children) blocked in read(2), once there are any."""
    import platform
    import time

    number = _READ_SYSCALL[platform.machine()]
    while True:
        candidates = pids
        if candidates is None:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
            candidates = [int(child) for child in children]
        waiting = []
        for pid in candidates:
            try:
                if Path(f"/proc/{pid}/syscall").read_text().split()[0] == str(number):
                    waiting.append(pid)
            except (OSError, IndexError):
                continue
        if waiting or time.monotonic() > deadline:
            return waiting


@pytest.mark.parametrize("sweep", [False, True])
def test_ctrl_c_ends_a_replay_with_one_line(tmp_path: Path, sweep: bool) -> None:
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) in the middle of a
    replay, or of a sweep's worker processes: exit 130 and one line, no traceback from
    dnsgate or any worker, no worker left behind. The capture is a FIFO nothing is written
    to, so the replay (or each worker) is waiting for its first octets when the signal comes."""
    import signal
    import time

    fifo = tmp_path / "capture.pcap"
    os.mkfifo(fifo)
    args = [sys.executable, "-m", "resolver.cli", "replay", str(fifo)]
    if sweep:
        args += ["--sweep", "alert_points=3,5", "--jobs", "2"]
    # SIGINT as a terminal leaves it (whoever started pytest may have it ignored: a
    # background job does, and a Python started so never turns it into KeyboardInterrupt).
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        fd = _writer_of(fifo, deadline)  # a reader has it open
        # ... and sits in read(2): a signal that came between open and read would wait,
        # compiled code checking for signals only at calls like that one.
        readers = _waiting_in_read([proc.pid] if not sweep else None, proc.pid, deadline)
        assert readers
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        os.close(fd)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert err == "dnsgate: interrupted\n"
    assert out == ""
    with pytest.raises(ProcessLookupError):  # nothing of the process group is left
        os.killpg(proc.pid, 0)
