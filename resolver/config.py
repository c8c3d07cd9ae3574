"""Typed configuration, validated once at load.

Every error names the file, the line and the key, e.g.
``zones/agents.yaml:12: namespaces.agents.mode: must be one of learn, observe, enforce``.
The hot path only ever sees the frozen dataclasses built here.
"""

from __future__ import annotations

import importlib.util
import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

MODES = ("learn", "observe", "enforce")
DETECTION_MODES = ("off", "observe", "enforce")
DENY_ACTIONS = ("nxdomain", "nodata", "refused", "drop")
SINK_TYPES = ("jsonl", "webhook", "alertmanager", "redis_stream")
STATE_BACKENDS = ("memory", "redis")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(ValueError):
    """A configuration problem located at ``path:line`` under ``key``."""

    def __init__(self, path: str, line: int, key: str, message: str) -> None:
        self.path, self.line, self.key, self.message = path, line, key, message
        super().__init__(f"{path}:{line}: {key}: {message}" if key else f"{path}:{line}: {message}")


@dataclass(frozen=True, slots=True)
class Listen:
    address: str
    port: int
    namespace: str | None = None


@dataclass(frozen=True, slots=True)
class Upstream:
    address: str
    port: int = 53

    @property
    def label(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Detection:
    mode: str = "observe"
    thresholds: Any = None  # heuristics.DetectorSettings


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str
    clients: tuple[IPNetwork, ...] = ()
    mode: str = "enforce"
    allow: tuple[str, ...] = ()
    rpz: tuple[Path, ...] = ()
    deny_action: str = "nxdomain"
    detection: Detection = field(default_factory=Detection)
    line: int = 0


@dataclass(frozen=True, slots=True)
class Cache:
    max_entries: int = 100_000
    max_ttl: int = 86_400
    negative_ttl: int = 3_600


@dataclass(frozen=True, slots=True)
class State:
    backend: str = "memory"
    url: str = "redis://127.0.0.1:6379/0"
    max_pairs: int = 100_000  # (namespace|client, domain) window pairs kept by the detector
    max_names: int = 200_000  # names remembered as already seen (information budget)


@dataclass(frozen=True, slots=True)
class Sink:
    type: str
    options: dict[str, Any]
    path: str
    line: int


@dataclass(frozen=True, slots=True)
class Admin:
    address: str = "127.0.0.1"
    port: int = 9153


@dataclass(frozen=True, slots=True)
class Config:
    path: str
    listen: tuple[Listen, ...]
    upstreams: tuple[Upstream, ...]
    namespaces: dict[str, Namespace]
    unknown_clients: str = "refuse"
    upstream_timeout: float = 1.0  # per attempt
    servfail_after: float = 2.5  # whole-query bound: SERVFAIL when no upstream answered by then
    cname_check: str = "log"  # or "strict"
    cache: Cache = field(default_factory=Cache)
    state: State = field(default_factory=State)
    alerts: tuple[Sink, ...] = ()
    policy_alert_window: float = 60.0
    tcp_idle_timeout: float = 10.0
    tcp_max_connections: int = 256
    learn_max_records: int = 100_000
    decision_memo_size: int = 100_000
    admin: Admin | None = None
    workers: int = 1
    files: tuple[Path, ...] = ()  # every file the config was built from, for reload watching


class _Loader(yaml.SafeLoader):
    """A YAML loader that remembers the line of every mapping key."""


class LocatedDict(dict[str, Any]):
    line: int
    key_lines: dict[str, int]


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LocatedDict:
    loader.flatten_mapping(node)
    out = LocatedDict()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        out[str(key)] = loader.construct_object(value_node, deep=True)
        out.key_lines[str(key)] = key_node.start_mark.line + 1
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class _Section:
    """Reads one mapping, tracking which keys were used so unknown ones are errors."""

    def __init__(self, path: str, data: Any, prefix: str, line: int) -> None:
        if data is None:
            data = LocatedDict()
            data.line, data.key_lines = line, {}
        if not isinstance(data, dict):
            raise ConfigError(path, line, prefix, "must be a mapping")
        self.path, self.data, self.prefix = path, data, prefix
        self.line = getattr(data, "line", line)
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def line_of(self, name: str) -> int:
        return getattr(self.data, "key_lines", {}).get(name, self.line)

    def error(self, name: str, message: str) -> ConfigError:
        return ConfigError(self.path, self.line_of(name), self.key(name), message)

    def has(self, name: str) -> bool:
        return name in self.data

    def raw(self, name: str, default: Any = None) -> Any:
        self.used.add(name)
        return self.data.get(name, default)

    def get(self, name: str, kind: type | tuple[type, ...], default: Any) -> Any:
        value = self.raw(name, default)
        if value is default:
            return default
        if kind in (int, float) and isinstance(value, bool):
            raise self.error(name, f"must be a {kind.__name__}, not {value!r}")  # type: ignore[union-attr]
        if kind is float and isinstance(value, int):
            return float(value)
        if not isinstance(value, kind):
            expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise self.error(name, f"must be a {expected}, not {value!r}")
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.get(name, str, default)
        if value not in choices:
            raise self.error(name, f"must be one of {', '.join(choices)}, not {value!r}")
        return str(value)

    def positive(self, name: str, kind: type, default: Any) -> Any:
        value = self.get(name, kind, default)
        if value <= 0:
            raise self.error(name, f"must be greater than 0, not {value!r}")
        return value

    def section(self, name: str) -> _Section:
        return _Section(self.path, self.raw(name), self.key(name), self.line_of(name))

    def items(self, name: str) -> Iterator[tuple[str, int, Any]]:
        """Yield (key, line, item) for each element of a list."""
        value = self.raw(name, [])
        if value is None:
            value = []
        if not isinstance(value, list):
            raise self.error(name, "must be a list")
        for i, item in enumerate(value):
            line = getattr(item, "line", self.line_of(name))
            yield f"{self.key(name)}[{i}]", line, item

    def finish(self) -> None:
        for name in self.data:
            if name not in self.used:
                raise self.error(name, "unknown key")


def _network(path: str, line: int, key: str, text: Any) -> IPNetwork:
    try:
        return ipaddress.ip_network(str(text), strict=False)
    except ValueError:
        raise ConfigError(path, line, key, f"not an IP address or prefix: {text!r}") from None


def _address(path: str, line: int, key: str, text: Any) -> str:
    try:
        return str(ipaddress.ip_address(str(text)))
    except ValueError:
        raise ConfigError(path, line, key, f"not an IP address: {text!r}") from None


def _port(sec: _Section, default: int) -> int:
    port = sec.get("port", int, default)
    if not 0 <= port <= 65535:
        raise sec.error("port", f"must be 0..65535, not {port}")
    return int(port)


def _check_name(path: str, line: int, key: str, text: Any) -> str:
    """Validate an allowlist entry: a name, optionally with a leading ``*.``."""
    if not isinstance(text, str) or not text:
        raise ConfigError(path, line, key, f"must be a domain name, not {text!r}")
    import dns.exception
    import dns.name

    body = text[2:] if text.startswith("*.") else text
    if "*" in body:
        raise ConfigError(path, line, key, f"a wildcard may only be the first label: {text!r}")
    try:
        dns.name.from_text(body)
    except dns.exception.DNSException as exc:
        raise ConfigError(path, line, key, f"not a domain name: {text!r} ({exc})") from None
    return text.rstrip(".").lower() or "."


def system_upstreams(resolv_conf: str = "/etc/resolv.conf") -> tuple[Upstream, ...]:
    """The nameservers of resolv.conf, for the embedded default."""
    found: list[Upstream] = []
    try:
        with open(resolv_conf, encoding="utf-8") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    try:
                        found.append(Upstream(str(ipaddress.ip_address(parts[1].split("%")[0]))))
                    except ValueError:
                        continue
    except OSError:
        pass
    return tuple(found)


def _settings_factory() -> Callable[[str, _Section, dict[str, Any]], Any]:
    from heuristics import DetectorSettings, SettingsError

    def build(path: str, sec: _Section, mapping: dict[str, Any]) -> Any:
        try:
            return DetectorSettings.from_mapping(dict(mapping))
        except SettingsError as exc:
            raise sec.error(exc.key, exc.message) from None

    return build


def load(path: str | Path, *, text: str | None = None) -> Config:
    """Load and validate a config file; raise ConfigError naming file, line and key."""
    path = Path(path)
    name = str(path)
    if text is None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(name, 0, "", f"cannot read: {exc.strerror}") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 0
        raise ConfigError(name, line, "", f"not valid YAML: {getattr(exc, 'problem', exc)}") from None
    return _build(name, path.resolve().parent, data)


def _build(name: str, base_dir: Path, data: Any) -> Config:
    top = _Section(name, data, "", 1)
    files: list[Path] = [Path(name)]
    settings_from = _settings_factory()

    listen: list[Listen] = []
    for key, line, item in top.items("listen"):
        sec = _Section(name, item, key, line)
        address = _address(name, sec.line_of("address"), sec.key("address"), sec.raw("address", "127.0.0.1"))
        listen.append(Listen(address, _port(sec, 53), sec.get("namespace", str, None)))
        sec.finish()
    if not listen:
        listen.append(Listen("127.0.0.1", 5353))

    upstreams: list[Upstream] = []
    raw_up = top.data.get("upstreams")
    if raw_up == "system" or raw_up is None:
        top.raw("upstreams")
        upstreams.extend(system_upstreams())
        if not upstreams:
            raise top.error("upstreams", "no nameserver found in /etc/resolv.conf; list upstreams")
    else:
        for key, line, item in top.items("upstreams"):
            sec = _Section(name, item, key, line)
            address = _address(name, sec.line_of("address"), sec.key("address"), sec.raw("address"))
            upstreams.append(Upstream(address, _port(sec, 53)))
            sec.finish()
        if not upstreams:
            raise top.error("upstreams", "at least one upstream is needed")

    det_sec = top.section("detection")
    default_mode = det_sec.choice("mode", DETECTION_MODES, "observe")
    raw_default_thresholds = dict(det_sec.data.get("thresholds") or {})
    default_detection = Detection(
        default_mode, settings_from(name, det_sec.section("thresholds"), raw_default_thresholds)
    )
    det_sec.finish()

    namespaces: dict[str, Namespace] = {}
    ns_top = top.section("namespaces")
    for ns_name in list(ns_top.data):
        sec = ns_top.section(ns_name)
        clients = tuple(
            _network(name, line, key, item) for key, line, item in sec.items("clients")
        )
        allow = tuple(_check_name(name, line, key, item) for key, line, item in sec.items("allow"))
        rpz: list[Path] = []
        for key, line, item in sec.items("rpz"):
            if not isinstance(item, str):
                raise ConfigError(name, line, key, f"must be a file path, not {item!r}")
            zone_path = (base_dir / item).resolve()
            if not zone_path.is_file():
                raise ConfigError(name, sec.line_of("rpz"), key, f"no such RPZ zone file: {zone_path}")
            rpz.append(zone_path)
            files.append(zone_path)
        detection = default_detection
        if sec.has("detection"):
            dsec = sec.section("detection")
            if dsec.has("thresholds"):
                merged = dict(raw_default_thresholds)
                merged.update(dsec.data["thresholds"] or {})
                dsec.used.add("thresholds")
                thresholds = settings_from(name, dsec.section("thresholds"), merged)
            else:
                thresholds = default_detection.thresholds
            mode = dsec.choice("mode", DETECTION_MODES, default_detection.mode)
            dsec.finish()
            detection = Detection(mode, thresholds)
        namespaces[ns_name] = Namespace(
            name=ns_name,
            clients=clients,
            mode=sec.choice("mode", MODES, "enforce"),
            allow=allow,
            rpz=tuple(rpz),
            deny_action=sec.choice("deny_action", DENY_ACTIONS, "nxdomain"),
            detection=detection,
            line=sec.line,
        )
        sec.finish()
    ns_top.used.update(ns_top.data)

    for lst in listen:
        if lst.namespace is not None and lst.namespace not in namespaces:
            raise ConfigError(name, top.line_of("listen"), "listen.namespace", f"no namespace {lst.namespace!r}")
    unknown = top.get("unknown_clients", str, "refuse")
    if unknown != "refuse" and unknown not in namespaces:
        raise top.error("unknown_clients", f"must be 'refuse' or a namespace name, not {unknown!r}")

    cache_sec = top.section("cache")
    cache = Cache(
        max_entries=cache_sec.get("max_entries", int, 100_000),
        max_ttl=cache_sec.get("max_ttl", int, 86_400),
        negative_ttl=cache_sec.get("negative_ttl", int, 3_600),
    )
    if cache.max_entries < 0:
        raise cache_sec.error("max_entries", "must be 0 (off) or more")
    cache_sec.finish()

    state_sec = top.section("state")
    state = State(
        backend=state_sec.choice("backend", STATE_BACKENDS, "memory"),
        url=state_sec.get("url", str, "redis://127.0.0.1:6379/0"),
        max_pairs=state_sec.positive("max_pairs", int, 100_000),
        max_names=state_sec.positive("max_names", int, 200_000),
    )
    state_sec.finish()

    sinks: list[Sink] = []
    for key, line, item in top.items("alerts"):
        sec = _Section(name, item, key, line)
        sink_type = sec.choice("type", SINK_TYPES, "")
        options = {k: v for k, v in sec.data.items() if k != "type"}
        if sink_type == "jsonl":
            target = options.get("path", "-")
            if target != "-":
                options["path"] = str((base_dir / str(target)).resolve())
        sinks.append(Sink(sink_type, options, name, sec.line))

    admin: Admin | None = None
    if top.has("admin"):
        asec = top.section("admin")
        if asec.data:
            admin = Admin(
                _address(name, asec.line_of("address"), asec.key("address"), asec.raw("address", "127.0.0.1")),
                _port(asec, 9153),
            )
        asec.finish()

    config = Config(
        path=name,
        listen=tuple(listen),
        upstreams=tuple(upstreams),
        namespaces=namespaces,
        unknown_clients=unknown,
        upstream_timeout=top.positive("upstream_timeout", float, 1.0),
        servfail_after=top.positive("servfail_after", float, 2.5),
        cname_check=top.choice("cname_check", ("log", "strict"), "log"),
        cache=cache,
        state=state,
        alerts=tuple(sinks),
        policy_alert_window=top.positive("policy_alert_window", float, 60.0),
        tcp_idle_timeout=top.positive("tcp_idle_timeout", float, 10.0),
        tcp_max_connections=top.positive("tcp_max_connections", int, 256),
        learn_max_records=top.positive("learn_max_records", int, 100_000),
        decision_memo_size=top.positive("decision_memo_size", int, 100_000),
        admin=admin,
        workers=top.positive("workers", int, 1),
        files=tuple(files),
    )
    top.finish()
    return config


def bundled_config_path() -> Path:
    """The example policy shipped in ``zones/``, used when no --config is given."""
    beside = Path(__file__).resolve().parent.parent / "zones" / "default.yaml"
    if beside.is_file():
        return beside
    spec = importlib.util.find_spec("zones")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "default.yaml"
        if candidate.is_file():
            return candidate
    raise ConfigError("zones/default.yaml", 0, "", "the bundled example policy is not installed")


def learn_all(upstreams: tuple[Upstream, ...] = ()) -> Config:
    """Replay's default: every client in namespace ``default`` with mode ``learn``."""
    settings_from = _settings_factory()
    sec = _Section("<default>", None, "detection", 0)
    detection = Detection("observe", settings_from("<default>", sec, {}))
    return Config(
        path="<default>",
        listen=(),
        upstreams=upstreams,
        namespaces={"default": Namespace("default", mode="learn", detection=detection)},
        unknown_clients="default",
    )
