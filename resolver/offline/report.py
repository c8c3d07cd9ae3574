"""``dnsgate replay --report FILE.html``: one self-contained page people look at.

The page holds what a replay found, drawn as inline SVG (no script, no font,
no stylesheet or image fetched: it opens offline and in a mail attachment):

- alerts over capture time, one line per (kind, namespace);
- per namespace, the most denied domains and names, and the flagged domains
  with their reasons and the evidence of their most severe alert;
- for ``--sweep``, the tuning curve: alerts and flagged domains (and, with
  ``--labels``, true and false positives) against the swept value.

Every text that came from a capture (names, domains, evidence) is HTML-escaped;
names are already ``\\DDD``-escaped presentation text.
"""

from __future__ import annotations

import html
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resolver.offline.capture import utc_text
from resolver.pipeline.alerts import Alert

if TYPE_CHECKING:  # replay.py imports this module to write the page
    from resolver.offline.replay import FlaggedDomain, NamespaceSummary, ReplayReport, SweepRow

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
TIMELINE_BUCKETS = 720  # at most this many time buckets are kept, whatever the capture's length


class Timeline:
    """A sink counting alerts per (kind, namespace) per capture-time bucket.

    Buckets start one second wide; when more than ``max_buckets`` distinct
    buckets exist the width doubles and neighbours merge, so memory stays
    bounded for a capture of any length.
    """

    name = "timeline"

    def __init__(self, max_buckets: int = TIMELINE_BUCKETS) -> None:
        self.max_buckets = max_buckets
        self.width = 1.0
        self.counts: dict[tuple[str, str], Counter[int]] = {}
        self.buckets: set[int] = set()

    def submit(self, alert: Alert) -> None:
        bucket = int(alert.ts // self.width)
        series = self.counts.get((alert.kind, alert.namespace))
        if series is None:
            series = self.counts[(alert.kind, alert.namespace)] = Counter()
        series[bucket] += 1  # alert objects, as the replay counts them; a folded repeat is one
        if bucket not in self.buckets:
            self.buckets.add(bucket)
            if len(self.buckets) > self.max_buckets:
                self._coarsen()

    def _coarsen(self) -> None:
        while len(self.buckets) > self.max_buckets:
            self.width *= 2
            self.buckets = {b // 2 for b in self.buckets}
            for key, series in self.counts.items():
                merged: Counter[int] = Counter()
                for b, n in series.items():
                    merged[b // 2] += n
                self.counts[key] = merged

    def series(self, bins: int = 120) -> tuple[float, dict[str, list[tuple[float, float]]]]:
        """(bin width in seconds, ``kind · namespace`` -> [(bin start, alerts)]) over about ``bins`` bins.

        The bin width is a whole number of seconds, minutes or hours; every bin
        from the first alert's to the last one's is present, empty ones as 0.
        """
        if not self.buckets:
            return self.width, {}
        first = min(self.buckets) * self.width
        last = max(self.buckets) * self.width
        raw = (last - first) / bins
        width = max(self.width, next((s for s in TIME_STEPS if s >= raw), 86400 * math.ceil(raw / 86400)))
        lo, hi = int(first // width), int(last // width)
        out = {}
        for (kind, namespace), counts in sorted(self.counts.items()):
            binned: Counter[int] = Counter()
            for b, n in counts.items():
                binned[int(b * self.width // width)] += n
            out[f"{kind} · {namespace}"] = [(i * width, float(binned.get(i, 0))) for i in range(lo, hi + 1)]
        return width, out

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


# --- SVG ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Axis:
    """A linear mapping from data to pixels, with tick values."""

    low: float
    high: float
    start: float
    end: float

    def __call__(self, value: float) -> float:
        span = self.high - self.low or 1.0
        return self.start + (value - self.low) / span * (self.end - self.start)

    def ticks(self, count: int = 5) -> list[float]:
        if self.high <= self.low:
            return [self.low]
        step = nice_step((self.high - self.low) / count)
        first = step * -(-self.low // step)
        out = []
        value = first
        while value <= self.high + step * 1e-9:
            out.append(value)
            value += step
        return out


def nice_step(raw: float) -> float:
    """The smallest of 1, 2 or 5 times a power of ten that is at least ``raw``."""
    if raw <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(raw))
    return next(power * f for f in (1, 2, 5, 10) if power * f >= raw * (1 - 1e-9))


# Tick spacings for capture time: seconds, minutes, hours, days.
TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


def time_ticks(low: float, high: float, count: int = 6) -> list[float]:
    """Tick positions on whole seconds, minutes or hours of UTC."""
    raw = (high - low) / count
    step = next((s for s in TIME_STEPS if s >= raw), 86400 * math.ceil(raw / 86400))
    first = step * math.ceil(low / step)
    return [first + i * step for i in range(int((high - first) // step) + 1)]


def evidence_text(evidence: dict[str, Any], limit: int = 10) -> str:
    """Evidence figures as ``key=value`` text, the ones shown elsewhere (name, client) left out."""
    parts = []
    for key, value in evidence.items():
        if key in EVIDENCE_SHOWN_ELSEWHERE or value in (0, None, ""):
            continue
        if isinstance(value, float):
            value = round(value, 3)
        parts.append(f"{key}={value}")
        if len(parts) == limit:
            break
    return " ".join(parts)


EVIDENCE_SHOWN_ELSEWHERE = frozenset({"qname", "client", "qtype", "window_seconds"})


def number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 10 or value == int(value) else f"{value:.2g}"


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def line_chart(
    chart_id: str,
    series: dict[str, list[tuple[float, float]]],
    x_label: str,
    y_label: str,
    x_text: Any = number,
    x_ticks: Sequence[float] | None = None,
    points: bool = True,
    dashed: frozenset[str] = frozenset(),
    width: int = 960,
    height: int = 320,
) -> str:
    """An SVG line chart; each series is a path with one ``circle`` per point (when ``points``)."""
    left, right, top, bottom = 64, 16, 16, 48
    xs = [x for pts in series.values() for x, _ in pts] or [0.0]
    ys = [y for pts in series.values() for _, y in pts] or [0.0]
    x_axis = Axis(min(xs), max(xs), left, width - right)
    y_step = nice_step(max(max(ys), 1.0) / 5)
    y_axis = Axis(0.0, y_step * max(1, math.ceil(max(ys) / y_step)), height - bottom, top)
    out = [
        f'<svg class="plot" id="{esc(chart_id)}" xmlns="http://www.w3.org/2000/svg" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">'
    ]
    for tick in y_axis.ticks():
        y = y_axis(tick)
        out.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}"/>')
        out.append(f'<text class="tick" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{number(tick)}</text>')
    for tick in x_ticks if x_ticks is not None else x_axis.ticks(6):
        x = x_axis(tick)
        out.append(f'<line class="tickmark" x1="{x:.1f}" x2="{x:.1f}" y1="{height - bottom}" '
                   f'y2="{height - bottom + 5}"/>')
        out.append(f'<text class="tick" x="{x:.1f}" y="{height - bottom + 18}" '
                   f'text-anchor="middle">{esc(x_text(tick))}</text>')
    out.append(f'<line class="axis" x1="{left}" x2="{width - right}" y1="{height - bottom}" '
               f'y2="{height - bottom}"/>')
    out.append(f'<line class="axis" x1="{left}" x2="{left}" y1="{top}" y2="{height - bottom}"/>')
    out.append(f'<text class="label" x="{(left + width - right) / 2}" y="{height - 8}" '
               f'text-anchor="middle">{esc(x_label)}</text>')
    out.append(f'<text class="label" transform="translate(14 {(top + height - bottom) / 2}) rotate(-90)" '
               f'text-anchor="middle">{esc(y_label)}</text>')
    for i, (name, pts) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        d = " ".join(f"{'M' if j == 0 else 'L'}{x_axis(x):.1f},{y_axis(y):.1f}" for j, (x, y) in enumerate(pts))
        dash = ' stroke-dasharray="6 4"' if name in dashed else ""
        out.append(f'<path class="series" data-series="{esc(name)}" d="{d}" stroke="{color}"{dash}/>')
        if points:
            for x, y in pts:
                out.append(
                    f'<circle class="point" cx="{x_axis(x):.1f}" cy="{y_axis(y):.1f}" r="3.5" fill="{color}">'
                    f"<title>{esc(name)}: {esc(x_text(x))} → {number(y)}</title></circle>"
                )
    out.append("</svg>")
    legend = "".join(
        f'<span class="key"><i style="background:{PALETTE[i % len(PALETTE)]}"></i>{esc(name)}</span>'
        for i, name in enumerate(series)
    )
    return f'<figure>{"".join(out)}<figcaption class="legend">{legend}</figcaption></figure>'


def bar_chart(chart_id: str, rows: list[tuple[str, float]], unit: str, width: int = 960) -> str:
    """Horizontal bars, longest first: a label and a value per row."""
    bar_height, label_width, right = 22, 360, 70
    height = bar_height * len(rows) + 8
    top_value = max((v for _, v in rows), default=1.0) or 1.0
    out = [
        f'<svg class="plot" id="{esc(chart_id)}" xmlns="http://www.w3.org/2000/svg" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">'
    ]
    for i, (label, value) in enumerate(rows):
        y = 4 + i * bar_height
        length = max(1.0, (width - label_width - right) * value / top_value)
        cut = label if len(label) <= 48 else label[:45] + "..."
        out.append(f'<text class="tick" x="{label_width - 8}" y="{y + 15}" text-anchor="end">{esc(cut)}</text>')
        out.append(f'<rect class="bar" x="{label_width}" y="{y + 3}" width="{length:.1f}" height="{bar_height - 6}">'
                   f"<title>{esc(label)}: {number(value)} {esc(unit)}</title></rect>")
        out.append(f'<text class="tick" x="{label_width + length + 6:.1f}" y="{y + 15}">{number(value)}</text>')
    out.append("</svg>")
    return "<figure>" + "".join(out) + "</figure>"


# --- the page ----------------------------------------------------------------------

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1000px;
color:#1d1d1f;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:18px 0 6px}.meta{color:#555}.empty{color:#777;font-style:italic}
table{border-collapse:collapse;width:100%;margin:6px 0 12px}th,td{text-align:left;padding:3px 8px;
border-bottom:1px solid #eee;vertical-align:top}th{background:#f6f6f6}td.n{text-align:right;
font-variant-numeric:tabular-nums}code{font:12px ui-monospace,Menlo,Consolas,monospace;word-break:break-all}
figure{margin:8px 0}svg.plot{max-width:100%;height:auto;font-size:11px}
svg .grid{stroke:#eee}svg .axis,svg .tickmark{stroke:#888}svg .tick{fill:#444}svg .label{fill:#222;font-size:12px}
svg .series{fill:none;stroke-width:2}svg .bar{fill:#d62728;fill-opacity:.75}
.legend{display:flex;flex-wrap:wrap;gap:14px;color:#333}.key i{display:inline-block;width:12px;height:12px;
margin-right:5px;vertical-align:-1px;border-radius:2px}
.sev-critical,.sev-high{color:#b00020;font-weight:600}.sev-warning{color:#a15c00}
"""


def page(title: str, subtitle: str, body: list[str]) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{esc(title)}</title><meta name=\"viewport\" content=\"width=device-width\">"
        f"<style>{STYLE}</style></head><body>"
        f"<h1>{esc(title)}</h1><p class=\"meta\">{subtitle}</p>"
        + "\n".join(body)
        + "</body></html>\n"
    )


def utc(ts: float, seconds: bool = True) -> str:
    return utc_text(ts, "%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def _time_text(span: float) -> Any:
    def text(ts: float) -> str:
        return utc_text(ts, "%H:%M:%S" if span < 86_400 else "%m-%d %H:%M")

    return text


def _files(report: ReplayReport) -> str:
    names = ", ".join(Path(f).name for f in report.files[:6])
    more = f" and {len(report.files) - 6} more" if len(report.files) > 6 else ""
    return esc(names + more)


def timeline_section(timeline: Timeline) -> list[str]:
    out = ["<h2>Alerts over capture time</h2>"]
    width, series = timeline.series()
    if not series:
        return [*out, '<p class="empty">No alerts.</p>']
    xs = [x for pts in series.values() for x, _ in pts]
    span = max(xs) - min(xs)
    per = f"{number(width)} s" if width < 60 else f"{number(width / 60)} min"
    out.append(f'<p class="meta">Alerts per {per} of capture time (UTC), by kind and namespace '
               "(a folded run of repeated denials is one alert).</p>")
    out.append(line_chart("alerts-over-time", series, "capture time (UTC)", f"alerts per {per}",
                          x_text=_time_text(span), x_ticks=time_ticks(min(xs), max(xs)),
                          points=len(xs) <= 400))
    return out


def _flagged_rows(flagged: list[FlaggedDomain]) -> str:
    rows = []
    for f in flagged:
        example = str(f.evidence.get("qname", ""))
        rows.append(
            f"<tr><td><code>{esc(f.domain)}</code></td><td class=\"sev-{esc(f.severity)}\">{esc(f.severity)}</td>"
            f"<td class=\"n\">{f.alerts:,}</td><td>{esc(', '.join(sorted(f.reasons)))}</td>"
            f"<td><code>{esc(evidence_text(f.evidence))}</code>"
            + (f"<br>e.g. <code>{esc(example)}</code>" if example else "")
            + f"</td><td>{esc(utc(f.first))}<br>{esc(utc(f.last))}</td></tr>"
        )
    return (
        "<table class=\"flagged\"><tr><th>domain</th><th>severity</th><th>alerts</th><th>reasons</th>"
        "<th>evidence (most severe alert)</th><th>first / last seen</th></tr>" + "".join(rows) + "</table>"
    )


def namespace_section(s: NamespaceSummary, top: int) -> list[str]:
    slug = "".join(c if c.isalnum() else "-" for c in s.name)
    actions = ", ".join(f"{esc(k)} {v:,}" for k, v in s.actions.most_common())
    out = [
        f"<h2>Namespace <code>{esc(s.name)}</code></h2>",
        f'<p class="meta">mode {esc(s.mode)}, detection {esc(s.detection)} · {s.queries:,} queries '
        f"({actions}) · ~{s.unique_names:,} unique names · {len(s.denied) + s.denied_overflow:,} names denied "
        f"· {len(s.flagged):,} flagged domains</p>",
        "<h3>Top denied domains</h3>",
    ]
    if s.denied_domains:
        out.append(bar_chart(f"denied-{slug}", [(d, float(n)) for d, n in s.denied_domains.most_common(top)],
                             "names denied"))
        worst = sorted(s.denied.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
        out.append("<table class=\"denied\"><tr><th>most denied names</th><th>denials</th></tr>" + "".join(
            f"<tr><td><code>{esc(name)}</code></td><td class=\"n\">{count:,}</td></tr>" for name, count in worst
        ) + "</table>")
    else:
        out.append('<p class="empty">Nothing denied.</p>')
    out.append("<h3>Flagged domains</h3>")
    flagged = s.top_flagged(top)
    if flagged:
        out.append(bar_chart(f"flagged-{slug}", [(f.domain, float(f.alerts)) for f in flagged], "tunnel alerts"))
        out.append(_flagged_rows(flagged))
    else:
        out.append('<p class="empty">No domain flagged.</p>')
    return out


def render_report(report: ReplayReport, timeline: Timeline, top: int = 10) -> str:
    """The page for one replay."""
    span = report.span
    alerts = ", ".join(f"{n:,} {esc(kind)}" for kind, n in sorted(report.alerts.items())) or "none"
    subtitle = (
        f"{_files(report)} · {report.queries:,} queries over {span:,.0f} s of capture"
        + (f" from {esc(utc(report.first_ts))} UTC" if report.packets else "")
        + f" · alerts: {alerts}"
    )
    body = timeline_section(timeline)
    for s in sorted(report.namespaces.values(), key=lambda s: (-len(s.flagged), -s.queries)):
        body += namespace_section(s, top)
    return page("dnsgate replay report", subtitle, body)


def render_sweep_report(
    key: str, rows: Sequence[SweepRow], reports: Sequence[ReplayReport], labels: set[str] | None
) -> str:
    """The page for ``--sweep``: the tuning curve, and the table behind it."""
    values = [r.value for r in rows]
    # Swept values are placed evenly, in the order given: they are often
    # spread over decades (1, 3, 10, 1000), where a linear axis crams them.
    xs = [float(i) for i in range(len(values))]
    series = {
        "tunnel alerts": [(x, float(rep.alerts.get("tunnel", 0))) for x, rep in zip(xs, reports, strict=True)],
        "flagged domains": [(x, float(len(r.flagged))) for x, r in zip(xs, rows, strict=True)],
    }
    if labels is not None:
        series["true positives"] = [(x, float(len(r.tp))) for x, r in zip(xs, rows, strict=True)]
        series["false positives"] = [(x, float(len(r.fp))) for x, r in zip(xs, rows, strict=True)]

    def x_text(x: float) -> str:
        return json.dumps(values[round(x)])

    body = [
        f"<h2>Tuning curve: <code>{esc(key)}</code></h2>",
        f'<p class="meta">One replay per value of <code>{esc(key)}</code>; '
        "tunnel alerts raised and domains flagged at each.</p>",
        line_chart("tuning-curve", series, key, "count", x_text=x_text, x_ticks=xs,
                   dashed=frozenset({"true positives", "false positives"})),
        "<table class=\"sweep\"><tr><th>value</th><th>tunnel alerts</th><th>flagged</th>"
        + ("<th>TP</th><th>FP</th><th>FN</th><th>precision</th><th>recall</th>" if labels is not None else "")
        + "<th>domains</th></tr>",
    ]
    for row, rep in zip(rows, reports, strict=True):
        cells = f"<td>{esc(json.dumps(row.value))}</td><td class=\"n\">{rep.alerts.get('tunnel', 0):,}</td>" \
                f"<td class=\"n\">{len(row.flagged):,}</td>"
        if labels is not None:
            precision = len(row.tp) / len(row.flagged) if row.flagged else 1.0
            recall = len(row.tp) / len(labels) if labels else 1.0
            cells += (f"<td class=\"n\">{len(row.tp)}</td><td class=\"n\">{len(row.fp)}</td>"
                      f"<td class=\"n\">{len(row.fn)}</td><td class=\"n\">{precision:.2f}</td>"
                      f"<td class=\"n\">{recall:.2f}</td>")
        domains = ", ".join(sorted(row.flagged)[:20]) + (" ..." if len(row.flagged) > 20 else "")
        body.append(f"<tr>{cells}<td><code>{esc(domains or '-')}</code></td></tr>")
    body.append("</table>")
    queries = reports[0].queries if reports else 0
    files = _files(reports[0]) if reports else ""
    subtitle = f"{files} · {queries:,} queries per replay · {len(rows)} values"
    return page(f"dnsgate replay sweep: {key}", subtitle, body)


def write(path: str, text: str) -> None:
    """Write the page; OSError propagates for the caller to report in one line."""
    Path(path).write_text(text, encoding="utf-8")
