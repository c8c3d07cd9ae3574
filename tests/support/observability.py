"""A real Prometheus and a real Alertmanager (Debian packages) on free loopback ports.

Readiness is their own ``/-/ready`` endpoint answering 200, never a sleep.
Both write their storage under the test's temporary directory.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.harness import ensure_packages, free_port, stop_process

free_tcp_port = free_port


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """Status and body of a GET (errors with a status are returned, not raised)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback only
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_post(url: str, body: bytes = b"", timeout: float = 5.0, token: str | None = None,
              headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """Status and body of a POST; ``token`` is sent as ``Authorization: Bearer``."""
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, method="POST", headers=sent)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 - loopback only
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def poll(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Call ``check`` until it returns something truthy; its value, or TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout}s")
        time.sleep(0.05)  # interval between probes, not a readiness wait


@dataclass
class Daemon:
    """A child process with an HTTP port and a /-/ready endpoint."""

    name: str
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log()[-2000:]}")
            try:
                return http_get(self.base + "/-/ready", timeout=0.5)[0] == 200
            except OSError:
                return False

        poll(ready, timeout, f"{self.name} ready")

    def log(self) -> str:
        return (self.workdir / f"{self.name}.log").read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc)


def _spawn(name: str, argv: list[str], workdir: Path, port: int) -> Daemon:
    logfile = open(workdir / f"{name}.log", "wb")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(argv, stdout=logfile, stderr=subprocess.STDOUT, cwd=workdir)
    daemon = Daemon(name, port, workdir, proc)
    try:
        daemon.wait_ready()
    except Exception:
        daemon.stop()
        raise
    return daemon


class Prometheus(Daemon):
    def query(self, promql: str) -> list[dict[str, Any]]:
        """The result vector of an instant query through the HTTP API."""
        url = self.base + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        status, body = http_get(url)
        data = json.loads(body)
        if status != 200 or data.get("status") != "success":
            raise RuntimeError(f"query {promql!r} failed: {body[:300]!r}")
        result: list[dict[str, Any]] = data["data"]["result"]
        return result

    def get(self, path: str, **params: str) -> Any:
        """The ``data`` of a successful API answer, e.g. ``get("/api/v1/alerts")``."""
        url = self.base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        status, body = http_get(url)
        data = json.loads(body)
        if status != 200 or data.get("status") != "success":
            raise RuntimeError(f"GET {path} failed: {body[:300]!r}")
        return data["data"]


def start_prometheus(
    workdir: Path, targets: list[str], job: str = "dnsgate", rule_files: Sequence[Path] = ()
) -> Prometheus:
    """Prometheus scraping ``targets`` (host:port) every second, evaluating ``rule_files``."""
    if shutil.which("prometheus") is None:
        ensure_packages("prometheus")
    port = free_tcp_port()
    (workdir / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"scrape_configs:\n  - job_name: {job}\n    scrape_timeout: 1s\n"
        f"    static_configs:\n      - targets: {json.dumps(targets)}\n"
        + (f"rule_files: {json.dumps([str(p) for p in rule_files])}\n" if rule_files else "")
    )
    argv = [
        "prometheus",
        f"--config.file={workdir / 'prometheus.yml'}",
        f"--web.listen-address=127.0.0.1:{port}",
        f"--storage.tsdb.path={workdir / 'tsdb'}",
    ]
    daemon = _spawn("prometheus", argv, workdir, port)
    return Prometheus(daemon.name, daemon.port, daemon.workdir, daemon.proc)


class Alertmanager(Daemon):
    def alerts(self) -> list[dict[str, Any]]:
        """``GET /api/v2/alerts``: the alerts Alertmanager holds."""
        status, body = http_get(self.base + "/api/v2/alerts")
        if status != 200:
            raise RuntimeError(f"GET /api/v2/alerts: HTTP {status}: {body[:300]!r}")
        result: list[dict[str, Any]] = json.loads(body)
        return result


def start_alertmanager(workdir: Path) -> Alertmanager:
    """Alertmanager with one no-op receiver, clustering off."""
    if shutil.which("prometheus-alertmanager") is None:
        ensure_packages("prometheus-alertmanager")
    port = free_tcp_port()
    (workdir / "alertmanager.yml").write_text(
        "route:\n  receiver: blackhole\n  group_wait: 1s\n  group_by: [alertname, namespace]\n"
        "receivers:\n  - name: blackhole\n"
    )
    argv = [
        "prometheus-alertmanager",
        f"--config.file={workdir / 'alertmanager.yml'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
        f"--storage.path={workdir / 'data'}",
    ]
    daemon = _spawn("alertmanager", argv, workdir, port)
    return Alertmanager(daemon.name, daemon.port, daemon.workdir, daemon.proc)


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """One sample from Prometheus text exposition, matched by name and (a subset of) labels."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None
