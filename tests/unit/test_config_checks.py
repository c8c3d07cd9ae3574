"""check-config catching what users get wrong: each mistake is one error naming the line to fix."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resolver import config as config_mod
from resolver.config import ConfigError
from resolver.operations.sinks import check_sinks

BASE = """\
listen: [{address: 127.0.0.1, port: 5353}]
upstreams: [{address: 127.0.0.1, port: 5400}]
namespaces:
  agents:
    clients: [127.0.0.1/32]
    allow: [example.com]
"""


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        config_mod.load("c.yaml", text=text)
    return str(caught.value)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_file(text: str) -> None:
    assert error_of(text).startswith("c.yaml:1: the file is empty")


def test_duplicate_keys_at_any_level() -> None:
    assert error_of(BASE + "upstreams: system\n") == (
        "c.yaml:7: duplicate key 'upstreams' (first at line 2): YAML would keep only the last one")
    nested = BASE + "    allow: [other.example]\n"
    assert error_of(nested).startswith("c.yaml:7: duplicate key 'allow' (first at line 6)")
    in_flow = BASE.replace("port: 5400}", "port: 5400, port: 53}")
    assert error_of(in_flow).startswith("c.yaml:2: duplicate key 'port'")


def test_host_bits_set() -> None:
    message = error_of(BASE.replace("127.0.0.1/32", "127.0.0.1/8"))
    assert message == ("c.yaml:5: namespaces.agents.clients[0]: 127.0.0.1/8 has host bits set: "
                       "write 127.0.0.0/8 for the whole prefix, or 127.0.0.1/32 for one address")
    assert "has host bits set" in error_of(BASE.replace("127.0.0.1/32", "2001:db8::1/64"))


def test_same_prefix_in_two_namespaces() -> None:
    text = BASE + "  builds:\n    clients: [10.0.0.0/24, 127.0.0.1/32]\n"
    assert error_of(text) == ("c.yaml:8: namespaces.builds.clients[1]: 127.0.0.1/32 is already a client "
                              "prefix of namespace 'agents' (line 5): a prefix belongs to one namespace")
    # Nested prefixes are fine: the longest one wins.
    config_mod.load("c.yaml", text=BASE + "  builds:\n    clients: [127.0.0.0/8]\n")


@pytest.mark.parametrize(("broken", "line", "what"), [
    (BASE.replace("port: 5353}]", "port: 5353]"), 1, "flow mapping is not closed"),
    (BASE.replace("[127.0.0.1/32]", "[127.0.0.1/32"), 5, "flow sequence is not closed"),
    (BASE.replace("[example.com]", '"example.com'), 6, "quoted scalar is not closed"),
    (BASE.replace("    allow", "   allow"), 6, "expected <block end>"),
])
def test_yaml_errors_name_the_line_to_fix(broken: str, line: int, what: str) -> None:
    message = error_of(broken)
    assert message.startswith(f"c.yaml:{line}: not valid YAML: ")
    assert what in message


def test_unknown_keys_get_did_you_mean() -> None:
    assert error_of(BASE + "upstream_timout: 1\n") == (
        "c.yaml:7: upstream_timout: unknown key; did you mean 'upstream_timeout'?")
    assert error_of(BASE + "    alow: [x.example]\n").endswith("namespaces.agents.alow: unknown key; did you mean 'allow'?")
    assert error_of(BASE + "frobnicate: 1\n") == "c.yaml:7: frobnicate: unknown key"
    assert error_of(BASE + "    mode: enforcing\n").endswith("not 'enforcing'; did you mean 'enforce'?")


def test_mode_words_yaml_would_read_as_booleans() -> None:
    config = config_mod.load("c.yaml", text=BASE + "    detection: {mode: off}\ndetection: {mode: no}\n")
    assert config.namespaces["agents"].detection.mode == "off"
    config = config_mod.load("c.yaml", text=BASE + "detection: {mode: off, thresholds: {default_exemptions: no}}\n")
    assert config.namespaces["agents"].detection.mode == "off"
    assert config.namespaces["agents"].detection.thresholds.default_exemptions is False
    assert "must be one of off, observe, enforce, not 'on'" in error_of(BASE + "detection: {mode: on}\n")
    # A namespace mode has no "off": the word is named, not YAML's false.
    assert "must be one of learn, observe, enforce, not 'off'" in error_of(BASE + "    mode: off\n")


def test_type_errors_read_as_english() -> None:
    assert error_of(BASE.replace("port: 5400", "port: many")) == (
        "c.yaml:2: upstreams[0].port: must be an int, not 'many'")
    assert "upstream_timeout: must be a number, not 'soon'" in error_of(BASE + "upstream_timeout: soon\n")


def test_upstream_that_is_dnsgate_itself() -> None:
    looped = BASE.replace("port: 5400", "port: 5353")
    assert error_of(looped) == ("c.yaml:2: upstreams: upstream 127.0.0.1:5353 is dnsgate's own listener: "
                                "queries would loop; list the resolvers to forward to under upstreams:")
    anywhere = looped.replace("{address: 127.0.0.1, port: 5353}]\nup", "{address: 0.0.0.0, port: 5353}]\nup")
    assert "own listener" in error_of(anywhere)


LINES = BASE.splitlines(keepends=True)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(LINES), st.text(alphabet=" :-[]{}\"'#,*&!|>\n\tax0.1/", max_size=30)),
                max_size=12))
def test_any_text_is_a_config_or_one_located_error(pieces: list[str]) -> None:
    text = "".join(pieces)
    try:
        config_mod.load("c.yaml", text=text)
    except ConfigError as exc:
        # Any text is drawn: the error's shape is the property, so it is checked where it is caught.
        assert 0 <= exc.line <= text.count("\n") + 2  # noqa: PT017
        assert "\n" not in str(exc)  # noqa: PT017


def test_user_key() -> None:
    assert config_mod.load("c.yaml", text=BASE + "user: dnsgate\n").user == "dnsgate"
    assert config_mod.load("c.yaml", text=BASE).user is None
    assert "user: must be a string, not 53" in error_of(BASE + "user: 53\n")


def test_read_document_keeps_mode_words() -> None:
    # propose rewrites a config through this: an unquoted off must come back as off.
    document = config_mod.read_document(BASE + "detection: {mode: off}\n")
    assert document["detection"] == {"mode": "off"}
    assert type(document["namespaces"]) is dict


def test_did_you_mean_reaches_thresholds_and_sinks() -> None:
    message = error_of(BASE + "detection: {thresholds: {entropy_ratoi: 0.7}}\n")
    assert message.endswith("detection.thresholds.entropy_ratoi: unknown setting; did you mean 'entropy_ratio'?")
    assert error_of(BASE + "alerts: [{type: jsonl, paht: x.jsonl}]\n").endswith(
        "c.yaml:7: alerts[0].paht: unknown key; did you mean 'path'?")
    config = config_mod.load("c.yaml", text=BASE + "alerts: [{type: webhook, url: 'http://127.0.0.1:9/', timout: 2}]\n")
    with pytest.raises(ConfigError, match=r"timout: unknown key; did you mean 'timeout'\?$"):
        check_sinks(config)  # remote sinks' options are read where the sinks are built
