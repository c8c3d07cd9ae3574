"""The schema layer: defaults written once on the fields, what namespaces inherit, errors located at their line."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heuristics import DetectorSettings, SettingsError
from resolver import config as config_mod
from resolver.config import Cache, ConfigError, Namespace, RateLimit, Rebinding, State
from resolver.operations.sinks import build
from resolver.schema import line_and_key

BASE = """\
upstreams: [{address: 127.0.0.1, port: 5400}]
namespaces:
  agents:
    clients: [127.0.0.1/32]
"""


def error_of(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        config_mod.load("c.yaml", text=text)
    return caught.value


def test_a_config_that_says_nothing_gets_the_field_defaults() -> None:
    config = config_mod.load("c.yaml", text=BASE)
    agents = config.namespaces["agents"]
    assert (config.cache, config.state) == (Cache(), State())
    assert (agents.rate_limit, agents.rebinding, agents.on_undeclared) == (RateLimit(), Rebinding(), None)
    assert agents.detection.thresholds == DetectorSettings()
    defaults = {f.name: f.default for f in dataclasses.fields(config_mod.Config)
                if f.default is not dataclasses.MISSING}
    for name in ("upstream_timeout", "servfail_after", "tcp_max_connections", "workers", "unknown_clients"):
        assert getattr(config, name) == defaults[name]


def test_loaded_sections_are_frozen() -> None:
    agents = config_mod.load("c.yaml", text=BASE).namespaces["agents"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        agents.mode = "learn"  # type: ignore[misc]


def test_namespaces_inherit_top_level_keys_they_do_not_set() -> None:
    text = BASE.replace("namespaces:", "rate_limit: {qps: 5, burst: 10}\n"
                        "detection: {mode: enforce, thresholds: {unique_short: 7}}\nnamespaces:")
    text += "    rate_limit: {slip: 0}\n    detection: {thresholds: {alert_points: 2}}\n  builds: {}\n"
    config = config_mod.load("c.yaml", text=text)
    agents, builds = config.namespaces["agents"], config.namespaces["builds"]
    assert agents.rate_limit == RateLimit(5.0, 10, 0)
    assert builds.rate_limit == RateLimit(5.0, 10, 2)
    assert agents.detection.mode == builds.detection.mode == "enforce"
    assert (agents.detection.thresholds.unique_short, agents.detection.thresholds.alert_points) == (7, 2)
    assert (builds.detection.thresholds.unique_short, builds.detection.thresholds.alert_points) == (7, 3)


def test_an_inherited_mistake_is_named_where_it_is_written() -> None:
    text = BASE.replace("namespaces:", "rate_limit: {qps: -1}\nnamespaces:") + "    rate_limit: {slip: 0}\n"
    assert str(error_of(text)) == "c.yaml:2: rate_limit.qps: must be 0 (off) or more, not -1.0"


@pytest.mark.parametrize("where", ["top", "namespace"])
def test_a_section_used_twice_rejects_unknown_keys_in_both_places(where: str) -> None:
    if where == "top":
        text = BASE.replace("namespaces:", "rebinding: {zones: [corp]}\nnamespaces:")
        assert str(error_of(text)) == "c.yaml:2: rebinding.zones: unknown key"
    else:
        text = BASE + "    rebinding: {zones: [corp]}\n"
        assert str(error_of(text)) == "c.yaml:5: namespaces.agents.rebinding.zones: unknown key"


def test_threshold_errors_name_the_namespace_line() -> None:
    text = BASE.replace("namespaces:", "detection: {thresholds: {long_window_seconds: 100}}\nnamespaces:")
    text += "    detection:\n      thresholds:\n        short_window_seconds: 200\n"
    assert str(error_of(text)) == ("c.yaml:8: namespaces.agents.detection.thresholds.short_window_seconds: "
                                   "must be shorter than long_window_seconds")


def test_sink_options_name_the_first_problem_in_reading_order() -> None:
    spec = config_mod.Sink("syslog", {"url": "udp://127.0.0.1:514", "backoff_max": [1], "facility": True},
                           "d.yaml", 7)
    with pytest.raises(ConfigError, match=r"^d\.yaml:7: alerts\[syslog\]\.facility: must be a string, not True$"):
        build(spec)
    with pytest.raises(ConfigError, match=r"alerts\[webhook\]\.url: is required$"):
        build(config_mod.Sink("webhook", {}, "d.yaml", 7))


def test_line_and_key_walks_lists_and_mappings() -> None:
    data = config_mod._Loader("a:\n  b:\n    - {c: 1}\n    - x\n").get_single_data()
    assert line_and_key(data, ["a", "b", 0, "c"], 1) == (3, "a.b[0].c")
    assert line_and_key(data, ["a", "b", 1], 1) == (2, "a.b[1]")  # a scalar item: the line of its list's key
    assert line_and_key(data, ["a", "missing"], 1) == (2, "a.missing")


SETTINGS = [f for f in dataclasses.fields(DetectorSettings)]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(SETTINGS), st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(-2, 2),
                                            st.text(max_size=5), st.lists(st.integers(0, 70000), max_size=3)))
def test_detector_settings_accept_a_value_or_name_its_key(field: dataclasses.Field[object], value: object) -> None:
    try:
        settings_ = DetectorSettings.from_mapping({field.name: value})
    except SettingsError as exc:
        assert exc.key in {f.name for f in SETTINGS}  # noqa: PT017 - any value is drawn; the key is the property
        return
    assert isinstance(getattr(settings_, field.name), type(field.default))
    assert settings_ == DetectorSettings.from_mapping(settings_.as_mapping())


def test_namespace_built_in_code_is_not_validated_again() -> None:
    # The hot path and tests build sections directly: a tuple where YAML would give a list is fine.
    assert Namespace("n", rebinding=Rebinding(internal_zones=("corp",))).rebinding.internal_zones == ("corp",)
