"""The syslog alert sink against a real rsyslogd on loopback: UDP, TCP and a unix socket.

The test runs rsyslogd itself (``-n``, its own config, free ports, files
under the test's directory; the Debian service is never started). rsyslog
parses each RFC 5424 message (``mmpstrucdata`` turns the structured data into
JSON) and writes every field as one JSON line, which the test reads back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from resolver.config import ConfigError
from resolver.config import Sink as SinkSpec
from resolver.operations.sinks import SyslogSink, build, sd_value
from resolver.pipeline.alerts import Alert
from tests.support.harness import ask, free_port, stop_process
from tests.support.observability import poll
from tests.support.sinks import deliver_all
from tests.support.upstream_servers import Unbound, basic_config, start_dnsgate

pytestmark = pytest.mark.integration

SD_ID = "dnsgate@32473"

TEMPLATE_FIELDS = {
    "pri": "pri", "facility": "syslogfacility-text", "severity": "syslogseverity-text",
    "hostname": "hostname", "app": "app-name", "procid": "procid", "msgid": "msgid",
    "timestamp": "timereported", "msg": "msg", "raw": "rawmsg", "input": "inputname",
    "sd": "$!rfc5424-sd",
}


class Rsyslog:
    """rsyslogd in the foreground with UDP, TCP and unix-socket inputs, writing JSON lines."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.udp_port = free_port()
        self.tcp_port = free_port()
        self.socket_path = workdir / "log.sock"
        self.out = workdir / "received.jsonl"
        self.proc: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        props = "\n".join(
            f'  property(outname="{out}" name="{name}" format="jsonf"'
            + (' dateFormat="rfc3339"' if name == "timereported" else "") + ")"
            for out, name in TEMPLATE_FIELDS.items()
        )
        return f"""
global(workDirectory="{self.workdir}" maxMessageSize="16k")
module(load="imudp")
module(load="imtcp")
module(load="imuxsock" SysSock.Use="off")
module(load="mmpstrucdata")
input(type="imudp" address="127.0.0.1" port="{self.udp_port}")
input(type="imtcp" address="127.0.0.1" port="{self.tcp_port}")
input(type="imuxsock" Socket="{self.socket_path}" UseSpecialParser="off" ParseHostname="on"
      IgnoreTimestamp="off")
template(name="fields" type="list" option.jsonf="on") {{
{props}
}}
action(type="mmpstrucdata")
action(type="omfile" file="{self.out}" template="fields")
"""

    def start(self) -> None:
        binary = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
        if not Path(binary).exists():
            pytest.fail("rsyslogd is missing: `make system-deps` installs Debian's rsyslog")
        conf = self.workdir / "rsyslog.conf"
        conf.write_text(self.config())
        log = open(self.workdir / "rsyslogd.log", "wb")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [binary, "-n", "-f", str(conf), "-i", str(self.workdir / "rsyslogd.pid")],
            stdout=log, stderr=subprocess.STDOUT,
        )
        # Ready when a probe sent over each input has been written out.
        poll(self._tcp_up, 20, "rsyslogd TCP input")
        for transport in ("udp", "unix"):
            marker = f"probe-{transport}"

            def arrived(transport: str = transport, marker: str = marker) -> bool:
                self._probe(transport, marker)
                return any(r["msg"] == marker for r in self.records())

            poll(arrived, 20, f"rsyslogd {transport} input")

    def _tcp_up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError((self.workdir / "rsyslogd.log").read_text())
        try:
            socket.create_connection(("127.0.0.1", self.tcp_port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def _probe(self, transport: str, marker: str) -> None:
        data = f"<134>1 - probe test - probe - {marker}".encode()
        family = socket.AF_UNIX if transport == "unix" else socket.AF_INET
        # Not listening yet is what a probe is for: the error is expected.
        with socket.socket(family, socket.SOCK_DGRAM) as sock, contextlib.suppress(FileNotFoundError, ConnectionRefusedError):
            sock.sendto(data, str(self.socket_path) if transport == "unix" else ("127.0.0.1", self.udp_port))

    def records(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        out = []
        for line in self.out.read_text().splitlines():
            record = json.loads(line)
            record["sd"] = json.loads(record["sd"]) if record["sd"] else {}
            out.append(record)
        return out

    def from_dnsgate(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if r["app"] == "dnsgate"]

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture(scope="module")
def rsyslog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rsyslog]:
    server = Rsyslog(tmp_path_factory.mktemp("rsyslog"))
    server.start()
    yield server
    server.stop()


def alert(**over: Any) -> Alert:
    fields: dict[str, Any] = {
        "ts": 1795317951.25, "kind": "tunnel", "severity": "high", "namespace": "agents",
        "client": "10.1.2.3", "qname": "mzxw6ytboi2dcmrt.t.exfil.example", "qtype": "TXT",
        "domain": "exfil.example", "reasons": ["entropy", "info_budget"], "action": "quarantined",
        "evidence": {"entropy": 4.12, "bytes": 2048, "window_seconds": 60},
    }
    fields.update(over)
    return Alert(**fields)


def spec(**options: Any) -> SinkSpec:
    return SinkSpec("syslog", options, "dnsgate.yaml", 7)


def deliver(sink: SyslogSink, alerts: list[Alert]) -> None:
    asyncio.run(deliver_all(sink, alerts))
    assert (sink.delivered, sink.dropped) == (len(alerts), 0)


def received(rsyslog: Rsyslog, qname: str, count: int = 1) -> list[dict[str, Any]]:
    def found() -> list[dict[str, Any]]:
        hits = [r for r in rsyslog.from_dnsgate() if r["sd"][SD_ID]["qname"] == qname]
        return hits if len(hits) >= count else []

    result: list[dict[str, Any]] = poll(found, 10, f"{qname} at rsyslog")
    return result


@pytest.mark.parametrize("transport", ["udp", "tcp", "unix"])
def test_rfc5424_alert_reaches_rsyslog_with_structured_data(rsyslog: Rsyslog, transport: str) -> None:
    url = {
        "udp": f"udp://127.0.0.1:{rsyslog.udp_port}",
        "tcp": f"tcp://127.0.0.1:{rsyslog.tcp_port}",
        "unix": f"unix://{rsyslog.socket_path}",
    }[transport]
    sink = build(spec(url=url, hostname="gate-1", facility="local3"))
    assert isinstance(sink, SyslogSink)
    qname = f"mzxw6ytboi2dcmrt.{transport}.exfil.example"
    deliver(sink, [alert(qname=qname)])
    [record] = received(rsyslog, qname)
    assert record["input"] == {"udp": "imudp", "tcp": "imtcp", "unix": "imuxsock"}[transport]
    assert (record["facility"], record["severity"], record["pri"]) == ("local3", "err", str(19 * 8 + 3))
    assert (record["hostname"], record["app"], record["msgid"]) == ("gate-1", "dnsgate", "tunnel")
    assert record["procid"].isdigit()
    assert record["timestamp"] == "2026-11-22T03:25:51.250000Z"  # ts 1795317951.25, microseconds kept
    assert record["sd"] == {SD_ID: {
        "kind": "tunnel", "severity": "high", "namespace": "agents", "client": "10.1.2.3",
        "qname": qname, "qtype": "TXT", "domain": "exfil.example", "reasons": "entropy,info_budget",
        "action": "quarantined", "count": "1",
        "ev.entropy": "4.12", "ev.bytes": "2048", "ev.window_seconds": "60",
    }}
    assert record["msg"] == (
        f"tunnel alert: agents 10.1.2.3 asked {qname} TXT (entropy, info_budget): quarantined"
    )


def test_severities_map_to_syslog_severities(rsyslog: Rsyslog) -> None:
    sink = build(spec(url=f"tcp://127.0.0.1:{rsyslog.tcp_port}"))
    assert isinstance(sink, SyslogSink)
    levels = {"info": "info", "warning": "warning", "high": "err", "critical": "crit"}
    alerts = [alert(severity=s, kind="policy", qname=f"{s}.severity.example") for s in levels]
    deliver(sink, alerts)  # one TCP write, octet-counted frames
    for ours, theirs in levels.items():
        [record] = received(rsyslog, f"{ours}.severity.example")
        assert (record["severity"], record["facility"], record["msgid"]) == (theirs, "local0", "policy")


def test_names_with_control_bytes_stay_escaped(rsyslog: Rsyslog) -> None:
    # The alert's qname is already presentation text (a label with octets 0x0a,
    # 0x00, 0xff and a quote); the namespace and evidence carry raw control
    # characters and SD specials that no alert should, to show they cannot
    # break the record either.
    qname = 'a\\010b\\000c\\255\\".bad]name.example'
    sink = build(spec(url=f"udp://127.0.0.1:{rsyslog.udp_port}"))
    assert isinstance(sink, SyslogSink)
    deliver(sink, [alert(qname=qname, namespace="ns\nwith]newline", evidence={"note": 'x"\ty\\'})])
    [record] = received(rsyslog, qname)
    assert "\n" not in record["raw"]
    assert "\t" not in record["raw"]
    assert "#0" not in record["raw"]
    sd = record["sd"][SD_ID]
    assert sd["qname"] == qname
    assert sd["namespace"] == "ns\\010with]newline"
    assert sd["ev.note"] == 'x"\\009y\\'


@pytest.mark.parametrize("transport", ["udp", "tcp", "unix"])
def test_a_live_dnsgate_sends_its_denials_to_rsyslog(
    rsyslog: Rsyslog, unbound_upstream: Unbound, tmp_path: Path, transport: str
) -> None:
    # `dnsgate serve` runs uvloop, which has no loop.sock_sendto: the datagram transports
    # must deliver there too, not only on asyncio's loop.
    port = free_port()
    url = {
        "udp": f"udp://127.0.0.1:{rsyslog.udp_port}",
        "tcp": f"tcp://127.0.0.1:{rsyslog.tcp_port}",
        "unix": f"unix://{rsyslog.socket_path}",
    }[transport]
    config = basic_config(port, unbound_upstream.port).replace(
        "alerts:\n", f"alerts:\n  - {{type: syslog, url: \"{url}\", facility: authpriv}}\n",
    )
    qname = f"leak.{transport}.syslog-denied.test"
    gate = start_dnsgate(config, tmp_path, port)
    try:
        assert ask(port, qname).rcode() == 3  # NXDOMAIN
        [record] = received(rsyslog, qname)
    finally:
        assert gate.stop() == 0
    assert record["input"] == {"udp": "imudp", "tcp": "imtcp", "unix": "imuxsock"}[transport]
    assert (record["facility"], record["severity"], record["msgid"]) == ("authpriv", "warning", "policy")
    sd = record["sd"][SD_ID]
    assert (sd["namespace"], sd["client"], sd["action"], sd["reasons"]) == (
        "agents", "127.0.0.1", "blocked", "not_allowed")


@pytest.mark.parametrize("transport", ["udp", "unix"])
def test_datagram_transports_deliver_on_uvloop(rsyslog: Rsyslog, transport: str) -> None:
    url = f"udp://127.0.0.1:{rsyslog.udp_port}" if transport == "udp" else f"unix://{rsyslog.socket_path}"
    sink = build(spec(url=url))
    assert isinstance(sink, SyslogSink)
    qnames = [f"n{i}.{transport}.uvloop.example" for i in range(3)]
    uvloop.run(deliver_all(sink, [alert(qname=q) for q in qnames]))
    assert (sink.delivered, sink.dropped) == (3, 0)
    for qname in qnames:
        received(rsyslog, qname)


def test_a_unix_receiver_that_falls_behind_gets_every_message_once(tmp_path: Path) -> None:
    """A receiver not reading fills its queue (EAGAIN for the sender): the sink waits for room,
    on uvloop, and sends each message once, in order, without spinning."""
    path = str(tmp_path / "slow.sock")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    sink = build(spec(url=f"unix://{path}", batch_size=8))
    assert isinstance(sink, SyslogSink)
    alerts = [alert(qname=f"m{i}.slow.example") for i in range(300)]
    got: list[bytes] = []

    async def run() -> tuple[int, float]:
        await sink.start()
        try:
            for a in alerts:
                sink.submit(a)
            cpu = time.process_time()
            await asyncio.sleep(0.5)  # the receiver reads nothing yet
            stalled, spent = sink.delivered, time.process_time() - cpu
            receiver.setblocking(False)
            async with asyncio.timeout(10):
                while len(got) < len(alerts):
                    try:
                        got.append(receiver.recv(65536))
                    except BlockingIOError:
                        await asyncio.sleep(0.005)
            return stalled, spent
        finally:
            await sink.close()
            receiver.close()

    stalled, spent = uvloop.run(run())
    assert stalled < len(alerts)  # it did wait for the receiver
    assert spent < 0.25  # waiting, not spinning on a socket that reads writable
    assert (sink.delivered, sink.dropped, sink.retried) == (300, 0, 0)
    names = [re.search(rb'qname="([^"]+)"', m)[1].decode() for m in got]  # type: ignore[index]
    assert names == [a.qname for a in alerts]


def test_bad_options_name_the_key() -> None:
    with pytest.raises(ConfigError) as err:
        build(spec(url="http://127.0.0.1:514"))
    assert str(err.value).startswith("dnsgate.yaml:7: alerts[syslog].url: must be a udp or tcp or unix URL")
    with pytest.raises(ConfigError) as err:
        build(spec(url="udp://127.0.0.1:514", facility="local9"))
    assert "alerts[syslog].facility: must be one of kern, user," in str(err.value)
    with pytest.raises(ConfigError) as err:
        build(spec(url="udp://127.0.0.1:514", colour="red"))
    assert "alerts[syslog].colour: unknown key" in str(err.value)


def sd_unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in '"\\]':
            out.append(text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_sd_values_never_end_a_param_early(value: str) -> None:
    escaped = sd_value(value)
    # No unescaped quote or bracket can close the value, no control byte survives ...
    unescaped_specials = [
        i for i, ch in enumerate(escaped)
        if ch in '"]' and (len(escaped[:i]) - len(escaped[:i].rstrip("\\"))) % 2 == 0
    ]
    assert not unescaped_specials
    assert not any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in escaped)
    # ... and the receiver gets back the text with control bytes as \DDD.
    expected = "".join(f"\\{ord(c):03d}" if ord(c) < 0x20 or ord(c) == 0x7F else c for c in value)
    assert sd_unescape(escaped) == expected[:1024]
