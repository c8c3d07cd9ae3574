"""Config and RPZ zone files that cannot be read as text: one ConfigError naming the file
(and the line), never a UnicodeDecodeError; a reload that meets one keeps the old policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from resolver import config as config_mod
from resolver.config import ConfigError
from resolver.pipeline.policy import compile_policies

CONFIG = """\
upstreams:
  - {address: 127.0.0.1, port: 5400}
namespaces:
  agents:
    clients: [127.0.0.1/32]
    mode: enforce
    allow: [api.github.com]
    rpz: [policy.rpz]
"""
ZONE = """\
$ORIGIN rpz.local.
@ SOA localhost. hostmaster.localhost. 1 3600 600 86400 60
blocked.test CNAME .
"""


def files(tmp_path: Path, config: bytes = CONFIG.encode(), zone: bytes = ZONE.encode()) -> Path:
    (tmp_path / "policy.rpz").write_bytes(zone)
    path = tmp_path / "dnsgate.yaml"
    path.write_bytes(config)
    return path


def test_a_config_that_is_not_utf8_names_its_line(tmp_path: Path) -> None:
    path = files(tmp_path, config=CONFIG.replace("[api.github.com]", "[api.github.com] # \xff\xfe").encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        config_mod.load(path)
    assert str(info.value) == f"{path}:7: not UTF-8 (byte 0xff at column 31)"


def test_a_zone_that_is_not_utf8_names_its_line(tmp_path: Path) -> None:
    config = config_mod.load(files(tmp_path, zone=b"\xff\xfe" + ZONE.encode()))
    with pytest.raises(ConfigError) as info:
        compile_policies(config)
    assert str(info.value) == f"{tmp_path / 'policy.rpz'}:1: rpz: not UTF-8 (byte 0xff at column 1)"


@pytest.mark.parametrize(("target", "said"), [
    ("zones.d", "is a directory"),
    ("/dev/zero", "is not a regular file (a character device)"),
])
def test_a_zone_path_that_is_no_file_says_what_it_is(tmp_path: Path, target: str, said: str) -> None:
    (tmp_path / "zones.d").mkdir()
    path = files(tmp_path, config=CONFIG.replace("policy.rpz", target).encode())
    with pytest.raises(ConfigError) as info:
        config_mod.load(path)
    assert info.value.key == "namespaces.agents.rpz[0]"
    shown = (tmp_path / target).resolve()
    assert info.value.message == f"RPZ zone file {shown} {said}"


def test_reading_is_bounded(tmp_path: Path) -> None:
    big = tmp_path / "big.rpz"
    big.write_bytes(ZONE.encode() * 100)
    with pytest.raises(ConfigError) as info:
        config_mod.read_text(big, "rpz", limit=1024)
    assert "larger than" in info.value.message
    # An endless file (a config path that is a device) stops at the bound, not at the end of memory.
    with pytest.raises(ConfigError, match="larger than"):
        config_mod.read_text(Path("/dev/zero"), limit=1 << 20)
    assert config_mod.MAX_FILE_BYTES >= 64 << 20  # large public RPZ feeds still load


def test_crlf_reads_as_before(tmp_path: Path) -> None:
    path = tmp_path / "crlf.yaml"
    path.write_bytes(b"a: 1\r\nb: 2\rc: 3\n")
    assert config_mod.read_text(path) == path.read_text(encoding="utf-8")


def test_a_reload_meeting_a_zone_that_is_not_utf8_keeps_the_old_policy(tmp_path: Path) -> None:
    from resolver.operations.listeners import Server

    path = files(tmp_path)
    server = Server(config_mod.load(path))
    before = server.config, server.pipeline
    (tmp_path / "policy.rpz").write_bytes(b"\xff\xfe" + ZONE.encode())
    assert server.reload() is False
    assert (server.config, server.pipeline) == before
    assert server.reloads_failed == 1
    assert "policy.rpz:1: rpz: not UTF-8" in server.last_reload_error
