"""Sliding windows of bucketed counters, kept per (namespace|client, domain) pair.

A window is a ring of time buckets keyed by ``int(now // width)``; totals are
kept incrementally so reading a window costs nothing. Time is whatever the
caller passes (capture time in replay): nothing here reads the clock.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from .hll import HyperLogLog

__all__ = [
    "Field",
    "Geometry",
    "InformationEstimator",
    "PairWindows",
    "Pending",
    "Window",
    "deflate_wbits",
    "deflated_size",
    "zlib_deflated_size",
]


class Field:
    """Indexes of the per-bucket counters."""

    QUERIES: Final = 0
    NEW_NAMES: Final = 1  # names never seen before in the namespace
    INFO: Final = 2  # compressed bytes of never-seen subdomain text
    ENCODED: Final = 3  # new names with an encoded-looking label or run
    NON_LDH: Final = 4  # new names with octets outside LDH
    LONG_LABEL: Final = 5  # new names with a long label
    RARE_QTYPE: Final = 6  # new (name, rare qtype)
    DATA_QTYPE: Final = 7  # new (name, TXT/MX/CNAME/SRV)
    RESPONSES: Final = 8
    NXDOMAIN: Final = 9
    COUNT: Final = 10

    NAMES: Final = (
        "queries",
        "new_names",
        "info_bytes",
        "encoded_names",
        "non_ldh_names",
        "long_label_names",
        "rare_qtype_names",
        "data_qtype_names",
        "responses",
        "nxdomain",
    )


_NEVER: Final = 1 << 62  # a bucket index no window reaches


class Window:
    """One time scale: ``buckets`` buckets covering ``seconds``.

    ``totals`` always holds the sum over live buckets. Buckets exist only once
    something is counted in them (a quiet pair costs one small row, not a full
    ring: a hundred thousand tracked domains must fit in memory). With
    ``unique`` set, each bucket also gets a HyperLogLog of name hashes.
    """

    __slots__ = (
        "_unique_cache",
        "counts",
        "floor",
        "head",
        "remote",
        "remote_head",
        "remote_local",
        "remote_unique",
        "size",
        "sketches",
        "totals",
        "width",
    )

    def __init__(self, seconds: float, buckets: int, unique: bool = False) -> None:
        self.width = seconds / buckets
        self.size = buckets
        self.head = -1  # absolute index of the newest bucket
        self.counts: dict[int, list[int]] = {}  # absolute bucket index -> counters
        # No bucket of ``counts`` or ``sketches`` is older than this: while it is inside
        # the window, moving the head expires nothing and scans nothing.
        self.floor = _NEVER
        self.totals = [0] * Field.COUNT
        self.sketches: dict[int, HyperLogLog] | None = {} if unique else None
        # Counts fetched from the shared backend (other replicas included).
        self.remote: list[int] | None = None
        self.remote_head = -1
        self.remote_unique = 0
        # This replica's own totals already inside ``remote`` (pushed before that merge):
        # what was counted here since is added on top, so no query is missed or doubled.
        self.remote_local: list[int] | None = None
        self._unique_cache: tuple[int, int, int] = (-1, -1, 0)

    def advance(self, now: float) -> int:
        """Move the head to ``now``'s bucket, expiring old buckets; returns it.

        Late timestamps (out-of-order packets) count in the current bucket.
        """
        idx = int(now // self.width)
        head = self.head
        if idx <= head:
            return head
        self.head = idx
        low = idx - self.size + 1
        if self.floor >= low:
            return idx
        if head < low:
            # No bucket is newer than the old head: all of them expire at once (a
            # pair asked again after a quiet spell, the usual case in a short window).
            if self.counts:
                self.counts.clear()
                self.totals = [0] * Field.COUNT
            sketches = self.sketches
            if sketches:
                sketches.clear()
            self.floor = _NEVER
            return idx
        counts = self.counts
        if counts:
            stale = [b for b in counts if b < low]
            if stale:
                totals = self.totals
                for b in stale:
                    old = counts.pop(b)
                    for i in range(Field.COUNT):
                        totals[i] = totals[i] - old[i]
                if not counts:
                    self.totals = [0] * Field.COUNT  # everything expired: exactly zero again
        sketches = self.sketches
        if sketches:
            for b in [b for b in sketches if b < low]:
                del sketches[b]
        floor = _NEVER
        for b in counts:
            if b < floor:
                floor = b
        if sketches:
            for b in sketches:
                if b < floor:
                    floor = b
        self.floor = floor
        return idx

    def add(self, field: int, amount: int = 1) -> None:
        """Add to a counter of the head bucket (call :meth:`advance` first)."""
        row = self.counts.get(self.head)
        if row is None:
            row = self._row(self.head)
        # x[i] = x[i] + n, not x[i] += n: compiled, the augmented form is a generic
        # object addition, this one adds the unboxed ints.
        row[field] = row[field] + amount
        totals = self.totals
        totals[field] = totals[field] + amount

    def add_all(self, deltas: tuple[tuple[int, int], ...]) -> None:
        """:meth:`add` for several counters at once (one row lookup)."""
        row = self.counts.get(self.head)
        if row is None:
            row = self._row(self.head)
        totals = self.totals
        for field, amount in deltas:
            row[field] = row[field] + amount  # not +=: see add()
            totals[field] = totals[field] + amount

    def _row(self, bucket: int) -> list[int]:
        """A new bucket's counters."""
        row = self.counts[bucket] = [0] * Field.COUNT
        if bucket < self.floor:
            self.floor = bucket
        return row

    def add_name(self, h: int) -> None:
        """Record a name hash in the head bucket's sketch."""
        sketches = self.sketches
        if sketches is not None:
            sketch = sketches.get(self.head)
            if sketch is None:
                sketch = sketches[self.head] = HyperLogLog()
                if self.head < self.floor:
                    self.floor = self.head
            sketch.add(h)

    def add_at(self, bucket: int, field: int, amount: int) -> None:
        """Add to a counter of an earlier bucket, if it is still inside the window.

        For estimates computed after the fact (a pair's deferred names): the
        amount lands where it would have landed at the time, or nowhere if that
        bucket has expired since.
        """
        if bucket >= self.head:
            self.add(field, amount)
            return
        if bucket <= self.head - self.size:
            return
        row = self.counts.get(bucket)
        if row is None:
            row = self._row(bucket)
        row[field] = row[field] + amount  # not +=: see add()
        totals = self.totals
        totals[field] = totals[field] + amount

    def add_name_at(self, bucket: int, h: int) -> None:
        """:meth:`add_name` into an earlier bucket, if it is still inside the window."""
        sketches = self.sketches
        if sketches is None or bucket <= self.head - self.size:
            return
        bucket = min(bucket, self.head)
        sketch = sketches.get(bucket)
        if sketch is None:
            sketch = sketches[bucket] = HyperLogLog()
            if bucket < self.floor:
                self.floor = bucket
        sketch.add(h)

    def total(self, field: int) -> int:
        """Window total of one counter, merged with the shared backend's view."""
        local = self.totals[field]
        remote = self.remote
        if remote is not None and self.remote_head == self.head:
            base = self.remote_local
            merged = remote[field] if base is None else remote[field] + local - base[field]
            if merged > local:
                return merged
        return local

    def unique(self) -> int:
        """Distinct names in the window (HyperLogLog union over buckets)."""
        sketches = self.sketches
        if sketches is None:
            return 0
        new_names = self.totals[Field.NEW_NAMES]
        cached_head, cached_new, cached = self._unique_cache
        # Recount only when the window moved or grew noticeably: the union costs
        # a pass over the registers once sketches are dense.
        if cached_head != self.head or new_names - cached_new > max(2, cached_new // 32):
            cached = HyperLogLog.union_count(list(sketches.values()))
            self._unique_cache = (self.head, new_names, cached)
        # Remote HLL estimates jitter a few per cent; adopt them only when another
        # replica clearly contributed.
        if self.remote_head == self.head:
            remote = self.remote_unique
            base = self.remote_local
            if base is not None:
                remote += max(0, new_names - base[Field.NEW_NAMES])
            if remote > cached * 1.05 + 2:
                return remote
        return cached


@dataclass(slots=True, init=False)
class Pending:
    """A query whose expensive evidence waits until its pair is promoted.

    ``heads`` are the bucket indexes (namespace short, long; client short,
    long) it was counted in, so the deferred amounts land in the same buckets.
    """

    qname: bytes
    client: str
    heads: tuple[int, int, int, int]
    new: bool  # a never-seen name (else only a never-seen (name, rare/data qtype))
    case_bits: int = 0  # letter case the client chose in mixed-case subdomain labels (see features.case_bits)

    def __init__(
        self, qname: bytes, client: str, heads: tuple[int, int, int, int], new: bool, case_bits: int = 0,
    ) -> None:
        self.qname = qname
        self.client = client
        self.heads = heads
        self.new = new
        self.case_bits = case_bits


# deflate looks ahead this far (zlib's MIN_LOOKAHEAD) and a name's text is at most 255 octets.
_LOOKAHEAD: Final = 262
_MAX_TEXT: Final = 255


def deflate_wbits(context_bytes: int) -> int:
    """The raw-deflate window (negative wbits) for charging against ``context_bytes`` of text.

    The smallest window that holds the dictionary, the text and deflate's
    lookahead, so that every match the 32 KiB window could use is within
    reach and the compressed size is the same; a smaller window costs zlib
    less to set up (about 2.5 times less at 1 KiB of context). Capped at 32 KiB.
    """
    need = context_bytes + _MAX_TEXT + _LOOKAHEAD
    bits = 9
    while bits < 15 and (1 << bits) < need:
        bits += 1
    return -bits


def zlib_deflated_size(dictionary: bytes, text: bytes, wbits: int) -> int:
    """The size in bytes of ``text`` deflated with ``dictionary`` as preset dictionary, by zlib's module.

    Level 6, memLevel 8, the default strategy, the stream finished; ``wbits``
    is -15..-9 (raw deflate) or 9..15 (zlib header and trailer), and an empty
    dictionary sets none. What :func:`deflated_size` is without heuristics/_deflate.c
    (running from source): zlib.compressobj makes a whole compressor every call.
    """
    if not isinstance(dictionary, bytes) or not isinstance(text, bytes):
        raise TypeError("deflated_size() takes bytes for dictionary and text")
    if not isinstance(wbits, int):
        raise TypeError("deflated_size() takes an int for wbits")
    if not 9 <= abs(wbits) <= 15:
        raise ValueError(f"deflated_size() wbits must be -15..-9 (raw deflate) or 9..15, not {wbits}")
    if dictionary:
        comp = zlib.compressobj(6, zlib.DEFLATED, wbits, 8, zlib.Z_DEFAULT_STRATEGY, dictionary)
    else:
        comp = zlib.compressobj(6, zlib.DEFLATED, wbits, 8)
    return len(comp.compress(text)) + len(comp.flush())


def _extension() -> Callable[[bytes, bytes, int], int] | None:
    """heuristics._deflate's ``deflated_size`` if it is built and runs the zlib this Python's module runs.

    It resets one compressor per window size where zlib.compressobj makes one per
    call; the same zlib gives the same stream, so the same sizes. Another zlib
    (a Python with its own zlib inside) could deflate differently: zlib's module then.
    """
    try:
        from . import _deflate
    except ImportError:  # not built: running from source
        return None
    if _deflate.ZLIB_RUNTIME_VERSION != zlib.ZLIB_RUNTIME_VERSION:
        return None
    return _deflate.deflated_size


# The deflated size of a text against a dictionary, ``(dictionary, text, wbits) -> int``:
# heuristics/_deflate.c when built (``python -m resolver.native build``), else zlib's module.
deflated_size: Final[Callable[[bytes, bytes, int], int]] = _extension() or zlib_deflated_size


@dataclass(slots=True, init=False)
class InformationEstimator:
    """Compressed size of new subdomain text, in the spirit of Paxson et al. 2013.

    Each never-seen subdomain is deflated with the domain's most recent new text
    as preset dictionary, so repeated structure (CDN prefixes, counters, the
    same words) costs little and fresh encoded bytes cost what they carry.
    """

    context_bytes: int
    recent: bytes

    # Written out, not generated: compiled, a dataclass's generated __init__ runs in
    # the interpreter, and every new pair makes an estimator.
    def __init__(self, context_bytes: int, recent: bytes = b"") -> None:
        self.context_bytes = context_bytes
        self.recent = recent

    def charge(self, text: bytes) -> int:
        """Estimated information in ``text`` (bytes); remembers it as context."""
        if not text:
            return 0
        size = deflated_size(self.recent, text, deflate_wbits(self.context_bytes))
        # A raw deflate block always ends with 1-3 bits of framing; never charge
        # more than the text itself.
        size = min(size, len(text))
        recent = self.recent + b"." + text
        self.recent = recent[-self.context_bytes :]
        return size


class Geometry:
    """The shape of a pair's windows and its compression context, from the settings.

    Made once per settings (the detector keeps it), so the state's check that a
    pair was made under the settings in force is one identity test; a pair made
    under other settings (a reload changed them) is made again.
    """

    __slots__ = ("context_bytes", "long_buckets", "long_seconds", "short_buckets", "short_seconds")

    def __init__(
        self, short_seconds: float, short_buckets: int, long_seconds: float, long_buckets: int, context_bytes: int
    ) -> None:
        self.short_seconds = short_seconds
        self.short_buckets = short_buckets
        self.long_seconds = long_seconds
        self.long_buckets = long_buckets
        self.context_bytes = context_bytes

    def _fields(self) -> tuple[float, int, float, int, int]:
        return (self.short_seconds, self.short_buckets, self.long_seconds, self.long_buckets, self.context_bytes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Geometry) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return f"Geometry{self._fields()}"

    def windows(self, unique: bool = True) -> PairWindows:
        """New windows of this shape (``unique``: the short window counts distinct names)."""
        return PairWindows(
            self.short_seconds, self.short_buckets, self.long_seconds, self.long_buckets,
            context_bytes=self.context_bytes, unique=unique,
        )


class PairWindows:
    """Short and long windows of one (namespace or client, domain) pair.

    A namespace pair is either *promoted* (every never-seen name pays for the
    information estimate, the encoding test and the HyperLogLog at once) or
    not yet: then those names wait in ``pending``, in order, and are estimated
    together, exactly as they would have been, the moment cheap counters say
    the pair could reach a verdict (see ``Detector``).
    """

    __slots__ = (
        "clients",
        "estimator",
        "last_new",
        "long",
        "pending",
        "pending_bytes",
        "pending_names",
        "promoted",
        "share",
        "shared",
        "short",
    )

    def __init__(
        self,
        short_seconds: float,
        short_buckets: int,
        long_seconds: float,
        long_buckets: int,
        context_bytes: int,
        unique: bool = True,
    ) -> None:
        self.short = Window(short_seconds, short_buckets, unique=unique)
        self.long = Window(long_seconds, long_buckets)
        self.estimator = InformationEstimator(context_bytes)
        self.shared = False  # set by a shared backend once it pushes this pair
        # Clients that sent never-seen names (namespace pairs only; see heuristics.spread).
        self.clients: tuple[str, ...] = ()
        self.last_new: tuple[bytes, ...] = ()  # subdomain labels of the pair's last never-seen name
        self.promoted = False
        self.pending: list[Pending] = []
        self.pending_bytes = 0  # subdomain octets of the pending new names
        self.pending_names = 0  # pending entries that are new names (not only a new qtype)
        self.share: tuple[int, int, float] | None = None  # (long head, info, share of top clients)

    def shape(self) -> tuple[float, int, float, int]:
        """The window geometry, to notice settings changes."""
        return (
            self.short.width * self.short.size,
            self.short.size,
            self.long.width * self.long.size,
            self.long.size,
        )
