"""Detector state: one interface, two backends.

:class:`MemoryState` keeps every window in process, bounded by ``max_keys``
(least recently used pairs are evicted). :class:`RedisState` keeps the same
local view, which always decides, and shares it through Redis from a
background task: deltas are batched into one pipeline per flush, remote totals
(other replicas included) are merged back, quarantines are shared. The query
path never awaits Redis; when Redis is down the local view carries on alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Final

from .client_quarantine import ClientQuarantines
from .lru import LRU
from .windows import Field, Geometry, PairWindows, Window

__all__ = ["Geometry", "MemoryState", "RedisState", "State"]

log = logging.getLogger(__name__)

SHORT, LONG = "s", "l"
QUARANTINE_MARGIN = 60.0  # seconds an ended domain quarantine stays in the index (replicas' clocks differ)
QUARANTINE_LOG_SECONDS = 300.0  # how long a change stays in the quarantine log (a replica further behind resyncs)

# Adds members to a log sorted set (``<prefix>:shared``, ``<prefix>:quarantines:log``)
# with scores above every score already there, atomically: a reader keeps the newest
# score it read as its cursor and reads only what is above it, and no entry can land
# below a cursor, whatever the writing replica's clock says. Scores stay close to
# epoch seconds, so a log is trimmed by age. KEYS[1] the log; ARGV[1] the writer's
# clock; ARGV[2..] the members.
SEQUENCE_SCRIPT = """
local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
local score = tonumber(ARGV[1])
if top[2] ~= nil and tonumber(top[2]) > score then score = tonumber(top[2]) end
for i = 2, #ARGV do
  score = score + 0.000001
  redis.call('ZADD', KEYS[1], score, ARGV[i])
