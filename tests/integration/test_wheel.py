"""dnsgate's wheel (setup.py): the query path compiled into it, or not with DNSGATE_NATIVE=0.

Each wheel is built once, by ``pip wheel`` as the image's build stage runs it,
from a copy of what deploy/Containerfile copies in: pip fetches the build
requirements (setuptools, mypy) into its isolated build environment, which
checks that pyproject.toml lists them all. Installed into a fresh venv, whose
dependencies come from this venv's site-packages rather than a download, each
wheel must start, import what it holds, and replay captures exactly as this
tree does. An editable install, as ``make deps`` makes, compiles nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest

from benchmarks.replay_throughput import write_capture
from resolver import native

ROOT = Path(__file__).resolve().parents[2]
CONTAINERFILE = ROOT / "deploy" / "Containerfile"
CORPUS = ROOT / "tests" / "data" / "corpus"
EXTENSION = sysconfig.get_config_var("EXT_SUFFIX")  # .cpython-311-x86_64-linux-gnu.so
GROUP_LIBRARY = native.GROUP.replace(".", "/") + "__mypyc" + EXTENSION
BUILD_TIMEOUT = 900  # a compiled build takes 70-130 s on a 2-core machine


def _build_stage(text: str) -> str:
    stages = re.split(r"^FROM ", text, flags=re.MULTILINE)
    assert len(stages) == 3, "the Containerfile has a build stage and a runtime stage"
    return stages[1]


def _copied_in() -> list[str]:
    """The repository paths the image's build stage copies in."""
    paths = []
    for line in _build_stage(CONTAINERFILE.read_text()).splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not words[1].startswith("--"):
            paths += words[1:-1]
    return paths


def _copy_tree(dest: Path) -> Path:
    """What the build stage sees: the copied paths as they are here, extensions built in place included."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in _copied_in():
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, dest / name)
    return dest


def _pip(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True,
                          timeout=BUILD_TIMEOUT, env={**os.environ, **(env or {})})


def _venv(path: Path) -> Path:
    """A fresh venv without pip; this venv's pip installs into it (``pip --python``)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=60)
    return path / "bin" / "python"


