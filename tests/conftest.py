"""Shared fixtures: real servers started per session on free loopback ports."""

pytest_plugins = [
    "tests.support.redis_server",
    "tests.support.upstream_servers",
]