end
return 0
"""


# A pair whose long window holds at least this much new text (charged, or waiting to be
# charged) is spared when it is the oldest in line for eviction, while that window is live:
# a flood of never-seen domains with short names (at most spread_free_bytes, 24, each: free
# in every meter) must not push a channel's evidence out. A flood that carries more under
# every domain is spared too, and then evicts like before: the detector reports such a
# client (domain_churn) long before it could evict max_keys pairs.
KEEP_INFO_BYTES: Final = 25
KEEP_SCAN: Final = 8  # pairs looked at per eviction, at most; then the oldest goes whatever it holds


def worth_keeping(windows: PairWindows, clock: float) -> bool:
    """True when ``windows`` carries evidence worth a second chance at ``clock`` (see KEEP_INFO_BYTES)."""
    long = windows.long
    if long.totals[Field.INFO] + windows.pending_bytes < KEEP_INFO_BYTES:
        return False
    return long.head > int(clock // long.width) - long.size


def _add(lru: LRU, key: Any, value: Any) -> None:
    """``lru.put`` for a key it does not hold: a new key already goes last."""
    lru[key] = value
    if len(lru) > lru.limit:
        lru.popitem(last=False)
        lru.evictions += 1


def _above(cursor: float) -> str:
    """The ZRANGEBYSCORE lower bound of what lies above a log cursor (``-inf``: the whole log)."""
    return "-inf" if cursor == float("-inf") else f"({cursor!r}"


class State:
    """What the detector needs from a backend; all methods are synchronous.

    ``start``/``close`` are coroutines so backends with background work can run
    it; the in-memory backend's are no-ops.
    """

    backend_in_use: str = "memory"

    def __init__(self, max_keys: int = 100_000, max_names: int = 500_000) -> None:
        self.max_keys = max_keys
        self.max_names = max_names
        self._pairs: LRU = LRU(max_keys)
        self._seen: LRU = LRU(max_names)
        self._domains: LRU = LRU(max_keys)
        self._quarantines: LRU = LRU(max_keys)
        self.clients = ClientQuarantines(max_keys)  # workloads quarantined (on_undeclared)
        # True for a backend that sends changes on (``record``): the detector skips
        # building ``record``'s arguments for one that does not.
        self.shares = False
        self.errors = 0
        self.fallbacks = 0
        # The latest query time the detector passed: whether a pair's windows are still
        # live when it comes up for eviction (capture time in replay, like everything here).
        self.clock = 0.0
        self.spared = 0  # evictions that passed over a pair worth keeping
        self.evicted_live = 0  # pairs worth keeping evicted all the same (every pair in line was)

    # --- windows -------------------------------------------------------------
    def pair(self, key: str, geometry: Geometry, unique: bool = True) -> PairWindows:
        """The windows of one pair key, created (or evicting the oldest) on demand."""
        pairs = self._pairs
        found = pairs.get(key)
        if found is not None and (found[0] is geometry or found[0] == geometry):
            pairs.move_to_end(key)
            windows: PairWindows = found[1]
            return windows
        windows = geometry.windows(unique)
        if found is None:
            pairs[key] = (geometry, windows)
            if len(pairs) > pairs.limit:
                self._evict_pair()
        else:
            pairs.put(key, (geometry, windows))
        return windows

    def _evict_pair(self) -> None:
        """Evict the least recently used pair, passing over up to ``KEEP_SCAN`` live pairs with
        evidence (each goes to the back of the line, as if just used).

        Without this, a client asking never-seen domains faster than a channel sends
        evicts the channel's windows between two of its queries, and the channel is
        never scored on more than one. When every pair in line carries evidence, the
        oldest goes all the same (``evicted_live``): memory stays bounded by ``max_keys``.
        """
        pairs = self._pairs
        clock = self.clock
        for _ in range(KEEP_SCAN):
            key, value = pairs.popitem(last=False)
            if not worth_keeping(value[1], clock):
                pairs.evictions += 1
                return
            pairs[key] = value
            self.spared += 1
        _key, value = pairs.popitem(last=False)
        pairs.evictions += 1
        if worth_keeping(value[1], clock):
            self.evicted_live += 1

    def find(self, key: str) -> PairWindows | None:
        """The windows of a pair key if they exist (never creates, never reorders)."""
        found = self._pairs.get(key)
        return None if found is None else found[1]

    def first_sight(self, key: tuple[str, bytes]) -> bool:
        """True the first time a (namespace, name digest) is seen (bounded memory)."""
        seen = self._seen
        if key in seen:
            seen.move_to_end(key)
            return False
        _add(seen, key, None)
        return True

    def new_domain(self, namespace: str, domain: str) -> bool:
        """True the first time a namespace asks about a registrable domain."""
        key = (namespace, domain)
        domains = self._domains
        if key in domains:
            domains.move_to_end(key)
            return False
        _add(domains, key, None)
        return True

    def record(
        self,
        tag: str,
        pair_key: str,
        windows: PairWindows,
        deltas: tuple[tuple[int, int], ...],
        member: bytes | None,
    ) -> None:
        """Hook for shared backends: a pair's head buckets just changed (called when ``shares``)."""

    # --- quarantines ----------------------------------------------------------
    def quarantine_until(self, namespace: str, domain: str) -> float:
        """Epoch seconds until which the domain is quarantined (0 if not)."""
        until: float = self._quarantines.get((namespace, domain), 0.0)
        return until

    def set_quarantine(self, namespace: str, domain: str, until: float) -> None:
        """Quarantine a domain for a namespace until ``until`` (epoch seconds)."""
        key = (namespace, domain)
        if until > self._quarantines.get(key, 0.0):
            self._quarantines.put(key, until)

    # --- lifecycle ------------------------------------------------------------
    async def start(self) -> None:
        """Start background work (none for memory)."""

    async def close(self) -> None:
        """Stop background work and release connections."""

    def stats(self) -> dict[str, Any]:
        """Sizes and counters, for metrics."""
        return {
            "backend_in_use": self.backend_in_use,
            "pairs": len(self._pairs),
            "names": len(self._seen),
            "pair_evictions": self._pairs.evictions,
            "pairs_spared": self.spared,
            "pair_evictions_live": self.evicted_live,
            "name_evictions": self._seen.evictions,
            "errors": self.errors,
            "fallbacks": self.fallbacks,
            "quarantines_active": self.active_quarantines(time.time()),
        }

    def active_quarantines(self, now: float) -> int:
        """Quarantined (namespace, domain) pairs whose quarantine has not expired."""
        return sum(1 for until in list(self._quarantines.values()) if until > now)


class MemoryState(State):
    """In-process state for one replica: bounded LRUs, nothing shared."""


