"""``dnsgate replay --report``: the page, opened in a real headless Chromium (Debian's).

Chromium is driven over the DevTools protocol (a websocket, with aiohttp): the
test loads the page from a file, asks the browser what it laid out (each
plot's size, its series' drawn length and height, the bars), records every
network request the page makes (there must be none), and takes a screenshot.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from resolver.offline.report import Timeline, time_ticks
from resolver.pipeline.alerts import Alert
from tests.support.harness import ensure_packages, stop_process
from tests.support.observability import poll
from tests.support.upstream_servers import ROOT

pytestmark = pytest.mark.integration

CORPUS = ROOT / "tests" / "data" / "corpus"
TUNNELS = ROOT / "tests" / "data" / "tunnels"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
    "--hide-scrollbars", "--remote-debugging-port=0",
]
ENFORCE = """\
upstreams: [{address: 127.0.0.1, port: 9}]
namespaces:
  lab:
    clients: [0.0.0.0/0, '::/0']
    mode: enforce
    allow: ['*.devlab-iodine.net']
    detection: {mode: enforce}
"""

# What the browser reports about each plot it laid out.
LAYOUT = """JSON.stringify({
  title: document.title,
  text: document.body.innerText,
  fetching: document.querySelectorAll('script, link, img, iframe, object, embed').length,
  plots: [...document.querySelectorAll('svg.plot')].map(svg => {
    const box = svg.getBoundingClientRect();
    return {
      id: svg.id, width: box.width, height: box.height,
      series: [...svg.querySelectorAll('path.series')].map(p => ({
        name: p.dataset.series, length: p.getTotalLength(), height: p.getBBox().height})),
      points: svg.querySelectorAll('circle.point').length,
      bars: [...svg.querySelectorAll('rect.bar')].map(r => r.getBBox().width),
    };
  }),
})"""


def dnsgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "resolver.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


class Page:
    """One browser tab over the DevTools protocol (flattened session)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, session: str) -> None:
        self.ws = ws
        self.session = session
        self.ids = itertools.count(1000)
        self.events: list[dict[str, Any]] = []

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        return await cdp(self.ws, method, self.events, session=self.session, ids=self.ids, **params)

    async def open(self, url: str) -> None:
        await self.call("Page.enable")
        await self.call("Network.enable")
        await self.call("Page.navigate", url=url)
        while not any(e["method"] == "Page.loadEventFired" for e in self.events):
            self.events.append(await receive(self.ws))

    async def layout(self) -> dict[str, Any]:
        result = await self.call("Runtime.evaluate", expression=LAYOUT, returnByValue=True)
        data: dict[str, Any] = json.loads(result["result"]["value"])
        return data

    async def screenshot(self, path: Path, width: int = 1100, height: int = 1400) -> None:
        await self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                        deviceScaleFactor=1, mobile=False)
        shot = await self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))  # noqa: ASYNC240

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e["method"] == "Network.requestWillBeSent"]


