"""Remote alert sinks (webhook, Alertmanager, Redis stream)."""

from __future__ import annotations

from resolver.alerts import Sink
from resolver.config import ConfigError
from resolver.config import Sink as SinkSpec


def build(spec: SinkSpec) -> Sink:
    raise ConfigError(spec.path, spec.line, "alerts.type", f"sink type {spec.type!r} is not built yet")
