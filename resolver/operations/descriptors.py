"""File descriptors: the soft RLIMIT_NOFILE raised to the hard limit, and a check that the caps fit in it.

Every client socket, upstream socket, alert-sink connection and log file is
one descriptor, and the soft limit is often 1024 (systemd's default). When it
runs out, accept() and socket() fail for DNS too: an uncached query gets
SERVFAIL and TCP clients are reset. So dnsgate raises the soft limit to the
hard one at start (raising it needs no privilege; the unit sets
``LimitNOFILE=``), logs both once, and warns when ``tcp_max_connections`` and
the admin port's connection cap leave too little for the rest.
"""

from __future__ import annotations

import logging
import resource
from pathlib import Path

from resolver.config import Config
from resolver.operations.admin import ADMIN_MAX_CONNECTIONS

log = logging.getLogger("dnsgate.server")

# Descriptors beside the client connections: listeners, pooled upstream sockets, TCP
# fallbacks to an upstream, alert sinks, log files, the event loop's own, the interpreter's.
RESERVED = 64
NR_OPEN = Path("/proc/sys/fs/nr_open")  # the kernel's ceiling when the hard limit is unlimited


def raise_soft_limit() -> int:
    """Set the soft RLIMIT_NOFILE to the hard limit; log both once; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            target = int(NR_OPEN.read_text())
        except (OSError, ValueError):
            target = soft
    if soft != resource.RLIM_INFINITY and target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            log.warning("open files: soft limit %d, cannot raise it to %d: %s", soft, target, exc)
            return soft
        log.info("open files: soft limit %d raised to the hard limit %s", soft, _text(hard))
        return target
    log.info("open files: soft limit %s, hard limit %s", _text(soft), _text(hard))
    return soft


def check_fit(config: Config, soft: int) -> bool:
    """Warn (one line) when the TCP and admin connection caps and the reserve exceed ``soft``."""
    admin = ADMIN_MAX_CONNECTIONS if config.admin is not None else 0
    needed = config.tcp_max_connections + admin + RESERVED
    if soft == resource.RLIM_INFINITY or needed <= soft:
        return True
    log.warning("open files: soft limit %d is below what the caps allow, %d (tcp_max_connections %d + admin "
                "connections %d + %d for listeners, upstreams and sinks): at the cap, DNS runs out of "
                "descriptors; raise the limit (systemd LimitNOFILE=) or lower tcp_max_connections",
                soft, needed, config.tcp_max_connections, admin, RESERVED)
    return False


def _text(limit: int) -> str:
    return "unlimited" if limit == resource.RLIM_INFINITY else str(limit)