def _give_dependencies(python: Path) -> None:
    """dnsgate's dependencies from this venv's site-packages, searched after the venv's own.

    A path line in a .pth file: the editable install of dnsgate there (a .pth of
    its own) is not run, so the venv's own install is the only dnsgate found.
    """
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True, timeout=60)
    (Path(out.stdout.strip()) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=300, env=_clean_env())


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The compiled wheel and the pure one, built in turn from one copy of the tree."""
    tree = _copy_tree(tmp_path_factory.mktemp("tree"))
    out = {}
    for flavour, setting in (("compiled", "1"), ("pure", "0")):
        dist = tmp_path_factory.mktemp(f"wheel-{flavour}")
        built = _pip("wheel", "--no-deps", "--wheel-dir", str(dist), str(tree), env={"DNSGATE_NATIVE": setting})
        assert built.returncode == 0, built.stdout + built.stderr
        (out[flavour],) = dist.glob("dnsgate-*.whl")
    return out


def _install(venv: Path, *what: str) -> Path:
    """dnsgate installed into a fresh venv (``what``: pip's words for a wheel or an editable tree); its bin/."""
    python = _venv(venv)
    done = _pip("--python", str(python), "install", "--no-deps", *what)
    assert done.returncode == 0, done.stdout + done.stderr
    _give_dependencies(python)
    return venv / "bin"


@pytest.fixture(scope="module")
def captures(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    mixed = tmp_path_factory.mktemp("captures") / "mixed.pcap"
    write_capture(mixed, 4000, seed=3, unique=0.5)  # a benign day with half its names never seen
    return [mixed, CORPUS / "iodine_dev.pcap", CORPUS / "dns2tcp_txt_dev.pcap", CORPUS / "dnscat2_dev.pcap"]


def _replay_output(result: subprocess.CompletedProcess[str]) -> tuple[str, list[str]]:
    assert result.returncode == 0, result.stderr
    # The summary without its timing ("in 1.23s"), which differs from run to run.
    return result.stdout, [re.sub(r" in [\d.]+s$", "", line) for line in result.stderr.splitlines()]


REPLAY_ARGS = ["replay", "--format", "jsonl", "--progress", "never"]


@pytest.fixture(scope="module")
def tree_replay(captures: list[Path]) -> tuple[str, list[str]]:
    """This tree's replay of the captures: what every installed wheel must give."""
    out = _replay_output(_run([sys.executable, "-m", "resolver.cli", *REPLAY_ARGS, *map(str, captures)], ROOT))
    assert out[0].count("\n") > 100  # the captures do exercise the detector's verdicts
    return out


def _imported_from(bin_dir: Path, tmp_path: Path) -> list[str]:
    """Where the installed Python imports each module of MODULES from."""
    names = [m.removesuffix(".py").replace("/", ".") for m in native.MODULES]
    script = "import importlib, sys\nfor name in sys.argv[1:]: print(importlib.import_module(name).__file__)"
    out = _run([str(bin_dir / "python"), "-c", script, *names], tmp_path)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def _contents(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def test_only_the_image_build_stage_has_a_compiler() -> None:
    text = CONTAINERFILE.read_text()
    build = _build_stage(text)
    runtime = text.split(build, 1)[1]
    assert "apt-get install -y --no-install-recommends gcc libc6-dev zlib1g-dev" in build
    assert "setup.py" in _copied_in()  # without it the wheel is the pure one
    assert not re.search(r"apt-get|gcc|build-essential", runtime)
    assert "pip wheel" in build
    assert "--no-index --find-links /wheels dnsgate" in runtime  # installs the built wheels only


def test_the_compiled_wheel_holds_every_listed_module_compiled(wheels: dict[str, Path]) -> None:
    wheel = wheels["compiled"]
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    assert wheel.name.startswith(f"dnsgate-0.1.0-{tag}-{tag}-linux_"), wheel.name  # a platform wheel
    names = _contents(wheel)
    expected = {m.removesuffix(".py") + EXTENSION for m in native.MODULES} | {GROUP_LIBRARY}
    expected |= {m.removesuffix(".c") + EXTENSION for m in native.C_MODULES}
    assert {n for n in names if n.endswith((".so", ".pyd"))} == expected
    assert set(native.MODULES) <= names  # the sources too, as in every install
    # Beyond the extensions, the same files as the pure wheel: sources, zones, data.
    pure = {n for n in _contents(wheels["pure"]) if ".dist-info/" not in n}
    assert {n for n in names if ".dist-info/" not in n} - expected == pure


def test_dnsgate_native_0_gives_the_pure_wheel(wheels: dict[str, Path]) -> None:
    wheel = wheels["pure"]
    assert wheel.name == "dnsgate-0.1.0-py3-none-any.whl"
    names = _contents(wheel)
    # The tree it was built from holds extensions built in place (make native): none is packaged.
    assert not [n for n in names if n.endswith((".so", ".pyd"))]
    assert set(native.MODULES) <= names
    assert "zones/default.yaml" in names


def test_the_installed_compiled_wheel_runs_compiled_and_replays_as_the_tree(
    wheels: dict[str, Path], tree_replay: tuple[str, list[str]], captures: list[Path], tmp_path: Path
) -> None:
    bin_dir = _install(tmp_path / "venv", "--no-index", str(wheels["compiled"]))
    site = Path(sysconfig.get_paths(vars={"base": str(tmp_path / "venv")})["purelib"])
    files = _imported_from(bin_dir, tmp_path)
    # (A module that another compiled module imports first gets a __file__ mypyc makes up
    # beside the group's library, resolver/heuristics/names...so: the venv's all the same.)
    assert all(f.startswith(f"{site}/") and f.endswith(EXTENSION) for f in files), files
    # pip may write a source after its extension; an installed wheel starts whatever the times.
    later = time.time() + 60
    for source in native.MODULES:
        os.utime(site / source, (later, later))
    version = _run([str(bin_dir / "dnsgate"), "--version"], tmp_path)
    assert version.returncode == 0, version.stderr
    assert version.stdout == "dnsgate 0.1.0\n"
    replayed = _run([str(bin_dir / "dnsgate"), *REPLAY_ARGS, *map(str, captures)], tmp_path)
    assert _replay_output(replayed) == tree_replay
    # build would write into site-packages and clean delete the install's extensions: each refuses in one line.
    installed = sorted(site.rglob(f"*{EXTENSION}"))
    for command in ("build", "clean"):
        refused = _run([str(bin_dir / "python"), "-m", "resolver.native", command], tmp_path)
        assert refused.returncode == 1
        assert refused.stderr.splitlines() == [
            f"resolver.native: {command} works on a source checkout only, "
            f"and dnsgate is installed from a wheel in {site.resolve()}"
        ]
    assert sorted(site.rglob(f"*{EXTENSION}")) == installed
    status = _run([str(bin_dir / "python"), "-m", "resolver.native", "status"], tmp_path)
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[0] == f"not a source checkout: dnsgate is installed from a wheel in {site.resolve()}"
    assert f"{'compiled':8} heuristics/detector.py" in status.stdout.splitlines()


def test_the_installed_pure_wheel_runs_from_source_and_replays_as_the_tree(
    wheels: dict[str, Path], tree_replay: tuple[str, list[str]], captures: list[Path], tmp_path: Path
) -> None:
    bin_dir = _install(tmp_path / "venv", "--no-index", str(wheels["pure"]))
    site = Path(sysconfig.get_paths(vars={"base": str(tmp_path / "venv")})["purelib"])
    assert _imported_from(bin_dir, tmp_path) == [str(site / m) for m in native.MODULES]
    version = _run([str(bin_dir / "dnsgate"), "--version"], tmp_path)
    assert version.returncode == 0, version.stderr
    assert version.stdout == "dnsgate 0.1.0\n"
    replayed = _run([str(bin_dir / "dnsgate"), *REPLAY_ARGS, *map(str, captures)], tmp_path)
    assert _replay_output(replayed) == tree_replay


def test_a_build_without_a_c_compiler_stops_with_one_line(tmp_path: Path) -> None:
    tree = _copy_tree(tmp_path / "tree")
    built = _pip("wheel", "--no-deps", "--wheel-dir", str(tmp_path / "dist"), str(tree),
                 env={"DNSGATE_NATIVE": "1", "CC": "no-such-cc"})
    assert built.returncode != 0
    output = built.stdout + built.stderr
    ours = [line.strip() for line in output.splitlines() if "dnsgate wheel:" in line]
    assert ours == ["dnsgate wheel: cannot compile: no C compiler (no-such-cc not found); "
                    "on Debian: apt-get install gcc python3-dev zlib1g-dev; "
                    "or set DNSGATE_NATIVE=0 for the pure-Python wheel"]
    assert "Traceback" not in output
    assert not list((tmp_path / "dist").glob("*.whl"))


def test_an_editable_install_compiles_nothing_and_keeps_the_stale_guard(tmp_path: Path) -> None:
    tree = native.copy_packages(_copy_tree(tmp_path / "tree"))  # its packages without extensions
    bin_dir = _install(tmp_path / "venv", "--editable", str(tree))
    built = [p for p in tree.rglob("*") if p.name.endswith((".so", ".pyd", ".c"))]
    assert sorted(str(p.relative_to(tree)) for p in built) == sorted(native.C_MODULES)  # sources only
    out = _run([str(bin_dir / "python"), "-c", "from resolver import native; print(native.ROOT, native.installed())"],
               tmp_path)
    assert out.stdout.split() == [str(tree), "False"], out.stderr
    version = _run([str(bin_dir / "dnsgate"), "--version"], tmp_path)
    assert version.returncode == 0, version.stderr
    # A checkout, even installed editable, still refuses an extension older than its source.
    extension = tree / "heuristics" / ("detector" + EXTENSION)
    extension.write_bytes(b"")
    old = (tree / "heuristics" / "detector.py").stat().st_mtime - 60
    os.utime(extension, (old, old))
    refused = _run([str(bin_dir / "dnsgate"), "--version"], tmp_path)
    assert refused.returncode == 2
    assert len(refused.stderr.splitlines()) == 1, refused.stderr
    assert "heuristics/detector.py" in refused.stderr