async def receive(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    async with asyncio.timeout(30):
        message = await ws.receive()
    assert message.type == aiohttp.WSMsgType.TEXT, message
    data: dict[str, Any] = json.loads(message.data)
    return data


async def cdp(ws: aiohttp.ClientWebSocketResponse, method: str, events: list[dict[str, Any]],
              session: str | None = None, ids: Any = None, **params: Any) -> dict[str, Any]:
    """Send one command; keep the events that arrive before its answer."""
    number = next(ids)
    message: dict[str, Any] = {"id": number, "method": method, "params": params}
    if session:
        message["sessionId"] = session
    await ws.send_str(json.dumps(message))
    while True:
        data = await receive(ws)
        if data.get("id") == number:
            assert "error" not in data, data
            result: dict[str, Any] = data["result"]
            return result
        if "method" in data:
            events.append(data)


class Chromium:
    """Debian's chromium, headless, with a fresh profile; DevTools on a port it picks itself."""

    def __init__(self, workdir: Path) -> None:
        self.profile = workdir / "profile"
        self.log = workdir / "chromium.log"
        binary = shutil.which("chromium")
        if binary is None:
            ensure_packages("chromium")
            binary = shutil.which("chromium")
        assert binary
        # Chromium puts its singleton socket and cookie in a directory under TMPDIR that it
        # does not remove: a directory of the test's own, removed in stop(), rather than
        # one left in /tmp per run. Short: a unix socket's path must fit in 108 octets.
        self.tmp = tempfile.mkdtemp(prefix="dnsgate-chromium-")
        tmp = self.tmp
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}",
                                          "about:blank"], stdout=log, stderr=subprocess.STDOUT,
                                         env={**os.environ, "TMPDIR": tmp})
        # Chromium writes the port and the browser's websocket path once it listens.
        active = self.profile / "DevToolsActivePort"

        def listening() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(self.log.read_text(errors="replace")[-2000:])
            return active.exists() and len(active.read_text().split()) == 2

        try:
            poll(listening, 60, "chromium DevTools")
        except BaseException:
            self.stop()
            raise
        port, path = active.read_text().split()
        self.url = f"ws://127.0.0.1:{port}{path}"
        self.ids = itertools.count(1)

    async def page(self, ws: aiohttp.ClientWebSocketResponse) -> Page:
        events: list[dict[str, Any]] = []
        target = await cdp(ws, "Target.createTarget", events, ids=self.ids, url="about:blank")
        attached = await cdp(ws, "Target.attachToTarget", events, ids=self.ids,
                             targetId=target["targetId"], flatten=True)
        return Page(ws, attached["sessionId"])

    def stop(self) -> None:
        stop_process(self.proc)
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[tuple[Chromium, aiohttp.ClientWebSocketResponse]]:
    chromium = await asyncio.to_thread(Chromium, tmp_path)
    try:
        async with aiohttp.ClientSession() as http, http.ws_connect(chromium.url, max_msg_size=0) as ws:
            yield chromium, ws
    finally:
        chromium.stop()


async def show(browser: tuple[Chromium, aiohttp.ClientWebSocketResponse], html: Path,
               screenshot: Path) -> dict[str, Any]:
    chromium, ws = browser
    page = await chromium.page(ws)
    await page.open(html.as_uri())
    layout = await page.layout()
    await page.screenshot(screenshot)
    assert page.requests() == [html.as_uri()], "the page fetched something"
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # noqa: ASYNC240
    assert screenshot.stat().st_size > 20_000  # noqa: ASYNC240 - a rendered page, not a blank one
    return layout


def plot(layout: dict[str, Any], plot_id: str) -> dict[str, Any]:
    found: dict[str, Any] = next(p for p in layout["plots"] if p["id"] == plot_id)
    assert found["width"] > 300, found
    assert found["height"] > 50, found
    return found


async def test_replay_report_renders_with_data(
    browser: tuple[Chromium, aiohttp.ClientWebSocketResponse], tmp_path: Path
) -> None:
    config = tmp_path / "enforce.yaml"
    config.write_text(ENFORCE)
    html = tmp_path / "report.html"
    captures = [str(CORPUS / n) for n in ("dns2tcp_txt_dev.pcap", "dnscat2_dev.pcap", "iodine_dev.pcap")]
    out = dnsgate("replay", *captures, str(TUNNELS / "synth_words.pcap"), "--config", str(config),
                  "--report", str(html))
    assert out.returncode == 0, out.stderr
    assert f"report written to {html}" in out.stderr
    assert out.stdout.count("\n") == len(out.stdout.splitlines())  # stdout still carries the alerts
    assert all(json.loads(line)["kind"] in ("policy", "tunnel") for line in out.stdout.splitlines())

    layout = await show(browser, html, tmp_path / "report.png")
    assert layout["title"] == "dnsgate replay report"
    assert layout["fetching"] == 0
    timeline = plot(layout, "alerts-over-time")
    drawn = {s["name"]: s for s in timeline["series"]}
    assert set(drawn) == {"policy · lab", "tunnel · lab"}
    assert all(s["length"] > 100 and s["height"] > 5 for s in drawn.values()), drawn  # lines with ups and downs
    assert timeline["points"] > 0
    assert len(plot(layout, "denied-lab")["bars"]) >= 3
    flagged = plot(layout, "flagged-lab")["bars"]
    assert len(flagged) == 4
    assert all(w > 0 for w in flagged)
    text = layout["text"]
    for domain in ("devlab-tunnel.net", "devlab-dnscat.org", "devlab-iodine.net", "lab-wrd1.net"):
        assert domain in text
    assert "info_bytes=" in text
    assert "e.g." in text
    assert "Namespace lab" in text


