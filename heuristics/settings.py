"""Detector thresholds: typed, validated once, immutable on the hot path.

Each setting's default is written once, on its field; its rule sits in the
``Annotated`` metadata that pydantic v2 validates. The resolver's config embeds
this schema under ``detection.thresholds`` (its errors then name the YAML line);
:meth:`DetectorSettings.from_mapping` validates a plain mapping on its own.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Annotated, Any, NoReturn

from pydantic import BeforeValidator, TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError, core_schema

from .names import wire_of

__all__ = ["DetectorSettings", "SettingsError"]


class SettingsError(ValueError):
    """A detection setting is unknown or has a bad value.

    ``key`` names the offending setting so config loaders can point at its line.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def _fail(key: str | None, message: str) -> NoReturn:
    # The convention of resolver/schema.py: ctx["message"] is read by people, ctx["key"] names a key below.
    ctx: dict[str, Any] = {"message": message}
    if key is not None:
        ctx["key"] = key
    raise PydanticCustomError("setting", "{message}", ctx)


def _flag(raw: Any) -> bool:
    if not isinstance(raw, bool):
        _fail(None, f"expected true or false, got {raw!r}")
    return raw


def _count(raw: Any) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        _fail(None, f"expected an integer, got {raw!r}")
    if raw < 0:
        _fail(None, f"must not be negative, got {raw}")
    return raw


