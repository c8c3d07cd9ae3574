"""py-spy against a loaded dnsgate, summarised to the top frames by self and total time.

``py-spy record --format raw`` writes collapsed stacks (``frame;frame;... count``);
self time is the leaf frame, total time counts a frame once per stack it appears in.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

from benchmarks.servers import ROOT, VENV_BIN

_LINE = re.compile(r"^(.*) (\d+)$")
_FRAME_LINE = re.compile(r":\d+\)$")


def py_spy() -> str | None:
    exe = VENV_BIN / "py-spy"
    if not exe.exists():
        res = subprocess.run([str(VENV_BIN / "pip"), "install", "-q", "py-spy"], capture_output=True, text=True)
        if res.returncode != 0:
            print(f"py-spy not installable: {res.stderr[-300:]}", file=sys.stderr)
            return None
    return str(exe) if exe.exists() else None


def record(pid: int, seconds: float, out: Path, rate: int = 250) -> Path | None:
    """Sample pid for `seconds`; returns the raw collapsed-stack file."""
    exe = py_spy()
    if exe is None:
        return None
    res = subprocess.run(
        [exe, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", str(rate), "-f", "raw", "-o", str(out), "--nonblocking"],
        capture_output=True, text=True,
    )
    if res.returncode != 0 or not out.exists():
        print(f"py-spy failed: {res.stderr[-500:]}", file=sys.stderr)
        return None
    return out


def _short(frame: str) -> str:
    """`func (/abs/path/resolver/wire.py:42)` -> `func (resolver/wire.py)`; line numbers dropped to aggregate."""
    frame = _FRAME_LINE.sub(")", frame)
    root = str(ROOT) + "/"
    frame = frame.replace(root, "")
    frame = re.sub(r"\(/tmp/[^)]*?/src/", "(", frame)  # exported --ref trees
    frame = re.sub(r"\(/[^)]*/(site-packages|lib/python3\.\d+)/", r"(\1/", frame)
    return frame


def summarise(raw: Path, top: int = 25) -> dict[str, object]:
    self_t: Counter[str] = Counter()
    total_t: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text(errors="replace").splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        stack, count = m.group(1), int(m.group(2))
        frames = [_short(f) for f in stack.split(";") if f]
        if not frames:
            continue
        samples += count
        self_t[frames[-1]] += count
        for f in set(frames):
            total_t[f] += count
    return {
        "samples": samples,
        "self": [(f, n, 100.0 * n / samples) for f, n in self_t.most_common(top)] if samples else [],
        # frames on (nearly) every stack are the entry point and the event loop: noise in a top list
        "total": [(f, n, 100.0 * n / samples) for f, n in total_t.most_common() if n < 0.97 * samples][:top] if samples else [],
    }


def format_summary(summary: dict[str, object], header: str) -> str:
    lines = [header, f"samples: {summary['samples']}", "", "== top self time (leaf frame) =="]
    for f, n, pct in summary["self"]:  # type: ignore[attr-defined]
        lines.append(f"{pct:6.2f}%  {n:7d}  {f}")
    lines += ["", "== top total time (frame anywhere on the stack; entry/event-loop frames on >97% of stacks left out) =="]
    for f, n, pct in summary["total"]:  # type: ignore[attr-defined]
        lines.append(f"{pct:6.2f}%  {n:7d}  {f}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    path = Path(sys.argv[1])
    print(format_summary(summarise(path), f"profile {path}"))
