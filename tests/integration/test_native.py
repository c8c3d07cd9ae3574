"""The compiled build (resolver/native.py): used, current, and giving what the source gives.

``make test`` compiles the query path with mypyc first, and the C modules
(heuristics/_deflate.c), so the rest of the suite tests the compiled modules;
these tests check that they really are the ones imported, that a stale one stops
dnsgate, and that they answer exactly as the Python source does, on captures
and on arbitrary octets.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.replay_throughput import write_capture
from resolver import native

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "data" / "corpus"
# `make NATIVE=0 test` runs everything from source; `make test` compiles first.
EXPECT_COMPILED = os.environ.get("DNSGATE_NATIVE", "1") != "0"


def _module_name(source: str) -> str:
    return source.removesuffix(".py").removesuffix(".c").replace("/", ".")


def test_every_listed_module_is_imported_as_built() -> None:
    assert native.stale() == []
    for source in native.MODULES:
        module = importlib.import_module(_module_name(source))
        path = str(module.__file__)
        if EXPECT_COMPILED:
            assert path.endswith(tuple(EXTENSION_SUFFIXES)), f"{source} runs from {path}, not compiled"
        else:
            assert path.endswith(".py"), f"{source} runs from {path}; NATIVE=0 should run the source"
    for source in native.C_MODULES:  # no Python source: built or not there (its importer falls back)
        if EXPECT_COMPILED:
            path = str(importlib.import_module(_module_name(source)).__file__)
            assert path == str(ROOT / source).removesuffix(".c") + EXTENSION_SUFFIXES[0], path
        else:
            with pytest.raises(ImportError):
                importlib.import_module(_module_name(source))
    everything = [*native.MODULES, *native.C_MODULES]
    assert native.compiled() == (everything if EXPECT_COMPILED else [])


# Objects made for every query, answer or new pair. A compiled dataclass whose
# __init__ is generated (no init=False and a written-out __init__) gets a Python
# __init__ that runs in the interpreter, several times the cost of a compiled one.
PER_QUERY_CLASSES = [
    ("resolver.pipeline.query", "Query"),
    ("resolver.pipeline.query", "Reply"),
    ("resolver.pipeline.cache", "Entry"),
    ("resolver.pipeline.ratelimit", "Bucket"),
    ("resolver.pipeline.scrub", "UpstreamAnswer"),
    ("resolver.pipeline.alerts", "Alert"),
    ("resolver.wire.message", "Question"),
    ("resolver.wire.message", "ReplyInfo"),
    ("resolver.offline.capture", "DnsPacket"),
    ("heuristics.detector", "Verdict"),
    ("heuristics.detector", "_Decision"),
    ("heuristics.detector", "_Score"),
    ("heuristics.features", "LabelShape"),
    ("heuristics.windows", "Pending"),
    ("heuristics.windows", "InformationEstimator"),
]


@pytest.mark.parametrize(("module", "name"), PER_QUERY_CLASSES)
def test_per_query_objects_are_made_by_compiled_code(module: str, name: str) -> None:
    init = vars(getattr(importlib.import_module(module), name))["__init__"]
    # A Python function has __code__; a compiled method does not.
    assert hasattr(init, "__code__") != EXPECT_COMPILED, f"{module}.{name}.__init__ is {init!r}"


def _run(tree: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # `-m` puts the working directory first on sys.path: the copy's modules are the ones run.
    return subprocess.run([sys.executable, "-m", "resolver.cli", *args], capture_output=True, text=True,
                          cwd=tree, timeout=300, env={**os.environ, "PYTHONPATH": str(tree)})


@pytest.mark.parametrize("source", ["heuristics/detector.py", "heuristics/_deflate.c"])
def test_a_source_newer_than_its_extension_stops_dnsgate_with_one_line(tmp_path: Path, source: str) -> None:
    tree = native.copy_packages(tmp_path, with_extensions=True)
    changed = tree / source
    extension = changed.with_name(changed.stem + EXTENSION_SUFFIXES[0])
    if not extension.exists():  # NATIVE=0: an old extension stands in for a forgotten build
        extension.write_bytes(b"")
    old = time.time() - 60
    os.utime(extension, (old, old))
    changed.touch()
    out = _run(tree, "--version")
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert source in lines[0]
    assert "make native" in lines[0]
    # Rebuilt (here: the extension's time moved past the source's), it starts again.
    new = time.time() + 60
    os.utime(extension, (new, new))
    if not EXPECT_COMPILED:
        extension.unlink()
    again = _run(tree, "--version")
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("dnsgate ")


def _native(tree: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "resolver.native", *args], capture_output=True, text=True,
                          cwd=tree, timeout=300, env={**os.environ, "PYTHONPATH": str(tree), **(env or {})})


def test_status_lists_the_c_module_and_clean_removes_it(tmp_path: Path) -> None:
    tree = native.copy_packages(tmp_path, with_extensions=True)
    status = _native(tree, "status")
    assert status.returncode == 0, status.stderr
    assert f"{'compiled' if EXPECT_COMPILED else 'source':8} heuristics/_deflate.c" in status.stdout.splitlines()
    assert _native(tree, "clean").returncode == 0
    assert not [p for p in tree.rglob("*") if p.name.endswith(tuple(EXTENSION_SUFFIXES))]
    status = _native(tree, "status")
    assert f"{'source':8} heuristics/_deflate.c" in status.stdout.splitlines()


def test_a_build_without_zlib_h_stops_with_one_line(tmp_path: Path) -> None:
    """No zlib.h (zlib1g-dev): `make native` says so in one line, as for a missing compiler."""
    tree = native.copy_packages(tmp_path, with_extensions=False)
    compiler = shlex.split(sysconfig.get_config_var("CC") or "cc")
    out = _native(tree, "build", env={"CC": shlex.join([*compiler, "-nostdinc"])})  # it finds no header at all
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        f"resolver.native: cannot compile: no zlib.h ({compiler[0]} cannot include it); "
        "on Debian: apt-get install gcc python3-dev zlib1g-dev"
    ]
    assert not [p for p in tree.rglob("*") if p.name.endswith(tuple(EXTENSION_SUFFIXES))]


def test_an_extension_of_a_module_no_longer_compiled_stops_dnsgate(tmp_path: Path) -> None:
    tree = native.copy_packages(tmp_path, with_extensions=True)
    left = tree / "resolver" / "offline" / ("propose" + EXTENSION_SUFFIXES[0])  # propose.py is not in MODULES
    assert "resolver/offline/propose.py" not in native.MODULES
    left.write_bytes(b"")
    out = _run(tree, "--version")
    assert out.returncode == 2
    assert len(out.stderr.splitlines()) == 1, out.stderr
    assert "resolver/offline/propose.py" in out.stderr


def _replay(tree: Path, capture: Path) -> tuple[str, list[str]]:
    out = _run(tree, "replay", str(capture), "--format", "jsonl", "--progress", "never")
    assert out.returncode == 0, out.stderr
    # The summary without its timing ("in 1.23s"), which differs from run to run.
    summary = [re.sub(r" in [\d.]+s$", "", line) for line in out.stderr.splitlines()]
    return out.stdout, summary


def test_the_compiled_build_replays_exactly_as_the_source(tmp_path: Path) -> None:
    mixed = tmp_path / "mixed.pcap"
    # A benign day with half its names made never-seen, plus two bulk tunnels.
    write_capture(mixed, 4000, seed=3, unique=0.5)
    source = native.copy_packages(tmp_path / "source", with_extensions=False)
    alerts = 0
    for capture in (mixed, CORPUS / "iodine_dev.pcap", CORPUS / "dns2tcp_txt_dev.pcap",
                    CORPUS / "dnscat2_dev.pcap"):
        built_out, built_summary = _replay(ROOT, capture)
        source_out, source_summary = _replay(source, capture)
        assert built_out == source_out, capture.name
        assert built_summary == source_summary, capture.name
        alerts += built_out.count("\n")
    assert alerts > 100  # the captures do exercise the detector's verdicts


def _load_source(tmp_path: Path) -> tuple[ModuleType, ModuleType]:
    """heuristics' names and features, run from their Python source in this process."""
    package = tmp_path / "heuristics_source"
    package.mkdir()
    for name in ("__init__.py", "names.py", "features.py", "exemptions.txt"):
        text = "" if name == "__init__.py" else (ROOT / "heuristics" / name).read_text()
        (package / name).write_text(text)
    sys.path.insert(0, str(tmp_path))
    try:
        names = importlib.import_module("heuristics_source.names")
        features = importlib.import_module("heuristics_source.features")
    finally:
        sys.path.remove(str(tmp_path))
    for module in (names, features):
        assert str(module.__file__).endswith(".py")
    return names, features


