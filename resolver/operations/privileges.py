"""Privilege drop: bind port 53 with privileges, then serve with none.

Started as root (``user: dnsgate`` or ``--user dnsgate``), dnsgate binds every
socket, reads its admin token, then becomes that user and its primary group
with no supplementary groups. Started unprivileged with a capability (systemd's
``AmbientCapabilities=CAP_NET_BIND_SERVICE``), it keeps its user and gives the
capability up once bound. Either way it ends with empty capability sets
(bounding set included when it was root) and ``no_new_privs``, so nothing it
executes can regain them. :func:`capabilities` reads the result back from
``/proc/self/status``; a drop that leaves anything is an error, not a warning.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import pwd
from dataclasses import dataclass

log = logging.getLogger("dnsgate.privileges")

# prctl(2) options and the capset(2) ABI version from <linux/prctl.h> and <linux/capability.h>.
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522
CAP_FIELDS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")


class PrivilegeError(Exception):
    """The drop could not be done, or left a privilege behind (one line, for the operator)."""


@dataclass(frozen=True, slots=True)
class Account:
    """The user dnsgate serves as, resolved before anything is bound."""

    name: str
    uid: int
    gid: int


def account(name: str) -> Account:
    """Look the user up now, so a typo fails before any socket is bound."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise PrivilegeError(f"user {name!r} does not exist (create it, or change user: / --user)") from None
    if entry.pw_uid == 0:
        raise PrivilegeError(f"user {name!r} is root: name an unprivileged user to drop to")
    return Account(name, entry.pw_uid, entry.pw_gid)


def capabilities() -> dict[str, int]:
    """The capability sets of this process (``CapEff`` ... as integers) from /proc/self/status."""
    sets: dict[str, int] = {}
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in CAP_FIELDS:
                sets[key] = int(value.strip(), 16)
    return sets


def drop(user: Account | None) -> str:
    """Become ``user`` (when root) and give up every capability; return what was done, for the log.

    Root without a user is left alone: the caller warns (tests and containers
    run so). Capabilities are per thread; the listeners are bound without
    helper threads, and a drop with other threads alive is refused rather
    than leaving them privileged.
    """
    threads = len(os.listdir("/proc/self/task"))
    if threads > 1:
        raise PrivilegeError(f"cannot drop privileges safely: {threads} threads are running")
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    was_root = os.geteuid() == 0
    if user is not None and not was_root and os.geteuid() != user.uid:
        raise PrivilegeError(f"cannot become user {user.name!r}: dnsgate was not started as root")
    if was_root and user is not None:
        # The bounding set can only shrink while CAP_SETPCAP is held, that is before setuid.
        for cap in range(_last_cap() + 1):
            libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
        os.setgroups([])
        os.setgid(user.gid)
        os.setuid(user.uid)  # from root this sets real, effective and saved ids: no way back
    if libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0:
        raise PrivilegeError(f"cannot clear ambient capabilities: {os.strerror(ctypes.get_errno())}")
    _clear_capabilities(libc)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise PrivilegeError(f"cannot set no_new_privs: {os.strerror(ctypes.get_errno())}")
    left = {k: v for k, v in capabilities().items() if v and k != "CapBnd"}
    if left:
        raise PrivilegeError("capabilities left after the drop: "
                             + ", ".join(f"{k}={v:#x}" for k, v in sorted(left.items())))
    who = f"uid {os.getuid()} gid {os.getgid()}"
    return f"running as {user.name} ({who})" if user is not None else f"running as {who}"


def _clear_capabilities(libc: ctypes.CDLL) -> None:
    """capset(2) with empty effective, permitted and inheritable sets (both 32-bit halves)."""

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    header = Header(LINUX_CAPABILITY_VERSION_3, 0)
    data = (Data * 2)()
    if libc.capset(ctypes.byref(header), data) != 0:
        raise PrivilegeError(f"cannot clear capabilities: {os.strerror(ctypes.get_errno())}")


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap", encoding="ascii") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return 63
