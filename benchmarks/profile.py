"""A loaded dnsgate's profile, summarised to the top frames by self and total time.

With ``perf`` (Debian's linux-perf; ``make bench`` installs it) the samples are
native stacks unwound from DWARF, so the compiled modules (``make native``)
show as their functions: mypyc names ``Detector.observe`` of
heuristics/detector.py ``CPyDef_detector___Detector___observe``, shown here as
``detector.Detector.observe [compiled]``, and the interpreter's and libc's own
functions appear by name. Without perf, py-spy samples Python frames only, and
a compiled build then shows only the event loop.

Both are reduced to collapsed stacks (``frame;frame;... count``, root first);
self time is the leaf frame, total time counts a frame once per stack it
appears in.
"""

from __future__ import annotations

import re
import shutil
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


_MYPYC = re.compile(r"^CPyDef_(?:(\w+?)___)?(\w+)$")


def native_frame(symbol: str, dso: str) -> str:
    """A perf frame as a summary line names it: compiled functions by module.Class.method."""
    symbol = re.sub(r"\+0x[0-9a-f]+$", "", symbol)
    m = _MYPYC.match(symbol)
    if m and "_compiled__mypyc" in dso:
        module, rest = m.group(1), m.group(2)
        name = ".".join(part for part in rest.split("___") if part)
        return f"{module}.{name} [compiled]" if module else f"{name} [compiled]"
    library = Path(dso).name.split(".so")[0] if dso and not dso.startswith("[") else dso.strip("[]")
    return f"{symbol} ({library})" if library else symbol


def collapse_perf_script(text: str) -> str:
    """``perf script`` output (leaf first, one frame a line) as collapsed stacks, root first."""
    counts: Counter[str] = Counter()
    frames: list[str] = []
    in_sample = False
    for line in [*text.splitlines(), ""]:
        if not line.strip():
            if frames:
                counts[";".join(reversed(frames))] += 1
            frames, in_sample = [], False
            continue
        if not line[0].isspace():
            in_sample = True  # the sample's header: command, pid, time, event
            continue
        if in_sample:
            parts = line.split(None, 1)
            if len(parts) < 2:
                continue
            body = parts[1]
            dso = ""
            if body.endswith(")") and " (" in body:
                body, dso = body[:-1].rsplit(" (", 1)
            if body == "[unknown]" or body.startswith("CPyPy_"):
                continue  # CPyPy_: the Python-callable wrapper of the CPyDef_ function below it
            frames.append(native_frame(body.strip(), dso))
    return "\n".join(f"{stack} {n}" for stack, n in counts.items()) + "\n"


def perf_record(pid: int, seconds: float, out: Path, rate: int = 250) -> Path | None:
    """Native stacks of pid for `seconds` (perf, DWARF unwinding), written to `out` collapsed."""
    exe = shutil.which("perf")
    if exe is None:
        return None
    data = out.with_suffix(".perf")
    res = subprocess.run(
        [exe, "record", "-q", "-F", str(rate), "--call-graph", "dwarf,16384", "-p", str(pid), "-o", str(data),
         "--", "sleep", str(seconds)],
        capture_output=True, text=True,
    )
    if res.returncode != 0 or not data.exists():
        print(f"perf record failed: {res.stderr[-500:]}", file=sys.stderr)
        return None
    script = subprocess.run([exe, "script", "-i", str(data), "-F", "comm,pid,time,ip,sym,dso"],
                            capture_output=True, text=True)
    data.unlink(missing_ok=True)
    if script.returncode != 0:
        print(f"perf script failed: {script.stderr[-500:]}", file=sys.stderr)
        return None
    out.write_text(collapse_perf_script(script.stdout))
    return out


def tool() -> str:
    """What record() samples with: "perf" (native stacks) or "py-spy" (Python frames only)."""
    return "perf" if shutil.which("perf") else "py-spy"


def record(pid: int, seconds: float, out: Path, rate: int = 250) -> Path | None:
    """Sample pid for `seconds`; returns the raw collapsed-stack file (perf if present, else py-spy)."""
    if tool() == "perf":
        return perf_record(pid, seconds, out, rate)
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
