"""Compiled modules: the query path's hot modules built with mypyc, in place.

``make native`` (part of ``make deps``, so of ``make serve`` and ``make test``)
runs ``python -m resolver.native build``: mypyc turns each module in
:data:`MODULES` into a C extension written beside its source
(``heuristics/detector.cpython-311-x86_64-linux-gnu.so`` next to
``heuristics/detector.py``), and Python imports the extension in its place.
The code is the same Python; the compiled build runs it faster (numbers in
docs/benchmarks.md) and gives the same answers and alerts, which
``tests/integration/test_native.py`` checks against a source-only copy.

The same build compiles the hand-written C modules of :data:`C_MODULES` beside
their sources (``heuristics/_deflate.c`` gives ``heuristics._deflate``); the
Python that imports one falls back to code of its own without it, with the same
results (``tests/unit/test_heuristics_windows.py``).

An extension older than its source (``.py`` or ``.c``) would run old code, so
``dnsgate`` refuses to start on one (:func:`stale`), with a one-line error naming the module;
``python -m resolver.native clean`` goes back to running from source.

A wheel (``pip wheel .``, ``pip install .``) holds the same modules compiled:
setup.py hands :func:`extensions` to setuptools. Installed from a wheel, the
sources and extensions come from one build, so :func:`stale` does not compare
their times (pip writes them in its own order); and ``build`` and ``clean`` stop
with a one-line error instead of writing into or deleting from site-packages
(:func:`not_a_checkout`), while ``status`` says where the install is.

This module imports nothing of mypyc or setuptools until a build asks for them:
the ``dnsgate`` command calls :func:`stale` at every start.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import site
import subprocess
import sys
import sysconfig
import time
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from setuptools import Extension

__all__ = [
    "C_MODULES",
    "MODULES",
    "ROOT",
    "build",
    "clean",
    "compiled",
    "copy_packages",
    "extensions",
    "installed",
    "not_a_checkout",
    "stale",
]

ROOT = Path(__file__).resolve().parents[1]

# What every query, live or replayed, runs through. Modules that read objects'
# __dict__ (heuristics/settings.py), subclass built-in types (heuristics/lru.py;
# resolver/operations/binding.py holds the listeners' OSError subclass), whose
# objects tests replace methods of (the upstream forwarder), or that run once at
# start (config, schema, the CLI) stay Python.
MODULES = (
    "heuristics/client_quarantine.py",
    "heuristics/detector.py",
    "heuristics/features.py",
    "heuristics/hll.py",
    "heuristics/names.py",
    "heuristics/spread.py",
    "heuristics/state.py",
    "heuristics/windows.py",
    "resolver/wire/message.py",
    "resolver/pipeline/admission.py",
    "resolver/pipeline/alerts.py",
    "resolver/pipeline/cache.py",
    "resolver/pipeline/chain.py",
    "resolver/pipeline/detection.py",
    "resolver/pipeline/identity.py",
    "resolver/pipeline/learn.py",
    "resolver/pipeline/policy.py",
    "resolver/pipeline/query.py",
    "resolver/pipeline/quarantine.py",
    "resolver/pipeline/ratelimit.py",
    "resolver/pipeline/rebinding.py",
    "resolver/pipeline/loop.py",
    "resolver/pipeline/rpz.py",
    "resolver/pipeline/scrub.py",
    "resolver/operations/listeners.py",
    "resolver/offline/capture.py",
    "resolver/offline/replay.py",
)
# Hand-written C extension modules, each with the libraries it links, built by the same
# build beside their sources (heuristics/_deflate.c gives heuristics._deflate). The Python
# that imports one has a fallback without it. heuristics/_deflate.c: the information
# estimate's deflate, without a new zlib stream for every never-seen name;
# heuristics/_labels.c: a never-seen label's alphabet, entropy and alternations in one pass.
C_MODULES: dict[str, tuple[str, ...]] = {
    "heuristics/_deflate.c": ("z",),
    "heuristics/_labels.c": ("m",),
}
# Headers the C modules include beyond Python's, with the Debian package that has each.
C_HEADERS = {"zlib.h": "zlib1g-dev"}
# mypyc puts the code of all modules in one shared library; this names it, inside
# the resolver package rather than at the top of the tree.
GROUP = "resolver._compiled"
PACKAGES = ("heuristics", "resolver")
# What makes ROOT a source checkout, beside the packages: a wheel installs neither.
CHECKOUT_FILES = ("pyproject.toml", "setup.py")
# The directories installers put packages in (pip, Debian's Python).
SITE_DIR_NAMES = frozenset({"site-packages", "dist-packages"})
BUILD_DIR = ROOT / "build" / "native"


def _sources() -> list[str]:
    """Every source the build compiles: MODULES, then C_MODULES."""
    return [*MODULES, *C_MODULES]


def _extension(source: str) -> Path | None:
    """The extension built from ``source`` (a path under ROOT, ``.py`` or ``.c``), if there is one."""
    path = ROOT / source
    for suffix in EXTENSION_SUFFIXES:
        candidate = path.with_name(path.stem + suffix)
        if candidate.exists():
            return candidate
    return None


def _group_library() -> list[Path]:
    package, _, name = GROUP.rpartition(".")
    folder = ROOT.joinpath(*package.split("."))
    return sorted(folder.glob(f"{name}__mypyc*.so"))


def _all_extensions() -> list[Path]:
    """Every extension module inside the packages (all of them built here), the group's included."""
    found: list[Path] = []
    for package in PACKAGES:
        for suffix in EXTENSION_SUFFIXES:
            found.extend((ROOT / package).rglob(f"*{suffix}"))
    return sorted(set(found))


