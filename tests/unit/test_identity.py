"""Identity stage: listener binding, then longest prefix across namespaces, then the default."""

from __future__ import annotations

from pathlib import Path

from resolver import config as config_mod
from resolver.pipeline.identity import PrefixTable, namespace_views

CONFIG = """
upstreams: [{{address: 127.0.0.1, port: 53}}]
unknown_clients: {unknown}
namespaces:
  wide: {{clients: [10.0.0.0/8, "fd00::/8"]}}
  narrow: {{clients: [10.244.1.0/24]}}
  host: {{clients: [10.244.1.7/32, "fd00::7/128"]}}
"""


def table(tmp_path: Path, unknown: str = "refuse") -> PrefixTable:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG.format(unknown=unknown))
    return PrefixTable(namespace_views(config_mod.load(path).namespaces))


def name(ns: object) -> str | None:
    return getattr(ns, "name", None)


def test_longest_prefix_wins(tmp_path: Path) -> None:
    t = table(tmp_path)
    assert name(t.lookup("10.244.1.7")) == "host"
    assert name(t.lookup("10.244.1.8")) == "narrow"
    assert name(t.lookup("10.9.9.9")) == "wide"
    assert name(t.lookup("192.0.2.1")) is None


def test_ipv6_and_mapped_ipv4(tmp_path: Path) -> None:
    t = table(tmp_path)
    assert name(t.lookup("fd00::7")) == "host"
    assert name(t.lookup("fd00::8")) == "wide"
    assert name(t.lookup("::ffff:10.244.1.7")) == "host"
    assert name(t.lookup("fe80::1%eth0")) is None
