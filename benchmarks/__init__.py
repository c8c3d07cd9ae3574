"""Benchmark harness for dnsgate against Unbound (issue 6). Entry point: ``python -m benchmarks.run``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def save_results(path: Path, result: dict[str, Any]) -> Path:
    """Write a benchmark's result as indented JSON (its directory made when missing); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return path
