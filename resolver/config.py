"""Typed configuration, validated once at load.

Every error names the file, the line and the key, e.g.
``zones/agents.yaml:12: namespaces.agents.mode: must be one of learn, observe, enforce``.
Each section below is a frozen dataclass: a field's default is written once,
beside it, and its rule in ``Annotated`` metadata (resolver/schema.py turns
them into one pydantic validator). The hot path only ever sees these frozen
dataclasses; nothing is validated again after load.

To add a key: add a field to its section with its default and, in
``Annotated``, the rule that checks it (``Kind``, ``Positive``, ``Choice``,
``ListOf``, ``Rule`` from resolver/schema.py). Unknown keys, "did you mean",
and the file:line: key of every error come with the section.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import yaml
from pydantic import ValidationInfo
from pydantic_core import PydanticCustomError

from heuristics.settings import DetectorSettings
from resolver.schema import (
    WORD_BOOLEANS,
    Choice,
    ConfigError,
    Kind,
    ListOf,
    LocatedDict,
    Positive,
    Rule,
    Section,
    fail,
    kind_name,
    line_and_key,
    of_kind,
    one_of,
    under,
    unknown_key,
    validate,
)

# Re-exported: callers import them from here.
__all__ = ["WORD_BOOLEANS", "ConfigError", "LocatedDict", "kind_name", "unknown_key"]

MODES = ("learn", "observe", "enforce")
DETECTION_MODES = ("off", "observe", "enforce")
DETECTION_ALIASES = {"no": "off", "false": "off", "False": "off"}  # "on"/"yes" stay errors: observe or enforce?
DENY_ACTIONS = ("nxdomain", "nodata", "refused", "drop")
SINK_TYPES = ("jsonl", "webhook", "alertmanager", "redis_stream", "falco", "syslog")
STATE_BACKENDS = ("memory", "redis")
UNDECLARED_ACTIONS = ("quarantine", "alert")
# A config or RPZ zone file larger than this is refused before it is parsed: a mistaken
# path (a disk image, a log) would otherwise be read whole into memory. The largest
# public RPZ feeds are a few tens of MB.
MAX_FILE_BYTES = 128 << 20

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# -- rules: each returns the value to keep or fails with the message a user reads --------------


def _network(text: Any, _info: ValidationInfo | None = None) -> IPNetwork:
    try:
        return ipaddress.ip_network(str(text))
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(str(text), strict=False)
    except ValueError:
        fail(f"not an IP address or prefix: {text!r}")
    # 127.0.0.1/8 is almost always a typo for one of two things; naming both beats guessing.
    host = ipaddress.ip_interface(str(text)).ip
    fail(f"{text} has host bits set: write {loose} for the whole prefix, "
         f"or {host}/{host.max_prefixlen} for one address")


def _address(text: Any) -> str:
    try:
        return str(ipaddress.ip_address(str(text)))
    except ValueError:
        fail(f"not an IP address: {text!r}")


def _port(value: Any) -> int:
    port: int = of_int(value)
    if not 0 <= port <= 65535:
        fail(f"must be 0..65535, not {port}")
    return port


def of_int(value: Any) -> int:
    """An int, not a bool."""
    return int(of_kind(value, int))


def _check_name(path: str, line: int, key: str, text: Any) -> str:
    """Validate an allowlist entry outside a config file; ConfigError names ``path:line: key``."""
    try:
        return _allow_entry(text)
    except PydanticCustomError as exc:
        raise ConfigError(path, line, key, str((exc.context or {})["message"])) from None


def _allow_entry(text: Any, _info: ValidationInfo | None = None) -> str:
    """An allowlist entry: a name, optionally with a leading ``*.``.

    Only a ``*.`` written first makes a wildcard; ``\\042`` is a label's literal
    ``*`` (and ``\\.`` a '.' inside a label), so every name has an exact entry.
    """
    if not isinstance(text, str) or not text:
        fail(f"must be a domain name, not {text!r}")
    import dns.exception
    import dns.name

    body = text[2:] if text.startswith("*.") else text
    if "*" in body:
        fail(f"a wildcard may only be the first label: {text!r}")
    try:
        dns.name.from_text(body)
    except dns.exception.DNSException as exc:
        fail(f"not a domain name: {text!r} ({exc})")
    return _relative(text).lower() or "."


def _relative(text: str) -> str:
    """``text`` without the dot that ends an absolute name; a trailing ``\\.`` is the last label's octet."""
    if not text.endswith("."):
        return text
    stem = text[:-1]
    escapes = len(stem) - len(stem.rstrip("\\"))
    return text if escapes % 2 else stem


