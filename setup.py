"""Adds the compiled query path to dnsgate's wheel; pyproject.toml describes the rest.

``pip wheel .`` and ``pip install .`` compile resolver/native.py's MODULES with
mypyc, and its C_MODULES, into the wheel (a platform wheel). ``DNSGATE_NATIVE=0``
gives the pure-Python wheel. An editable install (``make deps``) compiles nothing:
``make native`` builds in place. A build that cannot compile (no C compiler, no
Python headers, no zlib.h) stops with one line saying so rather than quietly giving the
slower pure wheel: pip shows a build's output only when it fails.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from resolver import native  # noqa: E402 - from this tree, whatever is installed

# setuptools runs this file for each step pip asks of it; only the wheel's own build
# compiles (not the metadata steps, and not `editable_wheel`).
BUILDING_WHEEL = "bdist_wheel" in sys.argv
COMPILE = BUILDING_WHEEL and os.environ.get("DNSGATE_NATIVE", "1") != "0"
WHEEL_BUILD = HERE / "build" / "wheel"

ext_modules = []
if BUILDING_WHEEL:
    # The wheel holds what this tree has now, not files an earlier build left in build/.
    shutil.rmtree(WHEEL_BUILD, ignore_errors=True)
if COMPILE:
    try:
        ext_modules = native.extensions()
    except RuntimeError as exc:
        sys.exit(f"dnsgate wheel: {exc}; or set DNSGATE_NATIVE=0 for the pure-Python wheel")

setup(ext_modules=ext_modules, options={"build": {"build_base": str(WHEEL_BUILD.relative_to(HERE))}})
