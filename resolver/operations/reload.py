"""Hot reload: one entry point for SIGHUP, ``POST /reload`` and changed files.

``Server.reload`` parses and validates the whole config (zones included) and
swaps the Pipeline in one assignment; a bad file keeps the old policy. This
module adds what surrounds it: the watcher that polls the mtimes of
``Config.files`` (the config and its RPZ zones) once a second, and the warnings
for settings a reload cannot apply (listeners, upstreams, cache size, state
backend, alert sinks, admin address live in the Engine or the sockets and need
a restart).
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resolver.config import Config

if TYPE_CHECKING:
    from resolver.operations.listeners import Server

log = logging.getLogger("dnsgate.reload")

POLL_SECONDS = 1.0
SETTLE_SECONDS = 0.2  # a file still changing after this is read on the next poll

Signature = tuple[int, int, int] | None  # (mtime_ns, size, inode), None when missing


@dataclass(frozen=True, slots=True)
class Result:
    """What one reload attempt did."""

    ok: bool
    generation: int
    trigger: str
    error: str = ""


def signature(path: Path) -> Signature:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def restart_needed(old: Config, new: Config) -> list[str]:
    """Settings that changed but only take effect after a restart."""
    changed = []
    if old.upstreams != new.upstreams:
        changed.append("upstreams")
    if old.cache.max_entries != new.cache.max_entries:
        changed.append("cache.max_entries")
    if old.state != new.state:
        changed.append("state")
    if [(s.type, s.options) for s in old.alerts] != [(s.type, s.options) for s in new.alerts]:
        changed.append("alerts")
    if old.admin != new.admin:
        changed.append("admin")
    if old.workers != new.workers:
        changed.append("workers")
    return changed


class Reloader:
    """Runs reloads for every trigger and watches the config's files."""

    def __init__(self, server: Server, poll: float = POLL_SECONDS) -> None:
        self.server = server
        self.poll = poll
        self.last_ok = True
        self.last: Result | None = None
        self._seen: dict[Path, Signature] = {}
        self._snapshot()

    def stats(self) -> dict[str, Any]:
        """Whether the last reload attempt succeeded, for metrics."""
        return {"last_ok": self.last_ok}

    def reload(self, trigger: str) -> Result:
        """Reload now; the old policy stays when the new config is bad."""
        server = self.server
        old = server.config
        ok = server.reload()
        self._snapshot()
        self.last_ok = ok
        error = "" if ok else server.last_reload_error
        if ok:
            changed = restart_needed(old, server.config)
            if changed:
                log.warning(
                    "reload (%s) applied the policy; changes to %s need a restart of dnsgate",
                    trigger, ", ".join(changed),
                )
        self.last = Result(ok, server.engine.generation, trigger, error)
        if ok:
            log.info("reload by %s: generation %d", trigger, server.engine.generation)
        else:  # Server.reload has logged the error with its file, line and key
            log.debug("reload by %s rejected", trigger)
        return self.last

    def _snapshot(self) -> None:
        """Remember the files the current config came from, as they are now."""
        self._seen = {Path(p): signature(Path(p)) for p in self.server.config.files}

    def changed(self) -> list[Path]:
        return [p for p, sig in self._seen.items() if signature(p) != sig]

    async def watch(self) -> None:
        """Poll the config's files; reload when one changed and has stopped changing."""
        while True:
            await asyncio.sleep(self.poll)
            changed = self.changed()
            if not changed:
                continue
            # Editors and config management write in steps; wait until the files hold still.
            before = [signature(p) for p in changed]
            await asyncio.sleep(SETTLE_SECONDS)
            if [signature(p) for p in changed] != before:
                continue
            log.info("changed: %s", ", ".join(str(p) for p in changed))
            self.reload("file change")