def _zone(text: Any, info: ValidationInfo | None = None) -> str:
    zone = _allow_entry(text, info)
    if zone.startswith("*."):
        fail(f"a zone covers the names below it; drop the '*.': {zone!r}")
    return zone


def _search_domain(text: Any, info: ValidationInfo | None = None) -> str:
    if isinstance(text, str) and text.startswith("*"):
        fail(f"a search domain is a name, not a wildcard: {text!r}")
    return _allow_entry(text, info)


def _kube_name(text: Any, _info: ValidationInfo | None = None) -> str:
    """A Kubernetes namespace name (RFC 1123 label)."""
    if not isinstance(text, str) or not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", text):
        fail(f"not a Kubernetes namespace name: {text!r}")
    return text


def _pod_labels(value: Any) -> tuple[tuple[str, str], ...]:
    """``pod_labels: {team: agents}``: label -> value, all of which a pod must carry."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        fail(f"must be a mapping of label: value, not {value!r}")
    out: list[tuple[str, str]] = []
    for label, wanted in value.items():
        if not isinstance(label, str) or not label or not isinstance(wanted, str):
            fail(f"a label and its value must be strings, not {label!r}: {wanted!r}")
        out.append((label, wanted))
    return tuple(sorted(out))


def _context(info: ValidationInfo) -> dict[str, Any]:
    """What :func:`load` passes to the rules: ``base_dir`` (relative paths) and ``path`` (the file)."""
    context: dict[str, Any] = info.context or {}
    return context


def _rpz_file(item: Any, info: ValidationInfo) -> Path:
    if not isinstance(item, str):
        fail(f"must be a file path, not {item!r}")
    zone_path: Path = (_context(info)["base_dir"] / item).resolve()
    if not zone_path.exists():
        fail(f"no such RPZ zone file: {zone_path}")
    if zone_path.is_dir():
        fail(f"RPZ zone file {zone_path} is a directory")
    if not zone_path.is_file():
        fail(f"RPZ zone file {zone_path} is not a regular file ({_file_kind(zone_path)})")
    return zone_path


def _file_kind(path: Path) -> str:
    """What a path that is not a regular file or a directory is, in words."""
    kinds = ((Path.is_char_device, "a character device"), (Path.is_block_device, "a block device"),
             (Path.is_fifo, "a named pipe"), (Path.is_socket, "a socket"))
    return next((kind for test, kind in kinds if test(path)), "not a file")


def read_text(path: Path, key: str = "", limit: int = MAX_FILE_BYTES) -> str:
    """A config or RPZ zone file's text, at most ``limit`` bytes of UTF-8.

    Raises ConfigError naming the file (and ``key``): unreadable, too large, or
    not UTF-8, then with the line and column of the first byte that is not.
    Line ends are read as ``Path.read_text`` reads them.
    """
    name = str(path)
    try:
        with path.open("rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise ConfigError(name, 0, key, f"cannot read: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise ConfigError(name, 0, key, f"larger than {limit >> 20} MiB: refused (is it the right file?)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - data.rfind(b"\n", 0, exc.start)
        raise ConfigError(name, line, key, f"not UTF-8 (byte 0x{data[exc.start]:02x} at column {column})") from None
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _duration(value: Any) -> float:
    """Seconds from a number or a ``90s`` / ``15m`` / ``1h`` / ``1d`` string; greater than 0."""
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and value[:-1].replace(".", "", 1).isdigit() and value[-1:] in _DURATION_UNITS:
        seconds = float(value[:-1]) * _DURATION_UNITS[value[-1]]
    if seconds is None or seconds <= 0:
        fail(f"must be a duration greater than 0 (seconds, or 90s, 15m, 1h, 1d), not {value!r}")
    return seconds


def _at_least_zero(kind: type, meaning: str) -> Any:
    def check(value: Any) -> Any:
        value = of_kind(value, kind)
        if value < 0:
            fail(f"must be 0 ({meaning}) or more, not {value!r}")
        return value

    return Rule(check)


def _rebinding_mode(value: Any) -> Any:
    return "off" if value is False else value  # YAML 1.1 reads a bare `off` as false


_REBINDING_MODE = Choice(("off", "observe", "enforce"))


def _on_undeclared(raw: Any) -> Any:
    """``on_undeclared: quarantine`` is short for ``{action: quarantine}``; an empty value means the defaults."""
    if raw is None:
        return Undeclared()
    if isinstance(raw, str):
        if raw not in UNDECLARED_ACTIONS:
            fail(f"must be one of {', '.join(UNDECLARED_ACTIONS)}, not {raw!r}")
        return Undeclared(raw)
    return raw


def _sink(item: Any, info: ValidationInfo) -> Sink:
    if item is None:
        item = {}
    if not isinstance(item, dict):
        fail("must be a mapping")
    sink_type = str(under("type", lambda v: one_of(v, SINK_TYPES), item.get("type", "")))
    options = {k: v for k, v in item.items() if k != "type"}
    if sink_type == "jsonl":  # the other sinks check their options where they are built (check_sinks)
        target = under("path", lambda v: of_kind(v, str), options.get("path", "-"))
        for key in options:
            if key != "path":
                fail(unknown_key(key, ("type", "path")), key=str(key))
        if target != "-":
            options["path"] = str((_context(info)["base_dir"] / str(target)).resolve())
    return Sink(sink_type, options, _context(info)["path"], getattr(item, "line", 0))


def _resolved(value: Any, info: ValidationInfo) -> Any:
    value = of_kind_or_none(value, str)
    return None if value is None else (_context(info)["base_dir"] / value).resolve()


def of_kind_or_none(value: Any, kind: type) -> Any:
    """``None``, or a value of ``kind``."""
    return None if value is None else of_kind(value, kind)


def _kubeconfig(value: Any, info: ValidationInfo) -> str | None:
    path = _resolved(value, info)
    if path is None:
        return None
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        fail(f"no such file: {resolved}")
    return str(resolved)


# -- sections ----------------------------------------------------------------------------------

Int = Annotated[int, Kind(int)]
Number = Annotated[float, Kind(float)]
Text = Annotated[str, Kind(str)]
Port = Annotated[int, Rule(_port)]
Address = Annotated[str, Rule(_address)]
Names = Annotated[tuple[str, ...], ListOf(_allow_entry)]
Networks = Annotated[tuple[IPNetwork, ...], ListOf(_network)]


@dataclass(frozen=True, slots=True)
class Listen(Section):
    address: Address = "127.0.0.1"
    port: Port = 53
    namespace: Annotated[str | None, Kind(str, optional=True)] = None


@dataclass(frozen=True, slots=True)
class Upstream(Section):
    NOT_KEYS: ClassVar[tuple[str, ...]] = ("source",)
    address: Address
    port: Port = 53
    # DNS 0x20: the query name's letters in random case, a reply's question checked
    # octet for octet; false for an upstream that does not echo the case it was asked in
    randomize_case: Annotated[bool, Kind(bool)] = True
    source: str = field(default="", compare=False)  # where it was configured, for the startup log

    @property
    def label(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


if TYPE_CHECKING:
    _Thresholds = Any  # what the hot path has always been told: settings, or None where built in code
else:
    _Thresholds = DetectorSettings | None


def _a_mapping(value: Any) -> Any:
    if value is not None and not isinstance(value, dict):
        fail("must be a mapping")
    return value


@dataclass(frozen=True, slots=True)
class Detection(Section):
    mode: Annotated[str, Choice(DETECTION_MODES, DETECTION_ALIASES)] = "observe"
    # None only where built in code (Detection()); a loaded config always has settings
    thresholds: Annotated[_Thresholds, Rule(_a_mapping)] = None


# Where an external name's address must never point (docs/operations.md, "Rebinding").
REBINDING_MODES = ("off", "observe", "enforce")
REBINDING_RANGES = (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",  # RFC 1918
    "127.0.0.0/8", "::1/128",  # loopback
    "169.254.0.0/16", "fe80::/10",  # link-local, with the cloud metadata address 169.254.169.254
    "100.64.0.0/10",  # CGNAT (RFC 6598)
    "0.0.0.0/8", "::/128",  # "this network", unspecified
    "fc00::/7",  # unique local, with fd00:ec2::254 (metadata over IPv6)
    "224.0.0.0/4", "ff00::/8",  # multicast
    "255.255.255.255/32",  # limited broadcast
    "240.0.0.0/4",  # reserved (RFC 1112), never routed
    "192.0.0.0/24",  # IETF protocol assignments (DS-Lite, NAT64 discovery ...)
    "fec0::/10",  # site-local, deprecated but still routed inside some networks
    "64:ff9b:1::/48",  # local-use NAT64 (RFC 8215): a translator inside the network
)
INTERNAL_ZONES = ("cluster.local", "svc", "pod")


@dataclass(frozen=True, slots=True)
class Rebinding(Section):
    """The rebinding/SSRF guard of a namespace: answers for outside names must not point inside."""

    mode: Annotated[str, _REBINDING_MODE, Rule(_rebinding_mode)] = "enforce"  # rules run last to first
    internal_zones: Annotated[tuple[str, ...], ListOf(_zone)] = INTERNAL_ZONES
    ranges: Networks = tuple(ipaddress.ip_network(r) for r in REBINDING_RANGES)


@dataclass(frozen=True, slots=True)
class RateLimit(Section):
    """Per-client token bucket over UDP (``qps`` 0 is off); see resolver/pipeline/ratelimit.py."""

    qps: Annotated[float, _at_least_zero(float, "off")] = 0.0  # tokens added per second per client address
    burst: Annotated[int, _at_least_zero(int, "2 x qps")] = 0  # bucket size; 0 means 2 x qps
    # every slip-th limited query gets TC=1 (retry over TCP), the others are dropped; 0 never
    slip: Annotated[int, _at_least_zero(int, "drop every limited query")] = 2


@dataclass(frozen=True, slots=True)
class Undeclared(Section):
    """``on_undeclared``: what happens to a client that asks for a name its namespace does not allow."""

    # quarantine (the client, every query denied) | alert (critical alert only)
    action: Annotated[str, Choice(UNDECLARED_ACTIONS)] = "quarantine"
    duration: Annotated[float, Rule(_duration)] = 600.0  # seconds a quarantine lasts
    # search domains; None: the detection's cluster_domains
    search: Annotated[tuple[str, ...] | None, ListOf(_search_domain)] = None


@dataclass(frozen=True, slots=True)
class Namespace(Section):
    NOT_KEYS: ClassVar[tuple[str, ...]] = ("name", "line")
    name: str = ""  # the key under namespaces:
    clients: Networks = ()
    mode: Annotated[str, Choice(MODES)] = "enforce"
    allow: Names = ()
    rpz: Annotated[tuple[Path, ...], ListOf(_rpz_file)] = ()
    deny_action: Annotated[str, Choice(DENY_ACTIONS)] = "nxdomain"
    detection: Detection = field(default_factory=Detection)
    rebinding: Rebinding = field(default_factory=Rebinding)
    line: int = 0
    # pods of these serve here; empty: the namespace's own name
    kubernetes_namespaces: Annotated[tuple[str, ...], ListOf(_kube_name)] = ()
    # serve only the pods carrying all these labels (with kubernetes_namespaces: only there)
    pod_labels: Annotated[tuple[tuple[str, str], ...], Rule(_pod_labels)] = ()
    rate_limit: RateLimit = field(default_factory=RateLimit)
    on_undeclared: Annotated[Undeclared | None, Rule(_on_undeclared)] = None


def _ipv6_prefix(value: Any) -> int:
    length = of_int(value)
    if not 32 <= length <= 128:
        fail(f"must be a prefix length from 32 to 128 (128: each address a client; 64: a host's own /64), "
             f"not {value!r}")
    return length


def _no_negative_entries(value: Any) -> int:
    if of_int(value) < 0:
        fail("must be 0 (off) or more")
    return int(value)


@dataclass(frozen=True, slots=True)
class Cache(Section):
    max_entries: Annotated[int, Rule(_no_negative_entries)] = 100_000
    max_ttl: Int = 86_400
    negative_ttl: Int = 3_600


@dataclass(frozen=True, slots=True)
class State(Section):
    backend: Annotated[str, Choice(STATE_BACKENDS)] = "memory"
    url: Text = "redis://127.0.0.1:6379/0"
    max_pairs: Annotated[int, Positive(int)] = 100_000  # (namespace|client, domain) window pairs kept by the detector
    max_names: Annotated[int, Positive(int)] = 200_000  # names remembered as already seen (information budget)
    cluster: Annotated[bool, Kind(bool)] = False  # url names a node of a Redis Cluster (yes/no/on/off too)


@dataclass(frozen=True, slots=True)
class Sink:
    """One ``alerts`` entry; its options are checked by resolver/operations/sinks.py, which knows each type."""

    type: str
    options: dict[str, Any]
    path: str
    line: int


@dataclass(frozen=True, slots=True)
class Admin(Section):
    NOT_KEYS: ClassVar[tuple[str, ...]] = ("line",)
    address: Address = "127.0.0.1"
    port: Port = 9153
    # bearer token for POST /reload; DNSGATE_ADMIN_TOKEN wins over it
    token_file: Annotated[Path | None, Rule(_resolved)] = None
    line: int = 0  # of the admin key, for errors found when the token file is read


@dataclass(frozen=True, slots=True)
class KubernetesIdentity(Section):
    """Pod identity from a watch on Pods; ``kubeconfig`` None means the in-cluster service account."""

    kubeconfig: Annotated[str | None, Rule(_kubeconfig)] = None
    context: Annotated[str | None, Kind(str, optional=True)] = None
    # seconds a watch runs before it is renewed (server side timeoutSeconds)
    watch_timeout: Annotated[int, Positive(int)] = 300


@dataclass(frozen=True, slots=True)
class Identity(Section):
    kubernetes: Annotated[KubernetesIdentity | None, Rule(lambda v: {} if v is None else v)] = None


def _upstreams(value: Any) -> Any:
    """``system`` (or nothing): the nameservers of /etc/resolv.conf; else a list of at least one."""
    if value in ("system", None):
        found = system_upstreams()
        if not found:
            fail("no nameserver found in /etc/resolv.conf; list upstreams")
        return found
    if not isinstance(value, list):
        fail("must be a list")
    if not value:
        fail("at least one upstream is needed")
    return value


def _namespaces(value: Any) -> Any:
    if value is None:
        return {}
    if not isinstance(value, dict):
        fail("must be a mapping")
    return value


@dataclass(frozen=True, slots=True)
class Config(Section):
    NOT_KEYS: ClassVar[tuple[str, ...]] = ("path", "files", "upstreams_line")
    path: str = ""
    listen: Annotated[tuple[Listen, ...], ListOf()] = ()
    upstreams: Annotated[tuple[Upstream, ...], Rule(_upstreams)] = ()
    namespaces: Annotated[dict[str, Namespace], Rule(_namespaces)] = field(default_factory=dict)
    unknown_clients: Text = "refuse"
    upstream_timeout: Annotated[float, Positive(float)] = 1.0  # per attempt
    # whole-query bound: SERVFAIL when no upstream answered by then
    servfail_after: Annotated[float, Positive(float)] = 2.5
    cname_check: Annotated[str, Choice(("log", "strict"))] = "log"
    cache: Cache = field(default_factory=Cache)
    state: State = field(default_factory=State)
    alerts: Annotated[tuple[Sink, ...], ListOf(_sink)] = ()
    policy_alert_window: Annotated[float, Positive(float)] = 60.0
    tcp_idle_timeout: Annotated[float, Positive(float)] = 10.0
    tcp_max_connections: Annotated[int, Positive(int)] = 256
    tcp_max_connections_per_client: Annotated[int, Positive(int)] = 16
    # bytes of replies a TCP client has not read before dnsgate stops reading it
    tcp_max_unsent: Annotated[int, Positive(int)] = 65_536
    rate_limit_clients: Annotated[int, Positive(int)] = 100_000  # client addresses with a token bucket
    # IPv6 client addresses of one network of this length are one client (rate limit, TCP share,
    # client quarantine, detector budgets), unless the client is a known pod; 128: each address
    ipv6_client_prefix: Annotated[int, Rule(_ipv6_prefix)] = 128
    learn_max_records: Annotated[int, Positive(int)] = 100_000
    decision_memo_size: Annotated[int, Positive(int)] = 100_000
    admin: Annotated[Admin | None, Rule(lambda v: None if v is None or v == {} else v)] = None  # {}: no admin
    workers: Annotated[int, Positive(int)] = 1
    identity: Identity = field(default_factory=Identity)
    # drop to this user after binding (when started as root)
    user: Annotated[str | None, Kind(str, optional=True)] = None
    files: tuple[Path, ...] = ()  # every file the config was built from, for reload watching
    upstreams_line: int = 0  # where `upstreams:` is written (0: left out), for messages
    # what a namespace inherits where it does not say otherwise
    detection: Detection = field(default_factory=Detection)
    rate_limit: RateLimit = field(default_factory=RateLimit)
    rebinding: Rebinding = field(default_factory=Rebinding)


# -- loading -----------------------------------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """A YAML loader that remembers the line of every mapping key and refuses duplicate keys.

    Only ``true`` and ``false`` are booleans (as in YAML 1.2): ``off``, ``on``,
    ``yes`` and ``no`` stay words, so ``detection: {mode: off}`` means what it says.
    """


_BOOL_TAG = "tag:yaml.org,2002:bool"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


class _DuplicateKey(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line, self.message = line, message


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LocatedDict:
    loader.flatten_mapping(node)
    out = LocatedDict()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    for key_node, value_node in node.value:
        key = str(loader.construct_object(key_node, deep=True))
        line = key_node.start_mark.line + 1
        if key in out.key_lines:
            raise _DuplicateKey(line, f"duplicate key {key!r} (first at line {out.key_lines[key]}): "
                                      "YAML would keep only the last one")
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = line
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load(path: str | Path, *, text: str | None = None) -> Config:
    """Load and validate a config file; raise ConfigError naming file, line and key."""
    path = Path(path)
    name = str(path)
    if text is None:
        text = read_text(path)
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    except _DuplicateKey as exc:
        raise ConfigError(name, exc.line, "", exc.message) from None
    except yaml.YAMLError as exc:
        line, message = _yaml_problem(exc)
        raise ConfigError(name, line, "", f"not valid YAML: {message}") from None
    if data is None:
        raise ConfigError(name, 1, "", "the file is empty (or only comments): a config needs at least "
                                       "upstreams: and namespaces:")
    return _build(name, path.resolve().parent, data)


def read_document(text: str) -> Any:
    """The YAML document as plain dicts and lists, read as :func:`load` reads it (``off`` stays a word).

    For tools that rewrite a config (``propose``): a safe_load would turn an
    unquoted ``mode: off`` into ``false`` on the way through.
    """
    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    return plain(yaml.load(text, Loader=_Loader))  # noqa: S506 - SafeLoader subclass


def _yaml_problem(exc: yaml.YAMLError) -> tuple[int, str]:
    """The line a person should look at, and what is wrong there.

    PyYAML notices an unclosed ``[``, ``{`` or quote only where it runs into the
    next thing, often lines later; the mark of what was left open is the line to fix.
    """
    problem = str(getattr(exc, "problem", "") or exc)
    problem_mark = getattr(exc, "problem_mark", None)
    context = str(getattr(exc, "context", "") or "")
    context_mark = getattr(exc, "context_mark", None)
    line = problem_mark.line + 1 if problem_mark else 0
    unclosed = ("flow mapping", "flow sequence", "quoted scalar")
    if context_mark is not None and any(what in context for what in unclosed):
        opened = context.split("a ", 1)[-1]
        return context_mark.line + 1, f"this {opened} is not closed ({problem}, line {line})"
    return line, problem


# Rank of a top-level key's errors: the order a person reads the file in, so when
# several things are wrong the first one named is the one the defaults flow from.
_ORDER = ("listen", "upstreams", "detection", "rate_limit", "rebinding", "namespaces", "unknown_clients",
          "cache", "state", "alerts", "admin", "identity")


# Within a namespace, likewise: what it serves, then how.
_NAMESPACE_ORDER = ("clients", "allow", "kubernetes_namespaces", "pod_labels", "rpz", "detection", "rate_limit", "mode",
                    "deny_action", "rebinding", "on_undeclared")


def _ranking(data: LocatedDict) -> Callable[[tuple[Any, ...]], tuple[int, int, int, int]]:
    """Sort key of an error's location: which of several problems is named (the first in reading order)."""
    namespaces = list(data.get("namespaces") or ()) if isinstance(data.get("namespaces"), dict) else []

    def rank(loc: tuple[Any, ...]) -> tuple[int, int, int, int]:
        if not loc:
            return len(_ORDER) + 1, 0, 0, 0  # unknown top-level keys: reported after every value
        top = _ORDER.index(loc[0]) if loc[0] in _ORDER else len(_ORDER)
        if loc[0] != "namespaces" or len(loc) < 2 or loc[1] not in namespaces:
            return top, 0, 0, 0
        if len(loc) == 2:
            return top, namespaces.index(loc[1]), -1, 0  # the namespace itself: not a mapping
        own = _NAMESPACE_ORDER.index(loc[2]) if loc[2] in _NAMESPACE_ORDER else len(_NAMESPACE_ORDER)
        # A namespace's own thresholds are merged over the top level's before its mode is read.
        below = 0 if loc[2] != "detection" or loc[3:4] == ("thresholds",) else 1
        return top, namespaces.index(loc[1]), own, below

    return rank


def _section(data: LocatedDict, key: str) -> Any:
    """``data[key]`` with ``None`` read as an empty mapping that knows its line."""
    value = data.get(key)
    if value is None:
        value = LocatedDict()
        value.line = data.key_lines.get(key, data.line)
        value.key_lines = {}
    return value


def _over(base: Any, own: Any) -> Any:
    """``own``'s keys over ``base``'s, each keeping the line it was written on."""
    if not isinstance(base, LocatedDict) or not isinstance(own, LocatedDict):
        return own
    merged = LocatedDict({**base, **own})
    merged.line = own.line
    merged.key_lines = {**base.key_lines, **own.key_lines}
    return merged


def _with_words(thresholds: Any) -> Any:
    """``yes``/``no``/``on``/``off`` for the detector's true/false settings, which from_mapping keeps strict."""
    if not isinstance(thresholds, dict):
        return thresholds
    flags = DetectorSettings.flags()
    for key, value in list(thresholds.items()):
        if key in flags and isinstance(value, str) and value.lower() in WORD_BOOLEANS:
            thresholds[key] = WORD_BOOLEANS[value.lower()]
    return thresholds


def _detection(raw: Any) -> Any:
    if isinstance(raw, LocatedDict):
        raw["thresholds"] = _with_words(_section(raw, "thresholds"))
    return raw


def _inherit(data: LocatedDict) -> None:
    """Write what namespaces inherit from the top level into each namespace's own mapping."""
    top_detection = data["detection"] = _detection(_section(data, "detection"))
    top_rate_limit = _section(data, "rate_limit")
    top_rebinding = _section(data, "rebinding")
    namespaces = data.get("namespaces")
    if not isinstance(namespaces, LocatedDict):
        return
    for ns_name in list(namespaces):
        ns = _section(namespaces, ns_name)
        namespaces[ns_name] = ns
        if not isinstance(ns, LocatedDict):
            continue
        own = ns.get("detection")
        if isinstance(own, LocatedDict) and isinstance(top_detection, LocatedDict):
            if "thresholds" in own:
                own["thresholds"] = _over(top_detection["thresholds"], _with_words(_section(own, "thresholds")))
            ns["detection"] = _over(top_detection, own)
        elif own is None:
            ns["detection"] = top_detection
        if "rate_limit" in ns:
            ns["rate_limit"] = _over(top_rate_limit, ns["rate_limit"] or _section(ns, "rate_limit"))
        else:
            ns["rate_limit"] = top_rate_limit
        ns["rebinding"] = _over(top_rebinding, _section(ns, "rebinding"))


def _build(name: str, base_dir: Path, data: Any) -> Config:
    if not isinstance(data, LocatedDict):  # a list or a scalar at the top
        raise ConfigError(name, 1, "", "must be a mapping")
    upstreams_line = data.key_lines.get("upstreams", 0)  # 0: left out
    data.setdefault("upstreams", None)  # no upstreams: the system's (its rule runs on None, not on a default)
    system = data["upstreams"] in ("system", None)
    upstream_items: list[Any] = data["upstreams"] if isinstance(data["upstreams"], list) else []
    for i, item in enumerate(upstream_items):
        if item is None:
            upstream_items[i] = item = LocatedDict()
            item.line, item.key_lines = data.key_lines.get("upstreams", data.line), {}
        if isinstance(item, dict):
            item.setdefault("address", None)  # a missing address reads as "not an IP address: None"
    _inherit(data)
    config = validate(Config, data, name, context={"base_dir": base_dir, "path": name}, rank=_ranking(data))

    def error(loc: list[str | int], message: str) -> ConfigError:
        line, key = line_and_key(data, loc, 1)
        return ConfigError(name, line, key, message)

    listen = config.listen or (Listen("127.0.0.1", 5353),)
    upstreams = config.upstreams
    if not system:
        upstreams = tuple(
            dataclasses.replace(up, source=f"{name}:{line_and_key(data, ['upstreams', i], 1)[0]}")
            for i, up in enumerate(config.upstreams)
        )
    refuse_forwarding_loop(name, line_and_key(data, ["upstreams"], 1)[0], listen, upstreams)

    namespaces: dict[str, Namespace] = {}
    files: list[Path] = [Path(name)]
    prefix_owner: dict[IPNetwork, tuple[str, int]] = {}
    for ns_name, ns in config.namespaces.items():
        for i, prefix in enumerate(ns.clients):
            loc: list[str | int] = ["namespaces", ns_name, "clients", i]
            line = line_and_key(data, loc, 1)[0]
            if prefix in prefix_owner and prefix_owner[prefix][0] != ns_name:
                other, other_line = prefix_owner[prefix]
                raise error(loc, f"{prefix} is already a client prefix of namespace "
                                 f"{other!r} (line {other_line}): a prefix belongs to one namespace")
            prefix_owner[prefix] = (ns_name, line)
            if prefix.version == 6 and prefix.prefixlen > config.ipv6_client_prefix:
                raise error(loc, f"{prefix} is narrower than ipv6_client_prefix ({config.ipv6_client_prefix}): "
                                 f"one client's /{config.ipv6_client_prefix} would reach beyond the namespace; "
                                 f"list the whole /{config.ipv6_client_prefix}, or raise ipv6_client_prefix")
        files.extend(ns.rpz)
        namespaces[ns_name] = dataclasses.replace(ns, name=ns_name, line=data["namespaces"][ns_name].line)

    for lst in listen:
        if lst.namespace is not None and lst.namespace not in namespaces:
            raise ConfigError(name, data.key_lines.get("listen", data.line), "listen.namespace",
                              f"no namespace {lst.namespace!r}")
    if config.unknown_clients != "refuse" and config.unknown_clients not in namespaces:
        raise error(["unknown_clients"], f"must be 'refuse' or a namespace name, not {config.unknown_clients!r}")
    admin = config.admin
    if admin is not None:
        admin = dataclasses.replace(admin, line=line_and_key(data, ["admin", "token_file"], 1)[0])
    return dataclasses.replace(
        config, path=name, listen=listen, upstreams=upstreams, namespaces=namespaces, admin=admin,
        user=config.user or None, files=tuple(files), upstreams_line=upstreams_line,
    )


def system_upstreams(resolv_conf: str = "/etc/resolv.conf") -> tuple[Upstream, ...]:
    """The nameservers of resolv.conf, for the embedded default."""
    found: list[Upstream] = []
    try:
        with open(resolv_conf, encoding="utf-8") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    try:
                        address = str(ipaddress.ip_address(parts[1].split("%")[0]))
                        found.append(Upstream(address, source=resolv_conf))
                    except ValueError:
                        continue
    except OSError:
        pass
    return tuple(found)


def _is_local_address(address: str) -> bool:
    """True when this host owns the address: it can bind a socket to it."""
    import socket

    ip = ipaddress.ip_address(address)
    if ip.is_loopback or ip.is_unspecified:
        return True
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((address, 0))
    except OSError:
        return False
    return True


def own_listener(listen: tuple[Listen, ...], upstreams: tuple[Upstream, ...]) -> tuple[Upstream, Listen] | None:
    """The first upstream that is one of dnsgate's own listeners, with that listener."""
    for up in upstreams:
        for lst in listen:
            if up.port != lst.port:
                continue
            listen_ip, up_ip = ipaddress.ip_address(lst.address), ipaddress.ip_address(up.address)
            if up_ip == listen_ip:
                return up, lst
            # A wildcard listener receives what is sent to any address of this host
            # (an IPv6 wildcard takes IPv4 too, unless the socket is IPv6-only).
            if listen_ip.is_unspecified and (listen_ip.version == 6 or up_ip.version == 4) \
                    and _is_local_address(up.address):
                return up, lst
    return None


def refuse_forwarding_loop(path: str, line: int, listen: tuple[Listen, ...], upstreams: tuple[Upstream, ...],
                           listen_from: str = "") -> None:
    """Raise ConfigError when an upstream is dnsgate itself: every query would come back forever."""
    found = own_listener(listen, upstreams)
    if found is None:
        return
    up, _listener = found
    where = "" if up.source.startswith(path) else f" (from {up.source})"
    mine = f" {listen_from}" if listen_from else ""
    raise ConfigError(path, line, "upstreams", f"upstream {up.label}{where} is dnsgate's own listener{mine}: "
                                               "queries would loop; list the resolvers to forward to under upstreams:")


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
    detection = Detection("observe", DetectorSettings())
    return Config(
        path="<default>",
        listen=(),
        upstreams=upstreams,
        namespaces={"default": Namespace("default", mode="learn", detection=detection)},
        unknown_clients="default",
    )
