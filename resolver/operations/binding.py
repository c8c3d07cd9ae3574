"""Why a listener could not be bound, in words an operator can act on.

Kept apart from listeners.py, which resolver/native.py compiles: a compiled
module cannot define a subclass of OSError.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from resolver.config import Listen

__all__ = ["ListenError", "bind_failure"]


class ListenError(OSError):
    """A listener could not be bound; the message names the address, port and protocol."""

    def __init__(self, listen: Listen, proto: str, cause: OSError) -> None:
        super().__init__(cause.errno, f"cannot listen on {listen.address} port {listen.port}/{proto}: "
                                      f"{bind_failure(cause, listen.port)}")


def bind_failure(exc: OSError, port: int) -> str:
    """Why a bind failed, in a few words: the errno's text (uvloop keeps it on the cause)."""
    seen: BaseException | None = exc
    while seen is not None:
        code = getattr(seen, "errno", None)
        if code:
            reason = os.strerror(code)
            if code == errno.EACCES and port < 1024:
                reason += " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
            elif code == errno.EADDRINUSE and port == 53:
                reason += " (another resolver on port 53? systemd-resolved: see docs/operations.md)"
            return reason
        seen = seen.__cause__ or seen.__context__
    return str(exc)