def _positive(raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        _fail(None, f"expected a number, got {raw!r}")
    if raw <= 0:
        _fail(None, f"must be positive, got {raw}")
    return float(raw)


def _list(raw: Any) -> list[Any] | tuple[Any, ...]:
    if isinstance(raw, str) or not isinstance(raw, list | tuple):
        _fail(None, f"expected a list, got {raw!r}")
    return raw


def _domains(raw: Any) -> tuple[str, ...]:
    items = []
    for item in _list(raw):
        if not isinstance(item, str) or not item.strip(". "):
            _fail(None, f"expected domain names, got {item!r}")
        text = item.strip().lower().rstrip(".")
        try:
            wire_of(text)
        except Exception as exc:  # noqa: BLE001 - dnspython raises several types for bad names
            _fail(None, f"not a domain name: {item!r} ({exc})")
        items.append(text)
    return tuple(items)


def _qtypes(raw: Any) -> tuple[int, ...]:
    return tuple(_qtype(item) for item in _list(raw))


def _qtype(item: Any) -> int:
    if isinstance(item, int) and not isinstance(item, bool) and 0 <= item <= 65535:
        return item
    if isinstance(item, str):
        import dns.rdatatype

        try:
            return int(dns.rdatatype.from_text(item))
        except Exception:  # noqa: S110, BLE001 - dnspython raises several types for bad mnemonics
            pass
    _fail(None, f"not a query type: {item!r}")


Flag = Annotated[bool, BeforeValidator(_flag)]
Count = Annotated[int, BeforeValidator(_count)]
Seconds = Annotated[float, BeforeValidator(_positive)]
Ratio = Annotated[float, BeforeValidator(_positive)]
Domains = Annotated[tuple[str, ...], BeforeValidator(_domains)]
QTypes = Annotated[tuple[int, ...], BeforeValidator(_qtypes)]


# Query types that workloads almost never send; tunnels prefer them because the
# answer can carry arbitrary bytes. 10 NULL, 25 KEY, 65399 PRIVATE (iodine).
_RARE_QTYPES = (10, 25, 65399)
# Types whose answers carry text or another name: fine one by one, a channel
# when many distinct names of one domain ask for them. 16 TXT, 15 MX, 5 CNAME, 33 SRV.
_DATA_QTYPES = (16, 15, 5, 33)


@dataclass(frozen=True, slots=True)
class DetectorSettings:
    """Every threshold of the detector, with defaults that need no tuning.

    Build from the resolver's ``detection.thresholds`` mapping with
    :meth:`from_mapping`. Windows: "short" catches bulk tunnels within seconds,
    "long" catches low-and-slow channels over a day.
    """

    # --- exemptions -------------------------------------------------------
    exempt: Domains = ()  # extra domains (suffix match) never scored
    cluster_domains: Domains = ("cluster.local",)
    default_exemptions: Flag = True  # use heuristics/exemptions.txt

    # --- windows ----------------------------------------------------------
    short_window_seconds: Seconds = 60.0
    short_buckets: Count = 6
    long_window_seconds: Seconds = 86400.0
    long_buckets: Count = 24

    # --- information budget (compressed bytes of never-seen subdomain text) -
    client_budget_short_bytes: Count = 1536  # per (client, domain) per short window
    client_budget_long_bytes: Count = 3072  # per (client, domain) per long window
    namespace_budget_short_bytes: Count = 8192  # per (namespace, domain) per short window
    namespace_budget_long_bytes: Count = 3072  # per (namespace, domain) per long window, when concentrated
    compression_context_bytes: Count = 1024  # recent text per domain used as zlib dictionary

    # --- how the information is spread (heuristics/spread.py) ---------------
    slow_budget_bytes: Count = 768  # new text per pair per long window, when spread over time...
    slow_min_buckets: Count = 6  # ... over at least this many long buckets (hours by default)
    fresh_ratio: Ratio = 0.4  # ... in names not re-asked: new names / queries at least this
    spread_clients: Count = 8  # the largest contributors a namespace budget looks at
    concentration: Ratio = 0.5  # their share of the information for the namespace budget to count
    spread_fresh_ratio: Ratio = 0.9  # ... or without it, when new names / queries is at least this
    spread_skip_names: Count = 6  # a domain's first new names, charged to the all-domain meters...
    spread_free_bytes: Count = 24  # ... only beyond this many bytes each (www, _dmarc, DKIM selectors: free)

    # --- name shape -------------------------------------------------------
    encoded_label_min: Count = 10  # shortest label judged as possibly encoded
    entropy_ratio: Ratio = 0.8  # label entropy / expected entropy of random text
    long_label: Count = 40  # label_length: a label at least this long
    encoded_names_short: Count = 8  # distinct encoded names per pair per short window
    encoded_names_long: Count = 40  # ... per long window
    non_ldh_names: Count = 2  # distinct names with non-LDH octets per window
    long_label_names: Count = 5  # distinct names with a long label per window

    # --- rates and types ----------------------------------------------------
    unique_short: Count = 100  # distinct names per (pair, short window)
    rare_qtypes: QTypes = _RARE_QTYPES
    rare_qtype_names: Count = 3  # distinct names with a rare qtype per window
    data_qtypes: QTypes = _DATA_QTYPES
    data_qtype_names_short: Count = 10  # distinct names with a data qtype per short window
    data_qtype_names_long: Count = 200  # ... per long window
    nxdomain_ratio: Ratio = 0.8
    nxdomain_min_responses: Count = 10
    rare_domains_per_hour: Count = 200  # distinct never-seen domains per client per hour
    # never-seen domains one client may ask in the long window before domain_churn is alerted
    # (each costs the detector a pair; keep it under a quarter of max_pairs); 0: off
    churn_domains: Count = 20_000

    # --- decisions ----------------------------------------------------------
    alert_points: Count = 3  # window evidence needed before a verdict is returned
    suppress_seconds: Seconds = 300.0  # same (namespace, domain, reasons) alert once per window
    quarantine_seconds: Seconds = 600.0  # how long the resolver should quarantine a domain

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None) -> DetectorSettings:
        """Validate a ``thresholds`` mapping; unknown keys and bad values raise.

        Lists may be given for tuple settings; qtypes accept numbers or mnemonics
        (``NULL``, ``TXT``, ``TYPE65399``).
        """
        if mapping is None:
            return cls()
        try:
            return _adapter().validate_python(mapping)
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            ctx = error.get("ctx") or {}
            loc = [str(p) for p in error["loc"] if not str(p).startswith("function-")]
            key = str(ctx.get("key") or (loc[0] if loc else "thresholds"))
            raise SettingsError(key, str(ctx.get("message", error["msg"]))) from None

    @classmethod
    def flags(cls) -> frozenset[str]:
        """The settings that take true or false."""
        return frozenset(f.name for f in fields(cls) if isinstance(f.default, bool))

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Callable[[Any], Any]) -> Any:
        """A mapping of known settings, each checked by its rule, then the checks across settings."""

        def read(mapping: Any, inner: Callable[[Any], DetectorSettings]) -> DetectorSettings:
            if not isinstance(mapping, Mapping):
                _fail(None, f"expected a mapping, got {type(mapping).__name__}")
            known = {f.name for f in fields(cls)}
            for key in mapping:
                if not isinstance(key, str) or key not in known:
                    hint = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
                    _fail(str(key), f"unknown setting; did you mean {hint[0]!r}?" if hint
                          else f"unknown setting (known: {', '.join(sorted(known))})")
            settings = inner(dict(mapping))
            try:
                settings._check()
            except SettingsError as exc:
                _fail(exc.key, exc.message)
            return settings

        schema = handler(source)
        # Other uses refer to the definition by ``ref``: it moves to the wrapper, which they must all run.
        return core_schema.no_info_wrap_validator_function(read, schema, ref=schema.pop("ref", None))

    def replace(self, **changes: Any) -> DetectorSettings:
        """A copy with some settings changed, validated like :meth:`from_mapping`."""
        return DetectorSettings.from_mapping({**self.as_mapping(), **changes})

    def as_mapping(self) -> dict[str, Any]:
        """Plain mapping of every setting (lists for tuples), for docs and dumps."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    def _check(self) -> None:
        if self.short_window_seconds >= self.long_window_seconds:
            raise SettingsError(
                "short_window_seconds", "must be shorter than long_window_seconds"
            )
        for name in ("entropy_ratio", "nxdomain_ratio", "fresh_ratio", "concentration",
                     "spread_fresh_ratio"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise SettingsError(name, f"must be in (0, 1], got {value}")
        for name in ("short_buckets", "long_buckets"):
            if not 1 <= getattr(self, name) <= 1440:
                raise SettingsError(name, "must be between 1 and 1440")


@functools.cache
def _adapter() -> TypeAdapter[DetectorSettings]:
    return TypeAdapter(DetectorSettings)
