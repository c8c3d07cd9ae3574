"""The processes a benchmark run needs, each on a free loopback port.

NSD serves the synthetic zone, Unbound applies the RPZ allowlist and forwards
to NSD, redis-server backs dnsgate's Redis state, and dnsgate itself. Every
server writes its config into a temp dir and is ready when it answers a
query (polling, never a fixed sleep). Nothing here talks to anything but
127.0.0.1.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import string
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.harness import free_port, wait_for_dns, which

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = ROOT / ".venv" / "bin"

ZONE = "bench.example"  # not test./example. local-zones in Unbound's defaults
TTL = 86400

def make_query(name: str, qtype: int = 1, qid: int | None = None) -> bytes:
    qid = random.getrandbits(16) if qid is None else qid
    wire = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + wire + struct.pack("!HH", qtype, 1)


def ask(port: int, name: str, qtype: int = 1, timeout: float = 0.5) -> tuple[int, int] | None:
    """(rcode, ancount) of a UDP query to 127.0.0.1:port, or None on timeout."""
    q = make_query(name, qtype)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(q, ("127.0.0.1", port))
        try:
            while True:
                data, _ = s.recvfrom(4096)
                if data[:2] == q[:2]:
                    break
        except OSError:
            return None
    flags, _qd, an = struct.unpack_from("!HHH", data, 2)
    return flags & 0xF, an


def allowed_names(n: int = 1000) -> list[str]:
    """The synthetic zone's names, and exactly the allowlist of both resolvers."""
    return [f"host{i:04d}.{ZONE}" for i in range(n)]


def random_label(rng: random.Random, length: int) -> str:
    return "".join(rng.choices(string.ascii_lowercase + string.digits, k=length))


def denied_names(n: int, seed: int = 7) -> list[str]:
    """Random names in random domains: in neither allowlist, NXDOMAIN from both."""
    rng = random.Random(seed)
    tlds = ("com", "net", "org", "io")
    return [f"{random_label(rng, 8)}.{random_label(rng, 10)}.{rng.choice(tlds)}" for _ in range(n)]


class Proc:
    """A child process with its working dir; stop() terminates it (only it)."""

    name = "proc"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = free_port()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def spawn(self, argv: list[str], **kw: object) -> None:
        self.stderr_path = self.workdir / f"{self.name}.stderr"
        err = open(self.stderr_path, "wb")  # noqa: SIM115 - lives as long as the child
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, **kw)  # type: ignore[call-overload]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def pids(self) -> list[int]:
        """This process and its descendants (worker processes)."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        root = self.proc.pid
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
        out, todo = [], [root]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo.extend(children.get(pid, []))
        return out

    def stderr_tail(self, n: int = 2000) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-n:]
        except (OSError, AttributeError):
            return ""


class Nsd(Proc):
    name = "nsd"

    def __init__(self, workdir: Path, names: list[str]) -> None:
        super().__init__(workdir)
        self.names = names

    def start(self) -> None:
        d = self.workdir
        zone = [
            f"$ORIGIN {ZONE}.",
            f"$TTL {TTL}",
            f"@ IN SOA ns.{ZONE}. hostmaster.{ZONE}. 1 3600 600 86400 {TTL}",
            f"@ IN NS ns.{ZONE}.",
            "ns IN A 198.19.255.254",  # never contacted (everyone forwards to NSD by port); not loopback, so no rebinding hit
        ]
        for i, name in enumerate(self.names):
            label = name[: -len(ZONE) - 1]
            # 198.18.0.0/15 (RFC 2544, benchmarking): outside dnsgate's rebinding ranges, as a public answer would be
            zone.append(f"{label} IN A 198.{18 + ((i >> 16) & 1)}.{(i >> 8) & 255}.{i & 255}")
        (d / "bench.zone").write_text("\n".join(zone) + "\n")
        (d / "nsd.conf").write_text(f"""server:
  ip-address: 127.0.0.1
  port: {self.port}
  do-ip6: no
  username: ""
  chroot: ""
  zonesdir: "{d}"
  pidfile: "{d}/nsd.pid"
  database: ""
  zonelistfile: "{d}/zone.list"
  xfrdfile: "{d}/xfrd.state"
  xfrdir: "{d}"
  logfile: "{d}/nsd.log"
  server-count: 1
  verbosity: 0
  hide-version: yes
  rrl-ratelimit: 0          # NSD's response rate limiting would throttle the flood's NXDOMAINs to ~200/s
  rrl-whitelist-ratelimit: 0
remote-control:
  control-enable: no
zone:
  name: {ZONE}
  zonefile: "{d}/bench.zone"