class RedisState(State):
    """Local windows shared through Redis by a background flush task.

    Keys carry the Redis Cluster hash tag ``{namespace|domain}``, so every key
    of one (namespace, domain) pair lives in one slot and multi-key commands
    (``PFCOUNT k1 k2 ...``) work on a cluster:

    - ``dnsgate:{ns|domain}:<pair>:<scale>:<bucket>`` hash of counters (HINCRBY), TTL
    - ``dnsgate:{ns|domain}:<pair>:u:<bucket>`` HyperLogLog of name hashes (PFADD), TTL
    - ``dnsgate:quarantines`` sorted set of domain quarantines (member
      ``ns|domain``, score = until); a member is trimmed ``QUARANTINE_MARGIN``
      seconds after its quarantine ends. A replica reads it whole once (at
      start, after an outage); then only the changes since, from
      ``dnsgate:quarantines:log`` (member ``until|ns|domain``, scored by
      ``SEQUENCE_SCRIPT``, kept ``QUARANTINE_LOG_SECONDS``)

    - ``dnsgate:shared`` sorted set of pair key prefixes some replica shares
      (score = when it started, made strictly increasing by ``SEQUENCE_SCRIPT``):
      a pair is shared by every replica as soon as one of them has local
      evidence, so a channel whose queries alternate between replicas is judged
      on all of its queries, not half on each. Each replica reads only the
      announcements above the newest score it has read, at most
      ``max_announce_read`` a flush.

    Background work is bounded by configuration, not by past traffic: a merge
    round reads back at most ``max_merge`` pairs, each followed for at most
    ``merge_rounds`` rounds after its last local change and dropped sooner once
    a merge finds nothing changed in Redis.

    ``<pair>`` is ``n`` for the namespace pair, ``c:<client>`` for a client pair.
    If Redis fails the error is counted (``errors``), the outage counted once
    (``fallbacks``), logged once, ``backend_in_use`` becomes ``"memory"`` and the
    detector carries on with local state; the task retries every
    ``retry_seconds`` and returns to Redis when it answers.
    """

    def __init__(
        self,
        url: str,
        max_keys: int = 100_000,
        max_names: int = 500_000,
        flush_seconds: float = 0.5,
        merge_seconds: float = 2.0,
        retry_seconds: float = 1.0,
        max_pending: int = 50_000,
        socket_timeout: float = 1.0,
        prefix: str = "dnsgate",
        share_min_names: int = 4,
        max_merge: int = 512,
        hot_flush_seconds: float = 0.05,
        max_hot_merge: int = 64,
        cluster: bool = False,
        max_announce_read: int = 2048,
    ) -> None:
        super().__init__(max_keys=max_keys, max_names=max_names)
        self.shares = True
        self.url = url
        self.cluster = cluster  # url names one node of a Redis Cluster
        self.flush_seconds = flush_seconds
        self.merge_seconds = merge_seconds
        self.retry_seconds = retry_seconds
        self.max_pending = max_pending
        self.socket_timeout = socket_timeout
        self.prefix = prefix
        self.share_min_names = share_min_names
        self.max_merge = max_merge  # pairs merged back per round, most recently changed first
        self.merge_rounds = 5  # merge rounds a pair is followed after its last local change, at most
        self.max_announce_read = max_announce_read  # announcements read per flush, at most
        self.merge_round = 0  # merge rounds run
        self.backend_in_use = "redis"
        self.clients.shared = True
        self.dropped = 0  # batched updates lost while Redis was unreachable or lagging
        self.flushes = 0
        self.recoveries = 0
        # (redis key prefix, scale, bucket) -> [field deltas], members for the HLL
        self._pending: dict[tuple[str, str, int], list[int]] = {}
        self._pending_members: dict[tuple[str, int], set[bytes]] = {}
        # redis key prefix -> (windows, merge round of its last local change), oldest change first
        self._touched: dict[str, tuple[PairWindows, int]] = {}
        self._ttl: dict[str, int] = {}
        self._pending_quarantines: list[tuple[str, str, float]] = []
        # Sharing is decided for all replicas at once: a pair one replica shares is
        # announced in ``<prefix>:shared``; the others start sharing it too.
        self._candidates: LRU = LRU(max_keys)  # redis key prefix -> windows not shared yet
        self._announced: LRU = LRU(max_keys)  # prefixes another replica shares, not active here yet
        self._announce: dict[str, None] = {}  # prefixes to announce at the next flush
        self._announced_since = float("-inf")  # cursor: score of the newest announcement read
        self._quarantines_since = float("-inf")  # cursor in the quarantine log
        self._quarantines_synced = False  # the whole index read since the last outage
        self.wall: Callable[[], float] = time.time  # this replica's clock (a test sets a skewed one)
        self.adopted = 0  # pairs shared here because another replica announced them
        # Shared pairs changed since the last flush: pushed and merged back at once, so
        # replicas taking turns on one channel see each other's queries within ~hot_flush_seconds.
        self.hot_flush_seconds = hot_flush_seconds
        self.max_hot_merge = max_hot_merge
        self._hot: dict[str, PairWindows] = {}
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._last_now = 0.0
        self._client: Any = None
        self._task: asyncio.Task[None] | None = None
        self._last_merge = 0.0
        self._retry_at = 0.0

    # --- query path (synchronous, never touches the network) ------------------
    def record(
        self,
        tag: str,
        pair_key: str,
        windows: PairWindows,
        deltas: tuple[tuple[int, int], ...],
        member: bytes | None,
    ) -> None:
        """Queue a pair's head-bucket deltas for the next flush.

        Only pairs with some evidence are shared: a domain asked once or twice
        with plain names (most of them) never costs a Redis command. When a pair
        first qualifies, its whole live window is pushed, so replicas still see
        all of it, and it is announced so that every other replica shares its
        own part of that pair too, evidence or not.
        """
        if not windows.shared:
            base = f"{self.prefix}:{{{tag}}}:{pair_key}"
            if base in self._announced:
                del self._announced[base]
                self.adopted += 1
                self._promote(base, windows)
                return
            totals = windows.long.totals
            # Any encoded-looking, long-label, non-LDH or rare-type name is evidence
            # enough: waiting for several names on each replica would let a channel
            # spread over N replicas send N times the payload before anyone sees it.
            if (
                totals[Field.NEW_NAMES] < self.share_min_names
                and not totals[Field.ENCODED]
                and not totals[Field.LONG_LABEL]
                and not totals[Field.RARE_QTYPE]
                and not totals[Field.NON_LDH]
            ):
                self._candidates.put(base, windows)
                return
            self._candidates.pop(base, None)
            self._announce[base] = None
            self._promote(base, windows)
            return
        if len(self._pending) >= self.max_pending:
            self.dropped += 1
            return
        base = f"{self.prefix}:{{{tag}}}:{pair_key}"
        for scale, window in ((SHORT, windows.short), (LONG, windows.long)):
            slot = (base, scale, window.head)
            counts = self._pending.get(slot)
            if counts is None:
                counts = self._pending[slot] = [0] * Field.COUNT
                self._ttl[scale] = int(window.width * (window.size + 1)) + 1
            for field, amount in deltas:
                counts[field] = counts[field] + amount  # not +=: see Window.add()
        if member is not None and windows.short.sketches is not None:
            self._pending_members.setdefault((base, windows.short.head), set()).add(member)
        self._follow(base, windows)
        self._heat(base, windows)

    def _follow(self, base: str, windows: PairWindows) -> None:
        """Merge a pair back for the next ``merge_rounds`` rounds (it goes last: newest change)."""
        touched = self._touched
        if base in touched:
            del touched[base]
        touched[base] = (windows, self.merge_round)
        if len(touched) > self.max_keys:
            del touched[next(iter(touched))]

    @property
    def hot(self) -> int:
        """Shared pairs changed since the last flush (the flush task runs early for them)."""
        return len(self._hot)

    def _heat(self, base: str, windows: PairWindows) -> None:
        """Mark a shared pair changed: the flush task runs soon and merges it back."""
        if len(self._hot) < self.max_hot_merge:
            self._hot[base] = windows
        if self._wake is not None:
            self._wake.set()

    def _promote(self, base: str, windows: PairWindows) -> None:
        """Start sharing a pair: queue every live bucket's counters."""
        windows.shared = True
        for scale, window in ((SHORT, windows.short), (LONG, windows.long)):
            self._ttl[scale] = int(window.width * (window.size + 1)) + 1
            for bucket, row in window.counts.items():
                counts = self._pending.setdefault((base, scale, bucket), [0] * Field.COUNT)
                for field, amount in enumerate(row):
                    counts[field] = counts[field] + amount  # not +=: see Window.add()
        self._follow(base, windows)
        self._heat(base, windows)

    def set_quarantine(self, namespace: str, domain: str, until: float) -> None:
        super().set_quarantine(namespace, domain, until)
        self._pending_quarantines.append((namespace, domain, until))
        if self._wake is not None:
            self._wake.set()  # a decision other replicas should apply now, not at the next tick

    def note_time(self, now: float) -> None:
        """Latest query time seen (capture time in replay), for quarantine expiry."""
        if now > self._last_now:
            self._last_now = now

    # --- lifecycle ---------------------------------------------------------------
    async def start(self) -> None:
        """Connect (lazily; a dead Redis at start is just an outage) and start flushing."""
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        if self.cluster:
            # Redis Cluster: the pipeline is split per node by the client; every
            # multi-key command stays inside one hash tag, so one slot.
            from redis.asyncio.cluster import RedisCluster

            self._client = RedisCluster.from_url(
                self.url,
                socket_timeout=self.socket_timeout,
                socket_connect_timeout=self.socket_timeout,
            )
        else:
            self._client = aioredis.Redis.from_url(
                self.url,
                socket_timeout=self.socket_timeout,
                socket_connect_timeout=self.socket_timeout,
                retry=Retry(NoBackoff(), 0),
            )
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="dnsgate-redis-flush")

    async def close(self) -> None:
        """Flush what is pending (best effort), stop the task, close the client."""
        task, self._task = self._task, None
        if task is not None:
            self._stopping = True
            if self._wake is not None:
                self._wake.set()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self.flush()
            with contextlib.suppress(Exception):
                await self._client.aclose()
            self._client = None

    async def _run(self) -> None:
        wake = self._wake = asyncio.Event()
        last = time.monotonic()
        # The flag, not only the cancellation, ends the loop: a cancel landing inside
        # a Redis command can surface as a connection error and be swallowed there.
        while not self._stopping:
            # Pacing of a background loop, not a readiness wait: every flush_seconds,
            # or sooner (at most every hot_flush_seconds) when a shared pair changed.
            # asyncio.timeout, not wait_for: in 3.11 wait_for can swallow a
            # cancellation that arrives as the event is set, and close() would hang.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.flush_seconds):
                    await wake.wait()
            gap = self.hot_flush_seconds - (time.monotonic() - last)
            if gap > 0:
                await asyncio.sleep(gap)
            wake.clear()
            last = time.monotonic()
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let the task die; flush() already counted it
                log.exception("redis flush failed unexpectedly")

    async def flush(self, merge: bool | None = None) -> bool:
        """Push pending deltas in one pipeline, then merge remote totals back.

        Returns True when Redis answered. Safe to call directly (tests do, to
        make sharing deterministic instead of waiting for the timer).
        """
        if self._client is None:
            return False
        clock = time.monotonic()
        if self.backend_in_use != "redis" and clock < self._retry_at:
            return False
        pending, self._pending = self._pending, {}
        members, self._pending_members = self._pending_members, {}
        quarantines, self._pending_quarantines = self._pending_quarantines, []
        announce, self._announce = self._announce, {}
        hot, self._hot = self._hot, {}
        # What this replica has counted so far is all in ``pending`` or pushed before:
        # once this flush is through, Redis holds these totals of ours.
        pushed = {id(w): (w.head, list(w.totals)) for pw in hot.values() for w in (pw.short, pw.long)}
        do_merge = merge if merge is not None else clock - self._last_merge >= self.merge_seconds
        touched: dict[str, tuple[PairWindows, int]] = {}
        if do_merge:
            touched = self._due()
            for pw, _ in touched.values():
                for w in (pw.short, pw.long):
                    pushed[id(w)] = (w.head, list(w.totals))
        try:
            unchanged: set[str] = set()
            adopted = await self._push(pending, members, quarantines, announce)
            if not do_merge:
                # Pairs that just changed or were just adopted: fetch the other
                # replicas' counts now, not at the next merge round.
                touched = {base: (windows, 0) for base, windows in hot.items()}
                touched.update((base, self._touched[base]) for base in adopted if base in self._touched)
            if do_merge or touched:
                unchanged = await self._merge(touched, pushed)
            if do_merge:
                self._last_merge = clock
                # Nothing new in Redis and no local change since: stop following the pair
                # (a later local change follows it again).
                following = self._touched
                for base in unchanged:
                    entry = following.get(base)
                    if entry is not None and entry is touched.get(base):
                        del following[base]
        except Exception as exc:  # noqa: BLE001 - redis.RedisError, OSError, timeouts
            self._failed(exc, len(pending) + len(members) + len(quarantines))
            # Quarantines are decisions worth keeping: re-queue them for later.
            self._pending_quarantines = quarantines + self._pending_quarantines
            self._announce.update(announce)
            return False
        if self.backend_in_use != "redis":
            self.backend_in_use = "redis"
            self.recoveries += 1
            log.warning("redis %s is back: sharing detector state again", self.url)
        self.flushes += 1
        return True

    def _due(self) -> dict[str, tuple[PairWindows, int]]:
        """Start a merge round: the pairs to merge back, newest local change first.

        Pairs followed for ``merge_rounds`` rounds since their last local change
        are dropped; at most ``max_merge`` of the rest are returned. What a burst
        of traffic leaves behind is thus gone ``merge_rounds`` rounds later.
        """
        touched = self._touched
        oldest = self.merge_round - self.merge_rounds
        stale: list[str] = []
        for base, (_, changed) in touched.items():  # oldest change first
            if changed > oldest:
                break
            stale.append(base)
        for base in stale:
            del touched[base]
        due: dict[str, tuple[PairWindows, int]] = {}
        for base in reversed(touched):
            if len(due) >= self.max_merge:
                break
            due[base] = touched[base]
        self.merge_round += 1
        return due

    def _failed(self, exc: BaseException, lost: int) -> None:
        self.errors += 1
        self.dropped += lost
        self._retry_at = time.monotonic() + self.retry_seconds
        self._quarantines_synced = False  # the log may have moved on (or Redis restarted empty)
        if self.backend_in_use == "redis":
            self.fallbacks += 1
            self.backend_in_use = "memory"
            log.warning(
                "redis %s unavailable (%s): detector continues on local state", self.url, exc
            )

    async def _push(
        self,
        pending: dict[tuple[str, str, int], list[int]],
        members: dict[tuple[str, int], set[bytes]],
        quarantines: list[tuple[str, str, float]],
        announce: dict[str, None] | None = None,
    ) -> list[str]:
        """One pipeline: deltas, quarantines and announcements out; quarantines and announcements in.

        Returns the pairs another replica's announcement made shared here (their
        windows are merged at once rather than at the next merge round).
        """
        announce = announce or {}
        pipe = self._client.pipeline(transaction=False)
        names = Field.NAMES
        for (base, scale, bucket), counts in pending.items():
            key = f"{base}:{scale}:{bucket}"
            for field, amount in enumerate(counts):
                if amount:
                    pipe.hincrby(key, names[field], amount)
            pipe.expire(key, self._ttl.get(scale, 86400))
        for (base, bucket), found in members.items():
            key = f"{base}:u:{bucket}"
            pipe.pfadd(key, *found)
            pipe.expire(key, self._ttl.get(SHORT, 120))
        index = f"{self.prefix}:quarantines"
        changes = f"{index}:log"
        wall = self.wall()
        for namespace, domain, until in quarantines:
            pipe.zadd(index, {f"{namespace}|{domain}": until}, gt=True)
        if quarantines:
            logged = (f"{until!r}|{namespace}|{domain}" for namespace, domain, until in quarantines)
            pipe.eval(SEQUENCE_SCRIPT, 1, changes, repr(wall), *logged)
            pipe.zremrangebyscore(changes, "-inf", wall - QUARANTINE_LOG_SECONDS)
            pipe.expire(changes, int(QUARANTINE_LOG_SECONDS))  # gone when no quarantine is set for that long
        now = self._last_now or wall
        pipe.zremrangebyscore(index, "-inf", now - QUARANTINE_MARGIN)
        shared = f"{self.prefix}:shared"
        if announce:
            pipe.eval(SEQUENCE_SCRIPT, 1, shared, repr(wall), *announce)
            # The index only needs to outlive the longest window it can apply to.
            pipe.zremrangebyscore(shared, "-inf", wall - self._ttl.get(LONG, 86400))
            pipe.expire(shared, self._ttl.get(LONG, 86400))
        self.clients.queue(pipe, self.prefix, now)
        # Pull everyone's new quarantines and shared pairs in the same round trip.
        synced = self._quarantines_synced
        if synced:
            pipe.zrangebyscore(changes, _above(self._quarantines_since), "+inf",
                               start=0, num=self.max_announce_read, withscores=True)
        else:
            # The log's newest score first: a change made between the two reads is read again later.
            pipe.zrange(changes, -1, -1, withscores=True)
            pipe.zrangebyscore(index, self._last_now, "+inf", withscores=True)
        since = self._announced_since
        pipe.zrangebyscore(shared, _above(since), "+inf", start=0, num=self.max_announce_read, withscores=True)
        results = await pipe.execute()
        reads = 1 if synced else 2
        pulled = len(results) - 1 - reads - ClientQuarantines.PULL_COMMANDS
        self.clients.pulled(results[pulled], results[pulled + 1])
        if synced:
            for raw, score in results[-2]:
                entry = raw.decode() if isinstance(raw, bytes) else str(raw)
                ends, _, member = entry.partition("|")
                namespace, _, domain = member.partition("|")
                super().set_quarantine(namespace, domain, float(ends))
                self._quarantines_since = float(score)  # read in score order
        else:
            for _, score in results[-3]:
                self._quarantines_since = float(score)
            for raw, until in results[-2]:
                member = raw.decode() if isinstance(raw, bytes) else str(raw)
                namespace, _, domain = member.partition("|")
                super().set_quarantine(namespace, domain, float(until))
            self._quarantines_synced = True
        adopted: list[str] = []
        for raw, score in results[-1]:
            base = raw.decode() if isinstance(raw, bytes) else str(raw)
            self._announced_since = max(self._announced_since, float(score))  # read in score order
            if base in announce:
                continue
            windows = self._candidates.pop(base, None)
            if windows is None:
                self._announced.put(base, None)  # adopted when the pair is first seen here
            elif not windows.shared:
                self.adopted += 1
                self._promote(base, windows)
                adopted.append(base)
        return adopted

    async def _merge(
        self,
        touched: dict[str, tuple[PairWindows, int]],
        pushed: dict[int, tuple[int, list[int]]] | None = None,
    ) -> set[str]:
        """Read the pairs' totals back from Redis into their windows.

        Returns the pairs whose Redis view did not change since their last merge.
        """
        if not touched:
            return set()
        pipe = self._client.pipeline(transaction=False)
        plan: list[tuple[str, Window, int, bool]] = []
        for base, (windows, _) in touched.items():
            for scale, window, unique in (
                (SHORT, windows.short, True),
                (LONG, windows.long, False),
            ):
                head = window.head
                for bucket in range(head - window.size + 1, head + 1):
                    pipe.hmget(f"{base}:{scale}:{bucket}", *Field.NAMES)
                plan.append((base, window, head, False))
                if unique and window.sketches is not None:
                    live = range(head - window.size + 1, head + 1)
                    # execute_command: redis-py blocks the pfcount() method in cluster pipelines,
                    # though every key here shares one hash tag, so one slot.
                    pipe.execute_command("PFCOUNT", *(f"{base}:u:{b}" for b in live))
                    plan.append((base, window, head, True))
        results = await pipe.execute()
        changed: set[str] = set()
        i = 0
        for base, window, head, is_unique in plan:
            if is_unique:
                estimate = int(results[i])
                i += 1
                if estimate != window.remote_unique:
                    changed.add(base)
                window.remote_unique = estimate
                continue
            totals = [0] * Field.COUNT
            for _ in range(window.size):
                row = results[i]
                i += 1
                for field, value in enumerate(row):
                    if value is not None:
                        totals[field] += int(value)
            if totals != window.remote or head != window.remote_head:
                changed.add(base)
            window.remote = totals
            window.remote_head = head
            mine = (pushed or {}).get(id(window))
            # Our own part of ``totals``, when known for this head bucket; else the
            # plain maximum of the two views is used (never an overcount).
            window.remote_local = mine[1] if mine is not None and mine[0] == head else None
        return set(touched).difference(changed)

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        out.update(dropped=self.dropped, flushes=self.flushes, recoveries=self.recoveries, adopted=self.adopted)
        return out
