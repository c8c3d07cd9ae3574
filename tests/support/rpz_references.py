"""Reference RPZ implementations for differential tests: BIND 9 (`named -g`) and Unbound, on loopback.

Both forward to the same upstream and load the same RPZ zone files, in the
same order. Readiness is a DNS answer, never a sleep. Neither service is
installed as a running system service: each test starts its own process in
the foreground and stops it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.harness import ensure_packages, stop_process, which
from tests.support.upstream_servers import wait_for_dns


@dataclass
class ReferenceServer:
    """A foreground DNS server process with its own working directory."""

    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def _start(self, argv: list[str], probe: str) -> None:
        stderr = open(self.workdir / "stderr.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr, cwd=self.workdir)
        try:
            wait_for_dns(self.port, name=probe, proc=self.proc)
        except Exception:  # noqa: BLE001 - any failure to start is reported with the server's own stderr
            self.stop()
            raise RuntimeError((self.workdir / "stderr.log").read_text(errors="replace")[-3000:]) from None

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


class Bind(ReferenceServer):
    """``named -g``: a forwarding resolver with a response-policy statement."""

    def start(self, upstream_port: int, zones: Sequence[tuple[str, Path]], probe: str) -> None:
        ensure_packages("named")
        named = which("named")
        assert named is not None
        policy = " ".join(f'zone "{name}";' for name, _ in zones)
        declarations = "\n".join(
            f'zone "{name}" {{ type primary; file "{path}"; notify no; }};' for name, path in zones
        )
        (self.workdir / "named.conf").write_text(f"""
options {{
    directory "{self.workdir}";
    pid-file none;
    listen-on port {self.port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    forwarders {{ 127.0.0.1 port {upstream_port}; }};
    forward only;
    recursion yes;
    allow-query {{ 127.0.0.0/8; }};
    allow-recursion {{ 127.0.0.0/8; }};
    dnssec-validation no;
    minimal-responses yes;
    response-policy {{ {policy} }};
}};
controls {{ }};
{declarations}
""")
        self._start([named, "-g", "-n", "1", "-c", str(self.workdir / "named.conf")], probe)


def _unbound_server_lines(port: int, workdir: Path) -> list[str]:
    """The ``server:`` clause both Unbound roles share: foreground, loopback, no chroot, one thread."""
    return [
        "server:",
        f"  interface: 127.0.0.1@{port}",
        "  do-daemonize: no",
        '  chroot: ""',
        '  username: ""',
        f'  directory: "{workdir}"',
        '  pidfile: ""',
        "  use-syslog: no",
        "  num-threads: 1",
        "  access-control: 127.0.0.0/8 allow",
        "  do-ip6: no",
    ]


class UnboundRpz(ReferenceServer):
    """Unbound with ``rpz:`` clauses, forwarding everything to the upstream."""

    def start(self, upstream_port: int, zones: Sequence[tuple[str, Path]], probe: str) -> None:
        ensure_packages("unbound")
        lines = [
            *_unbound_server_lines(self.port, self.workdir),
            "  do-not-query-localhost: no",
            '  module-config: "respip iterator"',
            "  minimal-responses: yes",
            '  local-zone: "test." nodefault',
        ]
        for name, path in zones:
            lines += ["rpz:", f'  name: "{name}"', f'  zonefile: "{path}"']
        lines += ["forward-zone:", '  name: "."', f"  forward-addr: 127.0.0.1@{upstream_port}"]
        (self.workdir / "unbound.conf").write_text("\n".join(lines) + "\n")
        self._start(["unbound", "-d", "-c", str(self.workdir / "unbound.conf")], probe)


class ZoneUpstream(ReferenceServer):
    """Unbound as a recursive upstream over one zone it holds itself (``auth-zone``, for upstream use).

    Unlike ``local-data``, an auth-zone is resolved as the Internet is: CNAME
    chains are followed and returned whole, as a real recursive upstream does.
    """

    def start(self, zone: str, records: Sequence[str], probe: str) -> None:  # type: ignore[override]
        ensure_packages("unbound")
        zonefile = self.workdir / f"{zone}.zone"
        zonefile.write_text("\n".join([
            f"{zone}. 300 IN SOA ns.{zone}. root.{zone}. 1 3600 600 86400 60",
            f"{zone}. 300 IN NS ns.{zone}.",
            f"ns.{zone}. 300 IN A 127.0.0.1",
            *records,
        ]) + "\n")
        lines = [
            *_unbound_server_lines(self.port, self.workdir),
            '  module-config: "iterator"',
            f'  local-zone: "{zone}." nodefault',
            "auth-zone:",
            f'  name: "{zone}."',
            f'  zonefile: "{zonefile}"',
            "  for-upstream: yes",
            "  for-downstream: no",
            "  fallback-enabled: no",
        ]
        (self.workdir / "unbound.conf").write_text("\n".join(lines) + "\n")
        self._start(["unbound", "-d", "-c", str(self.workdir / "unbound.conf")], probe)
