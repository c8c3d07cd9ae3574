"""Config validation: every error names file, line and key; check-config exits non-zero."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from resolver import config as config_mod
from resolver.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]

GOOD = """\
listen:
  - {address: 127.0.0.1, port: 5353}
upstreams:
  - {address: 127.0.0.1, port: 5400}
unknown_clients: refuse
namespaces:
  agents:
    clients: [127.0.0.1/32, 10.244.1.0/24]
    mode: enforce
    allow: [api.github.com, "*.githubusercontent.com"]
state: {backend: memory}
alerts:
  - {type: jsonl, path: "-"}
"""


def load_text(tmp_path: Path, text: str) -> config_mod.Config:
    path = tmp_path / "dnsgate.yaml"
    path.write_text(text)
    return config_mod.load(path)


def test_issue_example_loads(tmp_path: Path) -> None:
    config = load_text(tmp_path, GOOD)
    agents = config.namespaces["agents"]
    assert agents.mode == "enforce"
    assert agents.allow == ("api.github.com", "*.githubusercontent.com")
    assert [str(n) for n in agents.clients] == ["127.0.0.1/32", "10.244.1.0/24"]
    assert config.upstreams[0].port == 5400


@pytest.mark.parametrize(
    ("bad", "good", "line", "key", "message"),
    [
        ("    mode: enforce", "    mode: enforced", 9, "namespaces.agents.mode", "must be one of learn, observe, enforce"),
        ("    clients: [127.0.0.1/32, 10.244.1.0/24]", "    clients: [127.0.0.1/32, 10.244.1.0/33]", 8, "namespaces.agents.clients[1]", "not an IP address or prefix"),
        ("  - {address: 127.0.0.1, port: 5400}", "  - {address: 127.0.0.1, port: 99999}", 4, "upstreams[0].port", "must be 0..65535"),
        ("unknown_clients: refuse", "unknown_clients: nobody", 5, "unknown_clients", "must be 'refuse' or a namespace name"),
        ("state: {backend: memory}", "state: {backend: etcd}", 11, "state.backend", "must be one of memory, redis"),
        ("    mode: enforce", "    mode: enforce\n    colour: blue", 10, "namespaces.agents.colour", "unknown key"),
        ('  - {type: jsonl, path: "-"}', "  - {type: carrier-pigeon}", 13, "alerts[0].type", "must be one of"),
        ('    allow: [api.github.com, "*.githubusercontent.com"]', '    allow: [api.github.com, "api.*.com"]', 10, "namespaces.agents.allow[1]", "a wildcard may only be the first label"),
        ("  - {address: 127.0.0.1, port: 5353}", "  - {address: localhost, port: 5353}", 2, "listen[0].address", "not an IP address"),
    ],
)
def test_errors_name_file_line_and_key(tmp_path: Path, bad: str, good: str, line: int, key: str, message: str) -> None:
    text = GOOD.replace(bad, good)
    assert text != GOOD
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    err = info.value
    assert err.path.endswith("dnsgate.yaml")
    assert (err.line, err.key) == (line, key)
    assert message in err.message
    assert str(err).startswith(f"{err.path}:{line}: {key}: ")


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, GOOD.replace("    mode: enforce", "    mode: [enforce"))
    assert info.value.line >= 9
    assert "not valid YAML" in info.value.message


def test_missing_rpz_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, GOOD.replace("    mode: enforce", "    mode: enforce\n    rpz: [nowhere.rpz]"))
    assert info.value.key == "namespaces.agents.rpz[0]"
    assert "no such RPZ zone file" in info.value.message


def test_check_config_cli(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("mode: enforce", "mode: block"))
    ok = subprocess.run([sys.executable, "-m", "resolver.cli", "check-config", str(good)], capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert "ok (1 namespaces" in ok.stdout
    fail = subprocess.run([sys.executable, "-m", "resolver.cli", "check-config", str(bad)], capture_output=True, text=True, cwd=ROOT)
    assert fail.returncode == 1
    assert f"{bad}:9: namespaces.agents.mode: must be one of learn, observe, enforce, not 'block'" in fail.stderr


def test_serve_rejects_bad_config_before_listening(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("port: 5400", "port: many"))
    out = subprocess.run([sys.executable, "-m", "resolver.cli", "serve", "--config", str(bad)], capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert out.returncode == 2
    assert f"{bad}:4: upstreams[0].port: must be an int, not 'many'" in out.stderr


def test_bundled_default_is_valid() -> None:
    config = config_mod.load(config_mod.bundled_config_path())
    assert config.listen[0].address == "127.0.0.1"
    assert config.listen[0].port == 5353
    assert config.state.backend == "memory"
    assert config.unknown_clients == "refuse"


def test_check_config_validates_sink_options(tmp_path: Path) -> None:
    bad = tmp_path / "sink.yaml"
    bad.write_text(GOOD.replace('  - {type: jsonl, path: "-"}', '  - {type: jsonl, path: "-"}\n  - {type: webhook, url: "ftp://x"}'))
    fail = subprocess.run([sys.executable, "-m", "resolver.cli", "check-config", str(bad)], capture_output=True, text=True, cwd=ROOT)
    assert fail.returncode == 1
    assert f"{bad}:14: alerts[webhook].url: must be a http or https URL" in fail.stderr