def installed() -> bool:
    """Whether the packages were installed from a wheel: pip's record of dnsgate lies beside them.

    A source checkout has none, installed editable or not (pip's record is then in the venv).
    """
    return any(ROOT.glob("dnsgate-*.dist-info"))


def _site_dirs() -> set[Path]:
    """This Python's install directories: sysconfig's purelib and platlib, site's, the user's."""
    dirs = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    dirs.update(site.getsitepackages())
    dirs.add(site.getusersitepackages())
    return {Path(d).resolve() for d in dirs}


def _project_name(pyproject: Path) -> str | None:
    """``[project] name`` of ``pyproject``, or None when it has none or is not TOML."""
    import tomllib

    try:
        name = tomllib.loads(pyproject.read_text()).get("project", {}).get("name")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    return name if isinstance(name, str) else None


def not_a_checkout() -> str | None:
    """Why ROOT is not a source checkout, in words for a one-line error; None when it is one.

    A checkout (installed editable or not) has dnsgate's pyproject.toml and
    setup.py beside resolver/ and heuristics/, and lies in no install directory.
    Installed from a wheel, ROOT is site-packages: there ``build`` would write
    into it and ``clean`` delete the install's compiled modules.
    """
    if installed():
        return f"dnsgate is installed from a wheel in {ROOT}"
    if ROOT in _site_dirs() or SITE_DIR_NAMES & set(ROOT.parts):
        return f"dnsgate is installed in {ROOT}"
    missing = [name for name in CHECKOUT_FILES if not (ROOT / name).is_file()]
    if missing:
        return f"{ROOT} has no {' and no '.join(missing)} beside resolver/ and heuristics/"
    if _project_name(ROOT / "pyproject.toml") != "dnsgate":
        return f"{ROOT / 'pyproject.toml'} is not dnsgate's"
    return None


def _require_checkout(command: str) -> None:
    """Raises RuntimeError, in one line, when ``command`` (build, clean) would change an install."""
    if reason := not_a_checkout():
        raise RuntimeError(f"{command} works on a source checkout only, and {reason}")


def compiled() -> list[str]:
    """The modules of MODULES and C_MODULES that have an extension beside their source."""
    return [m for m in _sources() if _extension(m) is not None]


