"""Detector thresholds: typed, validated once, immutable on the hot path."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["DetectorSettings", "SettingsError"]


class SettingsError(ValueError):
    """A detection setting is unknown or has a bad value.

    ``key`` names the offending setting so config loaders can point at its line.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


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
    exempt: tuple[str, ...] = ()  # extra domains (suffix match) never scored
    cluster_domains: tuple[str, ...] = ("cluster.local",)
    default_exemptions: bool = True  # use heuristics/exemptions.txt

    # --- windows ----------------------------------------------------------
    short_window_seconds: float = 60.0
    short_buckets: int = 6
    long_window_seconds: float = 86400.0
    long_buckets: int = 24

    # --- information budget (compressed bytes of never-seen subdomain text) -
    client_budget_short_bytes: int = 2048  # per (client, domain) per short window
    client_budget_long_bytes: int = 4096  # per (client, domain) per long window
    namespace_budget_short_bytes: int = 8192  # per (namespace, domain) per short window
    namespace_budget_long_bytes: int = 65536  # per (namespace, domain) per long window
    compression_context_bytes: int = 1024  # recent text per domain used as zlib dictionary

    # --- name shape -------------------------------------------------------
    encoded_label_min: int = 10  # shortest label judged as possibly encoded
    entropy_ratio: float = 0.8  # label entropy / expected entropy of random text
    long_label: int = 40  # label_length: a label at least this long
    encoded_names_short: int = 8  # distinct encoded names per pair per short window
    encoded_names_long: int = 40  # ... per long window
    non_ldh_names: int = 2  # distinct names with non-LDH octets per window
    long_label_names: int = 5  # distinct names with a long label per window

    # --- rates and types ----------------------------------------------------
    unique_short: int = 100  # distinct names per (pair, short window)
    rare_qtypes: tuple[int, ...] = _RARE_QTYPES
    rare_qtype_names: int = 3  # distinct names with a rare qtype per window
    data_qtypes: tuple[int, ...] = _DATA_QTYPES
    data_qtype_names_short: int = 10  # distinct names with a data qtype per short window
    data_qtype_names_long: int = 200  # ... per long window
    nxdomain_ratio: float = 0.8
    nxdomain_min_responses: int = 10
    rare_domains_per_hour: int = 200  # distinct never-seen domains per client per hour

    # --- decisions ----------------------------------------------------------
    alert_points: int = 3  # window evidence needed before a verdict is returned
    suppress_seconds: float = 300.0  # same (namespace, domain, reasons) alert once per window
    quarantine_seconds: float = 600.0  # how long the resolver should quarantine a domain

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None) -> DetectorSettings:
        """Validate a ``thresholds`` mapping; unknown keys and bad values raise.

        Lists may be given for tuple settings; qtypes accept numbers or mnemonics
        (``NULL``, ``TXT``, ``TYPE65399``).
        """
        if mapping is None:
            return cls()
        if not isinstance(mapping, Mapping):
            raise SettingsError("thresholds", f"expected a mapping, got {type(mapping).__name__}")
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, raw in mapping.items():
            if not isinstance(key, str) or key not in known:
                known_keys = ", ".join(sorted(known))
                raise SettingsError(str(key), f"unknown setting (known: {known_keys})")
            values[key] = _coerce(key, known[key].default, raw)
        settings = cls(**values)
        settings._check()
        return settings

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
        for name in ("entropy_ratio", "nxdomain_ratio"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise SettingsError(name, f"must be in (0, 1], got {value}")
        for name in ("short_buckets", "long_buckets"):
            if not 1 <= getattr(self, name) <= 1440:
                raise SettingsError(name, "must be between 1 and 1440")


def _coerce(key: str, default: Any, raw: Any) -> Any:
    if isinstance(default, bool):
        if not isinstance(raw, bool):
            raise SettingsError(key, f"expected true or false, got {raw!r}")
        return raw
    if isinstance(default, int):
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise SettingsError(key, f"expected an integer, got {raw!r}")
        if raw < 0:
            raise SettingsError(key, f"must not be negative, got {raw}")
        return raw
    if isinstance(default, float):
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise SettingsError(key, f"expected a number, got {raw!r}")
        if raw <= 0:
            raise SettingsError(key, f"must be positive, got {raw}")
        return float(raw)
    if isinstance(default, tuple):
        if isinstance(raw, str) or not isinstance(raw, list | tuple):
            raise SettingsError(key, f"expected a list, got {raw!r}")
        if key.endswith("qtypes"):
            return tuple(_qtype(key, item) for item in raw)
        items = []
        for item in raw:
            if not isinstance(item, str) or not item.strip(". "):
                raise SettingsError(key, f"expected domain names, got {item!r}")
            items.append(item.strip().lower().rstrip("."))
        return tuple(items)
    raise SettingsError(key, "unsupported setting type")  # pragma: no cover


def _qtype(key: str, item: Any) -> int:
    if isinstance(item, int) and not isinstance(item, bool) and 0 <= item <= 65535:
        return item
    if isinstance(item, str):
        import dns.rdatatype

        try:
            return int(dns.rdatatype.from_text(item))
        except Exception:  # dnspython raises several types for bad mnemonics
            pass
    raise SettingsError(key, f"not a query type: {item!r}")