@pytest.fixture(scope="module")
def source_modules(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ModuleType]]:
    names, features = _load_source(tmp_path_factory.mktemp("source"))
    yield {"names": names, "features": features}
    for name in [m for m in sys.modules if m.startswith("heuristics_source")]:
        del sys.modules[name]


# Wire names a hostile client can send: any octets in a label, the dot and the
# backslash included, 1-4 labels of up to 63 octets; and sometimes plain garbage.
_label = st.binary(min_size=1, max_size=63)
_wire = st.one_of(
    st.lists(_label, min_size=1, max_size=4).map(lambda ls: b"".join(bytes([len(x)]) + x for x in ls) + b"\x00"),
    st.lists(st.sampled_from([b"a", b"Z", b"-", b"_", b".", b"\\", b"0", b"\xff", b"\x00"]), min_size=1,
             max_size=40).map(lambda parts: bytes([len(b"".join(parts))]) + b"".join(parts) + b"\x03com\x00"),
    st.binary(max_size=40),
)


def _shape_fields(shape):  # type: ignore[no-untyped-def]
    if shape is None:
        return None
    return (shape.length, shape.alphabet, shape.entropy, shape.expected, shape.transitions, shape.non_ldh)


def _outcome(fn, *args):  # type: ignore[no-untyped-def]
    try:
        return ("ok", fn(*args))
    except Exception as exc:  # noqa: BLE001 - the type is what both builds must agree on
        return ("raised", type(exc).__name__)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(qname=_wire)
def test_compiled_name_features_equal_the_source_on_any_octets(
    source_modules: dict[str, ModuleType], qname: bytes
) -> None:
    from heuristics import features, names

    src_names, src_features = source_modules["names"], source_modules["features"]
    for fn in ("label_offsets", "labels_of", "name_to_text", "registrable_wire"):
        assert _outcome(getattr(names, fn), qname) == _outcome(getattr(src_names, fn), qname), fn
    built = _outcome(features.NameFeatures, qname)
    source = _outcome(src_features.NameFeatures, qname)
    assert built[0] == source[0], (built, source)
    if built[0] == "ok":
        a, b = built[1], source[1]
        for attr in ("domain", "key", "subdomain", "digest", "max_label", "non_ldh", "text", "digit_ratio"):
            assert getattr(a, attr) == getattr(b, attr), attr
        assert a.ancestors() == b.ancestors()
        assert [_shape_fields(s) for s in a.shapes] == [_shape_fields(s) for s in b.shapes]
        for min_length, ratio in ((4, 0.5), (12, 0.8)):
            assert _shape_fields(a.encoded_shape(min_length, ratio)) == \
                _shape_fields(b.encoded_shape(min_length, ratio))
    else:
        assert built == source