def stale() -> list[str]:
    """Sources whose extension would run old code.

    A module of MODULES or C_MODULES whose extension is older than its source
    (``.py`` or ``.c``), and a module with an extension that is in neither (left
    by an earlier build).
    Never any when installed from a wheel: one build made both, and pip may well
    write a source after its extension.
    """
    if installed():
        return []
    out = []
    listed = {ROOT / m for m in _sources()}
    groups = set(_group_library())
    for ext in _all_extensions():
        if ext in groups:
            continue
        stem = ext.name.split(".", 1)[0]
        candidates = [ext.with_name(stem + ".py"), ext.with_name(stem + ".c")]
        # The listed source, else the one there is, else the Python module it stood for.
        source = next((c for c in candidates if c in listed), None) or \
            next((c for c in candidates if c.exists()), candidates[0])
        if source not in listed or ext.stat().st_mtime < source.stat().st_mtime:
            out.append(str(source.relative_to(ROOT)))
    return out


def stale_message(modules: list[str]) -> str:
    """The one-line error for ``stale()``'s list."""
    more = f" and {len(modules) - 1} more" if len(modules) > 1 else ""
    return (f"the compiled build is out of date for {modules[0]}{more} (changed since, or no longer compiled): "
            "run `make native` to rebuild, or `python -m resolver.native clean` to run from source")


def copy_packages(dest: Path, with_extensions: bool = False) -> Path:
    """A copy of the packages dnsgate runs from in ``dest``, with or without the compiled files.

    ``python -m resolver.cli`` started in ``dest`` imports the copy (``-m`` puts the
    working directory first on sys.path): without extensions, the source build.
    CHECKOUT_FILES come along, so the copy is a checkout that ``python -m
    resolver.native`` builds and cleans.
    """
    skip = ["__pycache__"] + ([] if with_extensions else [f"*{suffix}" for suffix in EXTENSION_SUFFIXES])
    dest.mkdir(parents=True, exist_ok=True)
    for name in CHECKOUT_FILES:
        shutil.copy2(ROOT / name, dest / name)
    for package in PACKAGES:
        shutil.rmtree(dest / package, ignore_errors=True)
        shutil.copytree(ROOT / package, dest / package, ignore=shutil.ignore_patterns(*skip))
    return dest


def clean() -> int:
    """Delete every extension module in the packages (all built here); returns how many.

    Raises RuntimeError, in one line, outside a source checkout (:func:`not_a_checkout`).
    """
    _require_checkout("clean")
    extensions = _all_extensions()
    for ext in extensions:
        ext.unlink()
    return len(extensions)


def _missing_toolchain() -> str | None:
    """What a compile would lack (a C compiler, Python's headers, C_HEADERS), or None."""
    compiler = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    if shutil.which(compiler[0]) is None:
        return f"no C compiler ({compiler[0]} not found)"
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not headers.exists():
        return f"no Python headers ({headers} not found)"
    for header in C_HEADERS:
        if not _includes(compiler, header):
            return f"no {header} ({compiler[0]} cannot include it)"
    return None