async def test_sweep_report_draws_the_tuning_curve(
    browser: tuple[Chromium, aiohttp.ClientWebSocketResponse], tmp_path: Path
) -> None:
    captures = ["iodine_txt_base32.pcap", "dns2tcp_txt.pcap", "synth_words.pcap"]
    labels = tmp_path / "labels.txt"
    labels.write_text("t2.lab-iod2.net\nx1.lab-d2t1.net\nw1.lab-wrd1.net\n")
    html = tmp_path / "sweep.html"
    out = dnsgate("replay", *(str(TUNNELS / c) for c in captures), "--sweep", "alert_points=1,8,13",
                  "--labels", str(labels), "--report", str(html))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("  alert_points")  # the table is still printed

    layout = await show(browser, html, tmp_path / "sweep.png")
    assert layout["title"] == "dnsgate replay sweep: alert_points"
    curve = plot(layout, "tuning-curve")
    drawn = {s["name"]: s for s in curve["series"]}
    assert set(drawn) == {"tunnel alerts", "flagged domains", "true positives", "false positives"}
    assert curve["points"] == 3 * 4
    # Flagged domains fall as the threshold rises: the line is not flat.
    assert drawn["flagged domains"]["height"] > 10
    assert drawn["tunnel alerts"]["height"] > 10
    assert drawn["false positives"]["height"] == 0
    cells = [line.split("\t") for line in layout["text"].splitlines() if "\t" in line]  # table rows
    rows = [r for r in cells if r[0] in ("1", "8", "13")]
    assert [r[0] for r in rows] == ["1", "8", "13"]
    assert rows[0][2] == "3"
    assert rows[-1][2] == "0"


def test_report_to_an_unwritable_path_is_one_line(tmp_path: Path) -> None:
    out = dnsgate("replay", str(CORPUS / "dnscat2_dev.pcap"), "--report", str(tmp_path / "no" / "r.html"))
    assert out.returncode == 2
    assert out.stderr.splitlines()[-1] == (
        f"dnsgate replay: --report {tmp_path / 'no' / 'r.html'}: No such file or directory"
    )
    assert "Traceback" not in out.stderr


def test_hostile_names_are_escaped_in_the_page() -> None:
    from resolver.offline.replay import ReplayReport, SummarySink
    from resolver.offline.report import render_report

    report = ReplayReport(["x.pcap"])
    summaries: dict[str, Any] = {}

    def summary(ns: str) -> Any:
        from resolver.offline.replay import NamespaceSummary

        return summaries.setdefault(ns, report.namespaces.setdefault(ns, NamespaceSummary(ns, "enforce", "observe")))

    sink, timeline = SummarySink(report, summary), Timeline()
    evil = '<script>alert(1)</script>\\010.evil.example'
    for kind in ("policy", "tunnel"):
        alert = Alert(1.0, kind, "high", "ns<b>", "10.0.0.1", evil, "TXT", "evil.example", ["entropy"],
                      "blocked", {"qname": evil, "note": "<img src=x>"})
        sink.submit(alert)
        timeline.submit(alert)
    page = render_report(report, timeline)
    assert "<script" not in page
    assert "<img" not in page
    assert "<b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;\\010.evil.example" in page


def test_timeline_stays_bounded_over_a_long_capture() -> None:
    timeline = Timeline(max_buckets=100)
    for second in range(0, 86_400 * 3, 7):  # three days, an alert every 7 s
        timeline.submit(Alert(1.7e9 + second, "tunnel", "high", "agents", "10.0.0.1", "x.t.example",
                              "TXT", "t.example", ["entropy"], "alerted"))
    assert len(timeline.buckets) <= 100
    width, series = timeline.series()
    points = series["tunnel · agents"]
    assert sum(n for _, n in points) == len(range(0, 86_400 * 3, 7))  # nothing lost in the merging
    assert width >= 86_400 * 3 / 120
    assert len(points) <= 130
    ticks = time_ticks(points[0][0], points[-1][0])
    assert 3 <= len(ticks) <= 7
    assert all(t % 3600 == 0 for t in ticks)
