"""Shared fixtures: real servers started per session on free loopback ports."""

import pytest

from resolver.native import stale, stale_message

pytest_plugins = [
    "tests.support.redis_server",
    "tests.support.upstream_servers",
]


def pytest_sessionstart(session: pytest.Session) -> None:  # noqa: ARG001 (pytest passes it)
    # A compiled module older than its source would test old code.
    if old := stale():
        pytest.exit(f"dnsgate: {stale_message(old)}", returncode=2)
