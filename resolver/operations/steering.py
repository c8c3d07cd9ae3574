"""``workers: N``: every datagram and connection of one client address goes to one worker.

With plain SO_REUSEPORT the kernel picks a worker by the 4-tuple hash, so a
client that changes its source port lands on every worker in turn, and every
per-client limit held in a worker's memory (rate-limit bucket, TCP connection
cap, client quarantine, per-client detection windows) is worth N times its
value to it. A classic BPF program attached to the reuseport group picks the
socket from the source address alone instead:

    index = ((source address folded to 32 bits) * 0x9E3779B1 >> 16) % N

The kernel runs it for each datagram (UDP) and each new connection (TCP);
the address is read from the network header (``SKF_NET_OFF``), IPv4 at
offset 12, IPv6 as the XOR of its four 32-bit words from offset 8 (the
sockets are IPv6-only, so a v6 group never sees a v4 header). An index past
the group's current size (a worker still binding) makes the kernel fall back
to its own hash for that packet.
"""

from __future__ import annotations

import ctypes
import socket
import struct

__all__ = ["SO_ATTACH_REUSEPORT_CBPF", "attach", "program", "worker_of"]

SO_ATTACH_REUSEPORT_CBPF = 51  # linux/asm-generic/socket.h
_SKF_NET_OFF = -0x100000  # linux/filter.h: loads relative to the network header
_MIX = 0x9E3779B1  # Fibonacci hashing: spreads addresses that differ in a few bits

# Opcodes (linux/bpf_common.h)
_LD_W_ABS = 0x00 | 0x00 | 0x20  # BPF_LD | BPF_W | BPF_ABS
_TAX = 0x07  # BPF_MISC | BPF_TAX
_XOR_X = 0x04 | 0xA0 | 0x08  # BPF_ALU | BPF_XOR | BPF_X
_MUL_K = 0x04 | 0x20  # BPF_ALU | BPF_MUL | BPF_K
_RSH_K = 0x04 | 0x70  # BPF_ALU | BPF_RSH | BPF_K
_MOD_K = 0x04 | 0x90  # BPF_ALU | BPF_MOD | BPF_K
_RET_A = 0x06 | 0x10  # BPF_RET | BPF_A


def _net(offset: int) -> int:
    return (_SKF_NET_OFF + offset) & 0xFFFFFFFF


def program(family: int, workers: int) -> list[tuple[int, int, int, int]]:
    """The filter, as (code, jt, jf, k) instructions, for sockets of ``family``."""
    if workers < 1:
        raise ValueError("workers must be at least 1")
    if family == socket.AF_INET:
        fold = [(_LD_W_ABS, 0, 0, _net(12))]
    elif family == socket.AF_INET6:
        fold = [(_LD_W_ABS, 0, 0, _net(8))]
        for offset in (12, 16, 20):
            fold += [(_TAX, 0, 0, 0), (_LD_W_ABS, 0, 0, _net(offset)), (_XOR_X, 0, 0, 0)]
    else:
        raise ValueError(f"no steering program for address family {family}")
    return [*fold, (_MUL_K, 0, 0, _MIX), (_RSH_K, 0, 0, 16), (_MOD_K, 0, 0, workers), (_RET_A, 0, 0, 0)]


def worker_of(address: str, workers: int) -> int:
    """The worker index the program picks for ``address`` (what the kernel computes)."""
    packed = socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)
    folded = 0
    for (word,) in struct.iter_unpack("!I", packed):
        folded ^= word
    return (((folded * _MIX) & 0xFFFFFFFF) >> 16) % workers


def attach(sock: socket.socket, workers: int) -> None:
    """Attach the program to ``sock``'s reuseport group (bound, SO_REUSEPORT set).

    Raises OSError when the kernel refuses it.
    """
    code = program(sock.family, workers)
    filters = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *ins) for ins in code))
    fprog = struct.pack("@HP", len(code), ctypes.addressof(filters))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
