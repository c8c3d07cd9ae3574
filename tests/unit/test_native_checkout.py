"""``python -m resolver.native build|clean|status`` outside a source checkout (resolver/native.py).

Installed from a wheel, resolver.native's root is site-packages: ``build`` would
write into it and ``clean`` delete the install's compiled modules, so both stop
with one line naming the install. These tests lay out the directories in a
temporary directory and point the module's ROOT at them, in this process: an
in-process layout, not a real wheel install (tests/integration/test_wheel.py
installs real wheels).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

from resolver import native

EXTENSION = EXTENSION_SUFFIXES[0]
Point = Callable[[Path], Path]


def _packages(root: Path) -> Path:
    """Every module's source, and an extension beside each, under ``root`` as an install has them."""
    for source in native.MODULES + tuple(native.C_MODULES):
        path = root / source
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
        path.with_name(path.stem + EXTENSION).write_bytes(b"")
    (root / native.GROUP.replace(".", "/")).with_name("_compiled__mypyc" + EXTENSION).write_bytes(b"")
    return root


def _wheel_install(tmp_path: Path) -> Path:
    """site-packages as pip leaves it after installing dnsgate's wheel: the packages and dnsgate's dist-info."""
    site = _packages(tmp_path / "venv" / "lib" / "python3.11" / "site-packages")
    info = site / "dnsgate-0.1.0.dist-info"
    info.mkdir()
    (info / "RECORD").write_text("")
    return site


def _files(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime for p in root.rglob("*")}


@pytest.fixture
def at(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Point:
    """Points resolver.native at ``root`` (its build directory under tmp_path); returns ``root``."""
    def point(root: Path) -> Path:
        monkeypatch.setattr(native, "ROOT", root.resolve())
        monkeypatch.setattr(native, "BUILD_DIR", tmp_path / "build-dir")
        return root.resolve()
    return point


@pytest.mark.parametrize("command", ["build", "clean"])
def test_build_and_clean_refuse_an_installed_wheel_in_one_line(
    at: Point, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    site = at(_wheel_install(tmp_path))
    before = _files(site)
    assert native.main([command]) == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.splitlines() == [
        f"resolver.native: {command} works on a source checkout only, "
        f"and dnsgate is installed from a wheel in {site}"
    ]
    assert _files(site) == before  # nothing written, nothing deleted
    assert not (tmp_path / "build-dir").exists()


@pytest.mark.parametrize("command", ["build", "clean"])
def test_build_and_clean_refuse_a_site_packages_directory_without_pip_record(
    at: Point, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """Packages in a dist-packages directory (Debian's) with no dist-info: installed all the same."""
    site = at(_packages(tmp_path / "usr" / "lib" / "python3" / "dist-packages"))
    # A pyproject.toml and setup.py there (some wheel's stray files) do not make it a checkout.
    (site / "pyproject.toml").write_text('[project]\nname = "dnsgate"\n')
    (site / "setup.py").write_text("")
    before = _files(site)
    assert native.main([command]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"resolver.native: {command} works on a source checkout only, and dnsgate is installed in {site}"
    ]
    assert _files(site) == before


def test_status_says_the_modules_are_installed_from_a_wheel(
    at: Point, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = at(_wheel_install(tmp_path))
    assert native.main(["status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"not a source checkout: dnsgate is installed from a wheel in {site}"
    assert lines[1:] == [f"{'compiled':8} {m}" for m in (*native.MODULES, *native.C_MODULES)]


def test_a_tree_without_pyproject_and_setup_py_is_not_a_checkout(
    at: Point, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = at(_packages(tmp_path / "tree"))
    assert native.main(["clean"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"resolver.native: clean works on a source checkout only, and {tree} has no pyproject.toml "
        "and no setup.py beside resolver/ and heuristics/"
    ]
    (tree / "pyproject.toml").write_text('[project]\nname = "another"\n')
    (tree / "setup.py").write_text("")
    assert native.not_a_checkout() == f"{tree / 'pyproject.toml'} is not dnsgate's"


def test_a_checkout_is_one_and_clean_removes_its_extensions(
    at: Point, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert native.not_a_checkout() is None  # this tree, as the tests run it
    tree = at(_packages(tmp_path / "checkout"))
    (tree / "pyproject.toml").write_text('[project]\nname = "dnsgate"\n')
    (tree / "setup.py").write_text("")
    assert native.not_a_checkout() is None
    assert native.main(["status"]) == 0
    assert not capsys.readouterr().out.startswith("not a source checkout")
    assert native.main(["clean"]) == 0
    assert capsys.readouterr().err == f"removed {len(native.MODULES) + len(native.C_MODULES) + 1} compiled files\n"
    assert not [p for p in tree.rglob(f"*{EXTENSION}")]