def _includes(compiler: list[str], header: str) -> bool:
    """Whether ``compiler`` (with the flags a build passes it) finds ``header``: it preprocesses an include."""
    flags = shlex.split(os.environ.get("CPPFLAGS", "")) + shlex.split(os.environ.get("CFLAGS", ""))
    try:
        done = subprocess.run(  # noqa: S603 - the compiler the build runs
            [*compiler, *flags, "-E", "-x", "c", "-o", os.devnull, "-"],
            input=f"#include <{header}>\n", capture_output=True, text=True, timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _toolchain_packages() -> str:
    """The Debian packages a build needs."""
    return " ".join(["gcc", "python3-dev", *C_HEADERS.values()])


def extensions() -> list[Extension]:
    """MODULES and C_MODULES as setuptools extensions: mypy checks MODULES and mypyc writes their C under build/.

    Call it with ROOT as the working directory: mypy reads pyproject.toml's
    [tool.mypy], module names follow paths, and the extensions name their C
    files relative to it. Raises RuntimeError, in one line, when mypyc or a C
    toolchain (a header of C_HEADERS included) is missing.
    """
    try:
        from mypyc.build import mypycify
    except ImportError as exc:
        raise RuntimeError(f"cannot compile: {exc.name} is not installed (pip install mypy setuptools)") from None
    if missing := _missing_toolchain():
        raise RuntimeError(f"cannot compile: {missing}; on Debian: apt-get install {_toolchain_packages()}")
    from setuptools import Extension

    hand_written = [Extension(source.removesuffix(".c").replace("/", "."), [source], libraries=list(libraries))
                    for source, libraries in C_MODULES.items()]
    return [*mypycify(list(MODULES), opt_level="3", debug_level="0", group_name=GROUP), *hand_written]


def build(jobs: int = 0) -> list[str]:
    """Compile MODULES and C_MODULES in place; returns them. Raises RuntimeError naming what failed.

    Only in a source checkout (:func:`not_a_checkout`): installed, ROOT is site-packages.
    """
    _require_checkout("build")
    try:
        from setuptools import Distribution
    except ImportError as exc:  # pragma: no cover - every venv of Python 3.11 has it
        raise RuntimeError(f"cannot build compiled modules: {exc.name} is not installed "
                           "(pip install mypy setuptools)") from None
    clean()  # a module taken off MODULES must not keep an extension of an older build
    here = Path.cwd()
    os.chdir(ROOT)  # where extensions() runs
    try:
        # A bare Distribution: setup() would also read pyproject.toml's [project] table,
        # which describes the dnsgate package, not these extensions.
        dist = Distribution({"name": "dnsgate-compiled", "ext_modules": extensions()})
        dist.script_args = ["-q", "build_ext", "--inplace", "--build-temp", str(BUILD_DIR),
                            "--build-lib", str(BUILD_DIR / "lib"), "-j", str(jobs or os.cpu_count() or 1)]
        dist.parse_command_line()
        dist.run_commands()
    except SystemExit as exc:  # distutils reports a failed compile by exiting
        raise RuntimeError(f"compiling failed: {exc}") from None
    finally:
        os.chdir(here)
    now = time.time()
    for module in _sources():  # an extension is newer than its source, even if copied from an old build
        ext = _extension(module)
        if ext is None:
            raise RuntimeError(f"the build left no extension for {module}")
        os.utime(ext, (now, now))
    return _sources()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m resolver.native",
        description="Build, check or remove dnsgate's compiled modules (mypyc, in place).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="compile the query path's modules (and the C modules) beside their sources "
                                     "(in a checkout only)")
    b.add_argument("-j", "--jobs", type=int, default=0, help="parallel compiler jobs (default: one per CPU)")
    sub.add_parser("status", help="list each module as compiled, stale or source (and say if not a checkout)")
    sub.add_parser("clean", help="delete the compiled modules: dnsgate runs from source (in a checkout only)")
    args = parser.parse_args(argv)
    if args.command == "build":
        started = time.monotonic()
        try:
            built = build(args.jobs)
        except RuntimeError as exc:
            print(f"resolver.native: {exc}", file=sys.stderr)
            return 1
        print(f"compiled {len(built)} modules in {time.monotonic() - started:.0f}s", file=sys.stderr)
        return 0
    if args.command == "clean":
        try:
            removed = clean()
        except RuntimeError as exc:
            print(f"resolver.native: {exc}", file=sys.stderr)
            return 1
        print(f"removed {removed} compiled files", file=sys.stderr)
        return 0
    old = stale()
    sources = _sources()
    # Installed, the list is what the install runs; build and clean would refuse.
    lines = [f"not a source checkout: {reason}"] if (reason := not_a_checkout()) else []
    lines += [f"{'stale' if m in old else 'compiled' if _extension(m) else 'source':8} {m}" for m in sources]
    lines += [f"{'stale':8} {m} (compiled by an earlier build, no longer listed)" for m in old if m not in sources]
    try:
        print("\n".join(lines), flush=True)
    except BrokenPipeError:  # `status | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 1 if old else 0


if __name__ == "__main__":
    sys.exit(main())
