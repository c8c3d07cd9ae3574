"""A small HyperLogLog: distinct counts in bounded memory.

Sparse (an exact set of hashes) while small, so the many quiet (pair, bucket)
windows cost a few dozen bytes; dense (2**p one-byte registers) past
``SPARSE_LIMIT`` hashes, so a flood of a million unique names costs 1 KiB per
bucket. Members are 64-bit hashes supplied by the caller.
"""

from __future__ import annotations

import math
from typing import Final

__all__ = ["HyperLogLog"]

P: Final = 10
M: Final = 1 << P  # 1024 registers: standard error 1.04/sqrt(M) ~ 3.3 %
SPARSE_LIMIT: Final = 128
_MASK: Final = M - 1
_ALPHA: Final = 0.7213 / (1 + 1.079 / M)


class HyperLogLog:
    """Distinct-count sketch over 64-bit integer hashes."""

    __slots__ = ("_dense", "_sparse")

    def __init__(self) -> None:
        self._sparse: set[int] | None = set()
        self._dense: bytearray | None = None

    def add(self, h: int) -> bool:
        """Add a hash; True when the estimate may have changed."""
        sparse = self._sparse
        if sparse is not None:
            if h in sparse:
                return False
            sparse.add(h)
            if len(sparse) > SPARSE_LIMIT:
                self._densify()
            return True
        dense = self._dense
        assert dense is not None
        return _set_register(dense, h)

    def _densify(self) -> None:
        dense = bytearray(M)
        for h in self._sparse or ():
            _set_register(dense, h)
        self._dense = dense
        self._sparse = None

    def registers(self) -> bytearray:
        """Dense registers (computed for sparse sketches)."""
        if self._dense is not None:
            return self._dense
        dense = bytearray(M)
        for h in self._sparse or ():
            _set_register(dense, h)
        return dense

    def count(self) -> int:
        """Estimated number of distinct members (exact while sparse)."""
        if self._sparse is not None:
            return len(self._sparse)
        assert self._dense is not None
        return _estimate(self._dense)

    @staticmethod
    def union_count(sketches: list[HyperLogLog]) -> int:
        """Distinct count of the union of several sketches."""
        sparse_union: set[int] = set()
        dense: list[bytearray] = []
        for sketch in sketches:
            if sketch._sparse is not None:
                sparse_union |= sketch._sparse
            elif sketch._dense is not None:
                dense.append(sketch._dense)
        if not dense:
            return len(sparse_union)
        merged = bytearray(dense[0])
        for regs in dense[1:]:
            merged = bytearray(map(max, merged, regs))
        for h in sparse_union:
            _set_register(merged, h)
        return _estimate(merged)

    def memory_bytes(self) -> int:
        """Approximate payload size, for the memory-bound tests and docs."""
        if self._sparse is not None:
            return 8 * len(self._sparse)
        return M


def _set_register(dense: bytearray, h: int) -> bool:
    idx = h & _MASK
    rest = h >> P
    # Rank = position of the lowest set bit of the remaining 54 bits, 1-based.
    rank = (rest & -rest).bit_length() if rest else 64 - P + 1
    if rank > dense[idx]:
        dense[idx] = rank
        return True
    return False


def _estimate(dense: bytearray) -> int:
    total = 0.0
    zeros = 0
    for r in bytes(dense):  # a bytes copy: mypyc iterates bytes, not bytearray
        total += 2.0 ** -r
        if r == 0:
            zeros += 1
    estimate = _ALPHA * M * M / total
    if estimate <= 2.5 * M and zeros:
        estimate = M * math.log(M / zeros)  # linear counting for small cardinalities
    return round(estimate)
