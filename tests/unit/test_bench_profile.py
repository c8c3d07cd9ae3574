"""The benchmarks' profiles: perf's native stacks read as the summary's frames.

The perf output below is an excerpt of ``perf script -F comm,pid,time,ip,sym,dso``
of a compiled ``dnsgate replay`` (two samples, leaf first).
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.profile import collapse_perf_script, native_frame, summarise

# As an install under /opt/dnsgate (docs/operations.md, "Install") would name them.
LIB = "/opt/dnsgate/lib/python3.11/site-packages/resolver/_compiled__mypyc.cpython-311-x86_64-linux-gnu.so"
PYTHON = "/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0"

PERF_SCRIPT = f"""python 15063  2741.930000:
\t          1b2e8c deflate (/usr/lib/x86_64-linux-gnu/libz.so.1.2.13)
\t          13e745 CPyDef_windows___InformationEstimator___charge ({LIB})
\t          16d8d3 CPyDef_detector___Detector____estimate ({LIB})
\t          16d8d3 CPyDef_detector___Detector___observe ({LIB})
\t          1ba1f4 CPyPy_detection___DetectionStage___resolve ({LIB})
\t          1b9326 CPyDef_detection___DetectionStage___resolve ({LIB})
\t          158cc7 _PyObject_VectorcallTstate (inlined)
\t          158cc7 PyObject_VectorcallMethod ({PYTHON})
\t               0 [unknown] ([unknown])

python 15063  2741.931000:
\tffffffff815ec676 handle_mm_fault ([kernel.kallsyms])
\t          16d8e0 CPyDef_detector____apply ({LIB})
\t          16d8d3 CPyDef_detector___Detector___observe ({LIB})
\t          1b9326 CPyDef_detection___DetectionStage___resolve ({LIB})
\t          158cc7 PyObject_VectorcallMethod ({PYTHON})
"""


def test_compiled_functions_are_named_by_module_class_and_method() -> None:
    assert native_frame("CPyDef_detector___Detector___observe", LIB) == "detector.Detector.observe [compiled]"
    assert native_frame("CPyDef_detector___Detector____settings", LIB) == "detector.Detector._settings [compiled]"
    assert native_frame("CPyDef_detector____apply", LIB) == "detector._apply [compiled]"
    assert native_frame("_Py_dict_lookup", PYTHON) == "_Py_dict_lookup (libpython3.11)"
    assert native_frame("handle_mm_fault", "[kernel.kallsyms]") == "handle_mm_fault (kernel.kallsyms)"
    # a symbol of that shape outside mypyc's library is left as it is
    assert native_frame("CPyDef_x___f", "/usr/lib/libother.so") == "CPyDef_x___f (libother)"


def test_perf_stacks_collapse_root_first_and_summarise(tmp_path: Path) -> None:
    raw = tmp_path / "profile.raw"
    raw.write_text(collapse_perf_script(PERF_SCRIPT))
    stacks = raw.read_text().splitlines()
    assert len(stacks) == 2
    first = stacks[0].rsplit(" ", 1)[0].split(";")
    assert first[0] == "PyObject_VectorcallMethod (libpython3.11)"  # root first
    assert first[-1] == "deflate (libz)"  # leaf last
    assert not any("CPyPy_" in frame or "[unknown]" in frame for frame in first)
    summary = summarise(raw)
    assert summary["samples"] == 2
    self_frames = {frame for frame, _, _ in summary["self"]}  # type: ignore[attr-defined]
    assert self_frames == {"deflate (libz)", "handle_mm_fault (kernel.kallsyms)"}
    total = {frame: n for frame, n, _ in summary["total"]}  # type: ignore[attr-defined]
    # frames on every stack (the entry point, the detector here) are left out of the total list
    assert "detector.Detector.observe [compiled]" not in total
    assert total["windows.InformationEstimator.charge [compiled]"] == 1
    assert total["detector._apply [compiled]"] == 1
