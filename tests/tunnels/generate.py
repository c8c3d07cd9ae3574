#!/usr/bin/env python3
"""Generate real DNS-tunnel captures inside private network namespaces.

Usage (as root, from the repository root, with the project venv):

    .venv/bin/python tests/tunnels/generate.py tests/data/tunnels [--only NAME ...]

Every capture gets two fresh namespaces (``dgtun-<pid>-<n>s`` / ``...c``) joined by a
veth pair addressed 10.231.0.1 (server) / 10.231.0.2 (client); nothing is sent
anywhere else.  tcpdump runs in the client namespace on the veth with filter
``udp port 53``.  All processes run under a time limit and are killed, and the
namespaces deleted, on exit (normal, exception, SIGINT/SIGTERM, global alarm).

Output: ``<name>.pcap`` per capture, ``LABELS.txt`` (one tunnel domain per line) and
``MANIFEST.md``.  Re-running overwrites them (captures are not byte-identical: real
tools pick random ids, timing differs).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHANNELS = HERE / "channels.py"
PY = sys.executable

SRV_IP = "10.231.0.1"
CLI_IP = "10.231.0.2"
TUN_NET = "10.232.0.1/27"  # iodine tunnel (inside the namespaces only)
TUN_SRV = "10.232.0.1"
NS_PREFIX = "dgtun-"
GLOBAL_LIMIT_S = 30 * 60
PASSWORD = "labpass42"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- processes


class Procs:
    """Every background process we start, in its own process group."""

    def __init__(self) -> None:
        self.items: list[subprocess.Popen] = []

    def start(
        self, argv: list[str], logfile: Path, stdin=subprocess.DEVNULL, stdout: Path | None = None
    ) -> subprocess.Popen:
        # The files stay open for the process's lifetime; Popen keeps its own descriptors.
        err = open(logfile, "wb")  # noqa: SIM115
        out = open(stdout, "wb") if stdout else err  # noqa: SIM115
        p = subprocess.Popen(argv, stdin=stdin, stdout=out, stderr=err, start_new_session=True)
        self.items.append(p)
        return p

    def stop(self, p: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 5.0) -> None:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, sig)
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)

    def stop_all(self) -> None:
        for p in reversed(self.items):
            self.stop(p)
        self.items.clear()


PROCS = Procs()


def run(argv: list[str], timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=timeout, check=check
    )


def wait_for(pred, timeout: float, what: str, step: float = 0.1) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(step)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def file_has(path: Path, pattern: str) -> bool:
    try:
        return re.search(pattern, path.read_text(errors="replace")) is not None
    except FileNotFoundError:
        return False


# --------------------------------------------------------------------------- namespaces


def list_namespaces() -> list[str]:
    out = run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def delete_namespace(ns: str) -> None:
    """Kill what runs inside one of *our* namespaces, then delete it."""
    pids = run(["ip", "netns", "pids", ns], check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    run(["ip", "netns", "del", ns], check=False)


def remove_stale_namespaces() -> None:
    """Namespaces left by an earlier run of this generator that died hard."""
    for ns in list_namespaces():
        m = re.fullmatch(re.escape(NS_PREFIX) + r"(\d+)-\d+[sc]", ns)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            log(f"removing stale namespace {ns}")
            delete_namespace(ns)


class Lab:
    """Two namespaces joined by a veth pair; removed (with its processes) on exit."""

    counter = 0

    def __init__(self) -> None:
        Lab.counter += 1
        base = f"{NS_PREFIX}{os.getpid()}-{Lab.counter}"
        self.srv, self.cli = base + "s", base + "c"
        self.created: list[str] = []

    def ns(self, ns: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def __enter__(self) -> Lab:
        for ns in (self.srv, self.cli):
            run(["ip", "netns", "add", ns])
            self.created.append(ns)
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
        # created directly inside the namespaces: no interface ever exists in the host ns
        run(["ip", "link", "add", "vsrv", "netns", self.srv, "type", "veth", "peer", "name", "vcli", "netns", self.cli])
        run(["ip", "-n", self.srv, "addr", "add", f"{SRV_IP}/24", "dev", "vsrv"])
        run(["ip", "-n", self.cli, "addr", "add", f"{CLI_IP}/24", "dev", "vcli"])
        run(["ip", "-n", self.srv, "link", "set", "vsrv", "up"])
        run(["ip", "-n", self.cli, "link", "set", "vcli", "up"])
        wait_for(lambda: "LOWER_UP" in run(["ip", "-n", self.cli, "link", "show", "vcli"]).stdout, 10, "veth up")
        return self

    def __exit__(self, *exc) -> None:
        PROCS.stop_all()
        for ns in self.created:
            delete_namespace(ns)
        self.created.clear()

    def listening(self, ns: str, proto: str, addr: str, port: int) -> bool:
        out = run(self.ns(ns, "ss", "-Hln" + ("u" if proto == "udp" else "t")), check=False).stdout
        return f"{addr}:{port} " in out

    def start_capture(self, pcap: Path, work: Path) -> subprocess.Popen:
        if pcap.exists():
            pcap.unlink()
        errlog = work / "tcpdump.log"
        p = PROCS.start(
            self.ns(
                self.cli,
                "timeout",
                "900",
                "tcpdump",
                "-Z",
                "root",
                "-U",
                "--immediate-mode",
                "-B",
                "16384",
                "-i",
                "vcli",
                "-w",
                str(pcap),
                "udp port 53",
            ),
            errlog,
        )
        wait_for(lambda: file_has(errlog, "listening on"), 15, "tcpdump")
        return p

    def stop_capture(self, p: subprocess.Popen) -> None:
        time.sleep(0.5)  # let the last answers arrive
        PROCS.stop(p, signal.SIGINT)


# --------------------------------------------------------------------------- captures


@dataclass
class Capture:
    name: str
    tool: str
    settings: str
    domain: str
    kind: str  # iodine | dns2tcp | synthetic
    args: list[str] = field(default_factory=list)
    payload: int = 12000
    extra: dict = field(default_factory=dict)
    note: str = ""
    # filled in
    ok: bool = False
    payload_sent: int = 0
    error: str = ""
    expected_queries: int = 0  # synthetic: what the sender says it sent


CAPTURES = [
    Capture(
        "iodine_null_auto",
        "iodine 0.7.0",
        "default: -T auto (NULL), -O auto (raw), lazy",
        "t1.lab-iod1.net",
        "iodine",
        [],
        16000,
    ),
    Capture(
        "iodine_txt_base32",
        "iodine 0.7.0",
        "-T TXT -O base32",
        "t2.lab-iod2.net",
        "iodine",
        ["-T", "TXT", "-O", "base32"],
        12000,
    ),
    Capture(
        "iodine_cname_base64",
        "iodine 0.7.0",
        "-T CNAME -O base64",
        "t3.lab-iod3.org",
        "iodine",
        ["-T", "CNAME", "-O", "base64"],
        12000,
    ),
    Capture(
        "iodine_mx_base128",
        "iodine 0.7.0",
        "-T MX -O base128",
        "t4.lab-iod4.net",
        "iodine",
        ["-T", "MX", "-O", "base128"],
        12000,
    ),
    Capture(
        "iodine_srv_base64u_nolazy",
        "iodine 0.7.0",
        "-T SRV -O base64u -L0 -M 120",
        "t5.lab-iod5.com",
        "iodine",
        ["-T", "SRV", "-O", "base64u", "-L0", "-M", "120"],
        8000,
    ),
    Capture(
        "iodine_private",
        "iodine 0.7.0",
        "-T PRIVATE (type 65399, raw down)",
        "t6.lab-iod6.net",
        "iodine",
        ["-T", "PRIVATE"],
        12000,
    ),
    Capture(
        "dns2tcp_txt", "dns2tcp 0.5.2", "-T TXT, echo resource", "x1.lab-d2t1.net", "dns2tcp", ["-T", "TXT"], 10000
    ),
    Capture(
        "dns2tcp_key", "dns2tcp 0.5.2", "-T KEY, echo resource", "x2.lab-d2t2.org", "dns2tcp", ["-T", "KEY"], 10000
    ),
    Capture(
        "dns2tcp_txt_compress",
        "dns2tcp 0.5.2",
        "-T TXT -c (zlib), echo resource",
        "x3.lab-d2t3.net",
        "dns2tcp",
        ["-T", "TXT", "-c"],
        10000,
    ),
    Capture(
        "synth_dnsexfiltrator",
        "python (dnspython)",
        "DNSExfiltrator-style: init request, then <n>.<3x63 base32 of zlib+RC4>.<domain>, "
        'TXT, answered TXT "OK", throttle 100 ms',
        "e1.lab-exf1.net",
        "synthetic",
        payload=12000,
        extra={"channel": "dnsexfil", "mode": "txt", "throttle": 100},
    ),
    Capture(
        "synth_hex16",
        "python (dnspython)",
        "<16 hex chars = 8 bytes>.<decimal counter>.<domain>, A, answered A, throttle 5 ms",
        "h1.lab-hex1.net",
        "synthetic",
        payload=8000,
        extra={"channel": "hex16", "mode": "a", "throttle": 5},
    ),
    Capture(
        "synth_words",
        "python (dnspython)",
        "dictionary words: 1 byte = 1 of 256 English words, 4 word labels per query, A, "
        "answered NXDOMAIN, throttle 2 ms",
        "w1.lab-wrd1.net",
        "synthetic",
        payload=8000,
        extra={"channel": "words", "mode": "nxdomain", "throttle": 2},
    ),
    Capture(
        "synth_lowslow_base32_24h",
        "python (dnspython)",
        "one 16-char base32 label (10 bytes) per query, A, answered A; sent fast, "
        "timestamps rewritten to one query per minute (+0-5 s jitter) over 24 h",
        "s1.lab-slow1.net",
        "synthetic",
        payload=14400,
        extra={"channel": "lowslow", "mode": "a", "throttle": 2, "rewrite": 60.0},
    ),
]


def do_iodine(c: Capture, lab: Lab, pcap: Path, work: Path) -> None:
    srv = PROCS.start(
        lab.ns(
            lab.srv,
            "timeout",
            "180",
            "iodined",
            "-f",
            "-c",
            "-P",
            PASSWORD,
            "-l",
            SRV_IP,
            "-p",
            "53",
            TUN_NET,
            c.domain,
        ),
        work / "iodined.log",
    )
    wait_for(lambda: lab.listening(lab.srv, "udp", SRV_IP, 53), 15, "iodined on :53")
    wait_for(lambda: TUN_SRV in run(lab.ns(lab.srv, "ip", "-4", "addr")).stdout, 15, "server tun address")
    sink = PROCS.start(
        lab.ns(
            lab.srv,
            "timeout",
            "150",
            PY,
            str(CHANNELS),
            "sink",
            "--bind",
            TUN_SRV,
            "--port",
            "7007",
            "--timeout",
            "120",
        ),
        work / "sink.log",
    )
    wait_for(lambda: file_has(work / "sink.log", "READY"), 15, "sink")
    cap = lab.start_capture(pcap, work)
    t0 = time.monotonic()
    cli = PROCS.start(
        lab.ns(lab.cli, "timeout", "170", "iodine", "-f", "-r", "-P", PASSWORD, *c.args, SRV_IP, c.domain),
        work / "iodine.log",
    )
    wait_for(lambda: file_has(work / "iodine.log", "Connection setup complete"), 60, "iodine handshake")
    log(f"  tunnel up after {time.monotonic() - t0:.1f}s")
    push = run(
        lab.ns(
            lab.cli,
            "timeout",
            "120",
            PY,
            str(CHANNELS),
            "push",
            "--host",
            TUN_SRV,
            "--port",
            "7007",
            "--bytes",
            str(c.payload),
            "--seed",
            c.name,
            "--timeout",
            "100",
        ),
        timeout=130,
        check=False,
    )
    log(f"  push: {push.stdout.strip()} {push.stderr.strip()[-200:]}")
    if push.returncode != 0:
        raise RuntimeError(f"payload push failed: {push.stdout} {push.stderr[-300:]}")
    c.payload_sent = c.payload
    time.sleep(8)  # idle: keep-alive pings of an established tunnel
    PROCS.stop(cli)
    lab.stop_capture(cap)
    PROCS.stop(sink)
    PROCS.stop(srv)


def do_dns2tcp(c: Capture, lab: Lab, pcap: Path, work: Path) -> None:
    conf = work / "dns2tcpd.conf"
    conf.write_text(f"listen = {SRV_IP}\nport = 53\ndomain = {c.domain}\nresources = echo:127.0.0.1:7008\n")
    echo = PROCS.start(
        lab.ns(
            lab.srv,
            "timeout",
            "150",
            PY,
            str(CHANNELS),
            "echo",
            "--bind",
            "127.0.0.1",
            "--port",
            "7008",
            "--timeout",
            "120",
        ),
        work / "echo.log",
    )
    wait_for(lambda: file_has(work / "echo.log", "READY"), 15, "echo server")
    srv = PROCS.start(lab.ns(lab.srv, "timeout", "180", "dns2tcpd", "-F", "-f", str(conf)), work / "dns2tcpd.log")
    wait_for(lambda: lab.listening(lab.srv, "udp", SRV_IP, 53), 15, "dns2tcpd on :53")
    payload = run([PY, str(CHANNELS), "text", "--bytes", str(c.payload), "--seed", c.name])
    data = payload.stdout.encode()
    cap = lab.start_capture(pcap, work)
    out = work / "dns2tcpc.out"
    cli = PROCS.start(
        lab.ns(lab.cli, "timeout", "150", "dns2tcpc", "-z", c.domain, "-r", "echo", "-l", "-", *c.args, SRV_IP),
        work / "dns2tcpc.log",
        stdin=subprocess.PIPE,
        stdout=out,
    )
    assert cli.stdin is not None
    cli.stdin.write(data)
    cli.stdin.flush()
    # dns2tcpc quits on stdin EOF, so keep stdin open until the echo came back in full
    try:
        wait_for(lambda: out.stat().st_size >= len(data) or cli.poll() is not None, 120, "echoed payload", step=0.2)
    finally:
        echoed = out.stat().st_size if out.exists() else 0
        log(f"  dns2tcp: sent {len(data)} echoed {echoed}")
    if echoed < len(data):
        raise RuntimeError(f"only {echoed} of {len(data)} bytes came back")
    c.payload_sent = len(data)
    cli.stdin.close()
    time.sleep(3)
    PROCS.stop(cli)
    lab.stop_capture(cap)
    PROCS.stop(srv)
    PROCS.stop(echo)


def do_synthetic(c: Capture, lab: Lab, pcap: Path, work: Path) -> None:
    x = c.extra
    resp = PROCS.start(
        lab.ns(
            lab.srv,
            "timeout",
            "200",
            PY,
            str(CHANNELS),
            "respond",
            "--bind",
            SRV_IP,
            "--domain",
            c.domain,
            "--mode",
            x["mode"],
            "--timeout",
            "180",
        ),
        work / "respond.log",
    )
    wait_for(lambda: lab.listening(lab.srv, "udp", SRV_IP, 53), 15, "responder on :53")
    cap = lab.start_capture(pcap, work)
    send = run(
        lab.ns(
            lab.cli,
            "timeout",
            "170",
            PY,
            str(CHANNELS),
            "send",
            "--server",
            SRV_IP,
            "--domain",
            c.domain,
            "--channel",
            x["channel"],
            "--bytes",
            str(c.payload),
            "--seed",
            c.name,
            "--throttle-ms",
            str(x["throttle"]),
            "--timeout",
            "150",
        ),
        timeout=180,
        check=False,
    )
    log(f"  send: {send.stdout.strip()} {send.stderr.strip()[-300:]}")
    lab.stop_capture(cap)
    PROCS.stop(resp)
    if send.returncode != 0:
        raise RuntimeError(f"synthetic sender failed: {send.stdout} {send.stderr[-300:]}")
    c.payload_sent = c.payload
    m = re.search(r"queries (\d+)", send.stdout)
    c.expected_queries = int(m.group(1)) if m else 0
    if "rewrite" in x:
        rewrite_low_and_slow(pcap, x["rewrite"], seed=c.name)


def rewrite_low_and_slow(pcap: Path, interval: float, seed: str) -> None:
    """Spread the queries to one per ``interval`` seconds (+0-5 s jitter).

    Each answer keeps its real delay after its query (matched on DNS id + qname).
    """
    import random

    import dpkt

    rnd = random.Random(seed)
    with open(pcap, "rb") as f:
        reader = dpkt.pcap.Reader(f)
        linktype, snaplen = reader.datalink(), reader.snaplen
        pkts = list(reader)
    t_start = pkts[0][0]
    sent: dict[tuple[int, bytes], tuple[float, float]] = {}  # key -> (orig ts, new ts)
    out = []
    n = 0
    for ts, buf in pkts:
        eth = dpkt.ethernet.Ethernet(buf)
        msg = dpkt.dns.DNS(eth.data.data.data)
        key = (msg.id, msg.qd[0].name.lower().encode() if msg.qd else b"")
        if msg.qr == dpkt.dns.DNS_Q:
            if key in sent:  # retransmission: keep its real offset from the first try
                orig, new = sent[key]
                out.append((new + (ts - orig), buf))
                continue
            new = t_start + n * interval + rnd.uniform(0, 5)
            n += 1
            sent[key] = (ts, new)
            out.append((new, buf))
        else:
            orig, new = sent.get(key, (ts, ts))
            out.append((new + (ts - orig), buf))
    out.sort(key=lambda item: item[0])
    tmp = pcap.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        writer = dpkt.pcap.Writer(f, snaplen=snaplen, linktype=linktype)
        for ts, buf in out:
            writer.writepkt(buf, ts=ts)
    tmp.replace(pcap)


# --------------------------------------------------------------------------- verification


def pcap_stats(pcap: Path) -> dict:
    import dpkt

    def tshark_count(flt: str) -> int:
        r = run(["tshark", "-r", str(pcap), "-Y", flt], timeout=120, check=False)
        return len([line for line in r.stdout.splitlines() if line.strip()])

    with open(pcap, "rb") as f:
        ts = [t for t, _ in dpkt.pcap.Reader(f)]
    return {
        "queries": tshark_count("dns.flags.response==0"),
        "responses": tshark_count("dns.flags.response==1"),
        "packets": len(ts),
        "duration": (ts[-1] - ts[0]) if ts else 0.0,
        "size": pcap.stat().st_size,
    }


def md_escape(text: str) -> str:
    return text.replace("<", "\\<").replace("|", "\\|")


def fmt_duration(s: float) -> str:
    return f"{s / 3600:.2f} h" if s > 3600 else f"{s:.1f} s"


def write_manifest(outdir: Path, done: list[tuple[Capture, dict]], failed: list[Capture]) -> None:
    lines = [
        "# Generated DNS-tunnel captures",
        "",
        "Made by `tests/tunnels/generate.py` (see `tests/tunnels/README.md`) inside private",
        "network namespaces (client 10.231.0.2 -> server 10.231.0.1, veth, `udp port 53`,",
        "captured on the client side). Query/response counts are from",
        "`tshark -r FILE -Y 'dns.flags.response==0'` (resp. `==1`) at generation time.",
        '"Payload" is application bytes pushed through the channel (iodine: seeded',
        "incompressible bytes over TCP through the tunnel; dns2tcp: seeded English-like",
        "text echoed back through the tunnel; synthetic: seeded incompressible bytes encoded",
        "into query names).",
        "",
        "| file | tool | settings | tunnel domain | queries | responses | payload bytes | duration | size |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c, st in done:
        lines.append(
            f"| `{c.name}.pcap` | {c.tool} | {md_escape(c.settings)} | `{c.domain}` | {st['queries']} | "
            f"{st['responses']} | {c.payload_sent} | {fmt_duration(st['duration'])} | "
            f"{st['size'] // 1024} KB |"
        )
    lines += [
        "",
        "Notes:",
        "- `synth_lowslow_base32_24h.pcap`: the queries were really sent and answered on the",
        "  wire in a few seconds; the pcap timestamps were then rewritten with dpkt so that",
        "  query *i* sits at start + 60·i s + uniform(0, 5) s and each answer keeps its real",
        "  delay after its query. The capture therefore spans ~24 h (1440 queries, 14,400",
        "  bytes/day, 10 bytes per query), which is the rate a per-minute counter never sees.",
        "- iodine captures include the handshake (version, login, codec and fragment-size",
        "  probing), the transfer, and ~8 s of idle keep-alive traffic.",
        "- iodine sets upstream encoding by itself (Base128 when the path is 8-bit clean, as",
        "  here); `-O` only chooses the downstream (answer) encoding.",
        "- iodine: fewer responses than queries because in lazy mode the server holds the",
        "  latest poll until it has data or its interval expires; the held polls are",
        "  unanswered when the client is stopped. Handshake probes that time out add some.",
        "- dns2tcp: answer and query counts differ a little either way (the server can",
        "  repeat replies for queued data; the client's last polls go unanswered when it",
        "  quits) - real tool behaviour, kept as captured.",
        "- Names from iodine's base128 upstream carry bytes 0xBC-0xFD (not LDH, not",
        "  UTF-8): dpkt 1.9.8's `dpkt.dns.DNS` raises UnicodeDecodeError on most iodine",
        "  packets and UnpackError on KEY (25) and PRIVATE (65399) answers, so parse these",
        "  captures with a byte-safe parser.",
    ]
    if failed:
        lines += ["", "Failed in the last run (no capture kept):", ""]
        lines += [f"- `{c.name}` ({c.tool}, {c.settings}): {c.error}" for c in failed]
    (outdir / "MANIFEST.md").write_text("\n".join(lines) + "\n")
    (outdir / "LABELS.txt").write_text("".join(f"{c.domain}\n" for c, _ in done))


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--only", nargs="*", help="capture names to (re)make; others untouched")
    ap.add_argument("--keep-work", action="store_true", help="keep per-capture logs")
    a = ap.parse_args()

    if os.geteuid() != 0:
        print("must run as root (network namespaces, iodine tun device)", file=sys.stderr)
        return 2
    missing = [
        t
        for t in ("ip", "tcpdump", "tshark", "iodine", "iodined", "dns2tcpc", "dns2tcpd", "timeout", "ss")
        if not shutil.which(t)
    ]
    try:
        import dns.message  # noqa: F401
        import dpkt  # noqa: F401
    except ImportError as e:
        missing.append(str(e))
    if missing:
        print(f"missing: {missing}", file=sys.stderr)
        return 2

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGALRM, on_signal)
    signal.alarm(GLOBAL_LIMIT_S)

    outdir = a.outdir.resolve()
    outdir.mkdir(parents=True, exist_ok=True)
    work_root = outdir / ".work"
    shutil.rmtree(work_root, ignore_errors=True)
    remove_stale_namespaces()

    selected = [c for c in CAPTURES if not a.only or c.name in a.only]
    done: list[tuple[Capture, dict]] = []
    failed: list[Capture] = []
    handlers = {"iodine": do_iodine, "dns2tcp": do_dns2tcp, "synthetic": do_synthetic}
    try:
        for c in CAPTURES:
            pcap = outdir / f"{c.name}.pcap"
            if c not in selected:
                if pcap.exists():  # keep the earlier capture in the manifest
                    c.payload_sent = c.payload
                    done.append((c, pcap_stats(pcap)))
                continue
            work = work_root / c.name
            work.mkdir(parents=True)
            log(f"{c.name}: {c.settings} ({c.domain})")
            try:
                for attempt in (1, 2):
                    with Lab() as lab:
                        # written in the work dir, moved into place only when complete
                        handlers[c.kind](c, lab, work / pcap.name, work)
                    st = pcap_stats(work / pcap.name)
                    if st["queries"] == 0:
                        raise RuntimeError("capture holds no queries")
                    if st["queries"] >= c.expected_queries:
                        break
                    drops = (work / "tcpdump.log").read_text(errors="replace").strip()
                    log(
                        f"  capture has {st['queries']} of {c.expected_queries} queries sent "
                        f"(tcpdump: {drops.splitlines()[-1] if drops else '?'}); "
                        + ("retrying" if attempt == 1 else "giving up")
                    )
                else:
                    raise RuntimeError(f"capture incomplete: {st['queries']} of {c.expected_queries} queries")
                shutil.move(work / pcap.name, pcap)
                c.ok = True
                done.append((c, st))
                log(
                    f"  ok: {st['queries']} queries, {st['responses']} responses, "
                    f"{st['size']} bytes, {fmt_duration(st['duration'])}"
                )
            except (Exception, TimeoutError) as e:  # noqa: BLE001
                c.error = f"{type(e).__name__}: {e}".replace("\n", " ")[:300]
                logs = " | ".join(
                    f"{p.name}: {p.read_text(errors='replace')[-300:]!r}" for p in sorted(work.glob("*.log"))
                )
                log(f"  FAILED {c.error}\n    logs: {logs}")
                failed.append(c)
                if pcap.exists():
                    pcap.unlink()
    finally:
        PROCS.stop_all()
        for ns in list_namespaces():
            if ns.startswith(f"{NS_PREFIX}{os.getpid()}-"):
                delete_namespace(ns)
        signal.alarm(0)
        if not a.keep_work:
            shutil.rmtree(work_root, ignore_errors=True)
    write_manifest(outdir, done, failed)
    log(f"{len(done)} captures, {len(failed)} failed -> {outdir}")
    return 0 if not failed else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as e:
        print(f"interrupted ({e}); processes stopped, namespaces removed", file=sys.stderr)
        sys.exit(130)