""")
        self.spawn([which("nsd") or "nsd", "-d", "-c", str(d / "nsd.conf")])
        wait_for_dns(self.port, self.names[0], proc=self.proc, what="nsd")


class Unbound(Proc):
    """Unbound, one thread, RPZ allowlist: passthru for the names, NXDOMAIN for all else."""

    name = "unbound"

    def __init__(self, workdir: Path, names: list[str], upstream_port: int) -> None:
        super().__init__(workdir)
        self.names = names
        self.upstream_port = upstream_port

    def start(self) -> None:
        d = self.workdir
        rpz = [
            "$ORIGIN rpz.bench.",
            "$TTL 60",
            "@ IN SOA localhost. root.localhost. 1 3600 600 86400 60",
            "@ IN NS localhost.",
            "* IN CNAME .",  # every name: NXDOMAIN
        ]
        rpz += [f"{n}.rpz.bench. IN CNAME rpz-passthru." for n in self.names]
        (d / "allow.rpz").write_text("\n".join(rpz) + "\n")
        (d / "unbound.conf").write_text(f"""server:
  interface: 127.0.0.1@{self.port}
  port: {self.port}
  do-daemonize: no
  chroot: ""
  username: ""
  directory: "{d}"
  pidfile: "{d}/unbound.pid"
  logfile: "{d}/unbound.log"
  use-syslog: no
  verbosity: 0
  num-threads: 1
  so-reuseport: no
  access-control: 127.0.0.0/8 allow
  do-ip6: no
  do-not-query-localhost: no
  module-config: "respip iterator"
  prefetch: no
  qname-minimisation: no
  rpz:
    name: rpz.bench.
    zonefile: "{d}/allow.rpz"
    rpz-log: no
forward-zone:
  name: "."
  forward-addr: 127.0.0.1@{self.upstream_port}
""")
        check = which("unbound-checkconf")
        if check:
            res = subprocess.run([check, str(d / "unbound.conf")], capture_output=True, text=True)
            if res.returncode != 0:
                raise RuntimeError(f"unbound-checkconf: {res.stdout}{res.stderr}")
        self.spawn([which("unbound") or "unbound", "-d", "-c", str(d / "unbound.conf")])
        wait_for_dns(self.port, self.names[0], proc=self.proc, what="unbound")


class Redis(Proc):
    name = "redis"

    def start(self) -> None:
        self.spawn([
            which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", str(self.workdir),
            "--protected-mode", "yes", "--loglevel", "warning",
        ])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.stderr_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("redis-server not answering PING")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@dataclass
class DnsgateSpec:
    """What differs between the dnsgate runs."""

    label: str
    backend: str = "memory"
    workers: int = 1
    mode: str = "enforce"
    detection: str = "observe"
    extra: dict[str, object] = field(default_factory=dict)
    clients: tuple[str, ...] = ("127.0.0.1/32",)  # 127.0.0.0/8 when clients use several loopback sources
    namespace_extra: dict[str, object] = field(default_factory=dict)  # e.g. rate_limit


class Dnsgate(Proc):
    name = "dnsgate"

    def __init__(self, workdir: Path, names: list[str], upstream_port: int, spec: DnsgateSpec, redis_url: str = "", source: Path | None = None) -> None:
        super().__init__(workdir)
        self.source = source  # a tree exported with export_source(), else the working tree
        self.names = names
        self.upstream_port = upstream_port
        self.spec = spec
        self.redis_url = redis_url
        self.name = f"dnsgate-{spec.label}"

    def config_text(self) -> str:
        import yaml

        s = self.spec
        cfg: dict[str, object] = {
            "listen": [{"address": "127.0.0.1", "port": self.port}],
            "upstreams": [{"address": "127.0.0.1", "port": self.upstream_port}],
            "unknown_clients": "refuse",
            "detection": {"mode": s.detection},
            "state": {"backend": s.backend, **({"url": self.redis_url} if s.backend == "redis" else {})},
            "alerts": [{"type": "jsonl", "path": "alerts.jsonl"}],
            "namespaces": {
                "bench": {
                    "clients": list(s.clients),
                    "mode": s.mode,
                    "allow": list(self.names),
                    **s.namespace_extra,
                }
            },
        }
        if s.workers != 1:
            cfg["workers"] = s.workers
        cfg.update(s.extra)
        return str(yaml.safe_dump(cfg, sort_keys=False))

    def start(self) -> None:
        path = self.workdir / "dnsgate.yaml"
        path.write_text(self.config_text())
        python = VENV_BIN / "python"
        src = self.source or ROOT
        argv = [str(python) if python.exists() else sys.executable, "-m", "resolver.cli"]
        env = {**os.environ, "PYTHONPATH": str(src)}
        self.spawn([*argv, "serve", "--config", str(path)], cwd=str(src), env=env)
        try:
            wait_for_dns(self.port, self.names[0], proc=self.proc, what=self.name)
        except Exception as exc:  # noqa: BLE001
            self.stop()
            raise RuntimeError(f"{exc}\n{self.stderr_tail()}") from None

    def process_tree(self) -> list[int]:
        """The dnsgate pid and every descendant (worker processes)."""
        return self.pids()


def export_source(ref: str, dest: Path) -> Path:
    """Export resolver/, heuristics/ and zones/ at a git ref (e.g. HEAD) into dest.

    Lets a run measure a committed tree while the working tree is mid-edit.
    """
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "resolver", "heuristics", "zones"],
        check=True, capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def cpu_seconds(pids: list[int]) -> float:
    """utime+stime of these processes (and their reaped children), in seconds."""
    hz = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / hz


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent not idle since boot (/proc/stat), to spot other load on the machine."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0
