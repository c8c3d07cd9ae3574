"""Client quarantines: a workload (namespace, client address) cut off until a deadline.

Domain quarantines (``State.set_quarantine``) stop one name's domain for a
namespace; a client quarantine stops every query of one client. The resolver
sets one when a client asks for something its namespace never declared
(``on_undeclared: quarantine``); an operator lists and lifts them through the
admin API.

:class:`ClientQuarantines` is the local view the query path reads (a dict
lookup). With the Redis backend, ``RedisState`` shares it from its background
flush: every change since the last round is sent, then the whole live set is
read back in the same pipeline, so a quarantine set or lifted on one replica
reaches every other within a flush period. Keys:

- ``<prefix>:client-quarantines``: sorted set, member ``namespace|client``, score = until;
- ``<prefix>:client-quarantines:why``: hash, same member -> JSON ``{"name", "since"}``.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["ClientQuarantine", "ClientQuarantines"]


@dataclass(frozen=True, slots=True)
class ClientQuarantine:
    """One quarantined client: until when, since when, and the name that triggered it."""

    namespace: str
    client: str
    until: float
    since: float
    name: str

    def to_dict(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "client": self.client, "until": round(self.until, 3),
                "since": round(self.since, 3), "name": self.name}


def _member(namespace: str, client: str) -> str:
    return f"{namespace}|{client}"


def _split(member: str) -> tuple[str, str]:
    # A client is an IP address in text: it never holds '|', a namespace might.
    namespace, _, client = member.rpartition("|")
    return namespace, client


class ClientQuarantines:
    """The quarantined clients this replica knows of, bounded to ``limit`` entries."""

    PULL_COMMANDS: Final = 2  # commands ``queue`` appends last, whose results ``pulled`` reads

    MAX_CHANGES = 10_000  # unsent changes kept while Redis is away

    def __init__(self, limit: int = 100_000, shared: bool = False) -> None:
        self.limit = limit
        self.shared = shared  # True when a backend sends changes on (RedisState)
        # Oldest change first: when full, the quarantine set or extended longest ago makes room, O(1).
        self._by_key: OrderedDict[tuple[str, str], ClientQuarantine] = OrderedDict()
        # Changes not yet confirmed by Redis, in order: ("set", quarantine) or ("lift", (ns, client)).
        self._changes: list[tuple[str, Any]] = []
        self._sent = 0
        self.started = 0  # quarantines started on this replica
        self.lifted = 0  # quarantines lifted on this replica (admin call)
        self.blocks = 0  # queries denied because their client was quarantined

    def __len__(self) -> int:
        return len(self._by_key)

    def until(self, namespace: str, client: str) -> float:
        """Epoch seconds until which the client is quarantined (0 if not)."""
        found = self._by_key.get((namespace, client))
        return found.until if found is not None else 0.0

    def set(self, quarantine: ClientQuarantine, *, share: bool = True) -> None:
        """Quarantine a client (extending, never shortening, a quarantine it is already in)."""
        key = (quarantine.namespace, quarantine.client)
        old = self._by_key.get(key)
        if old is not None and old.until >= quarantine.until:
            return
        if old is None and len(self._by_key) >= self.limit:
            self._by_key.popitem(last=False)
        self._by_key[key] = quarantine
        self._by_key.move_to_end(key)
        if share:
            self._change("set", quarantine)

    def lift(self, namespace: str, client: str) -> ClientQuarantine | None:
        """End a client's quarantine now; the lifted entry, or None when there was none."""
        found = self._by_key.pop((namespace, client), None)
        self._change("lift", (namespace, client))
        if found is not None:
            self.lifted += 1
        return found

    def _change(self, op: str, item: Any) -> None:
        if not self.shared:
            return
        if len(self._changes) >= self.MAX_CHANGES:
            del self._changes[0]
            self._sent = max(0, self._sent - 1)
        self._changes.append((op, item))

    def active(self, now: float) -> list[ClientQuarantine]:
        """Quarantines still running at ``now``, soonest to end first."""
        live = [q for q in list(self._by_key.values()) if q.until > now]
        return sorted(live, key=lambda q: (q.until, q.namespace, q.client))

    def expire(self, now: float) -> None:
        for key, q in list(self._by_key.items()):
            if q.until <= now:
                del self._by_key[key]

    # --- sharing through Redis (called by RedisState's flush) --------------------------
    def queue(self, pipe: Any, prefix: str, now: float) -> None:
        """Append this round's changes, then the two reads of the shared set, to a pipeline."""
        index, why = f"{prefix}:client-quarantines", f"{prefix}:client-quarantines:why"
        self._sent = len(self._changes)
        for op, item in self._changes[: self._sent]:
            if op == "set":
                member = _member(item.namespace, item.client)
                pipe.zadd(index, {member: item.until}, gt=True)
                pipe.hset(why, member, json.dumps({"name": item.name, "since": item.since}))
            elif op == "lift":
                member = _member(*item)
                pipe.zrem(index, member)
                pipe.hdel(why, member)
            else:  # "forget": the reason of a quarantine that already ended
                pipe.hdel(why, _member(*item))
        if now > 0:
            pipe.zremrangebyscore(index, "-inf", now)
        # The ones ending last first, at most ``limit`` of them: the local view stays bounded.
        pipe.zrevrangebyscore(index, "+inf", max(now, 0.0), start=0, num=self.limit, withscores=True)
        pipe.hgetall(why)

    def pulled(self, live: list[tuple[bytes | str, float]], reasons: dict[Any, Any]) -> None:
        """Replace the local view with Redis's, keeping changes made since ``queue``."""
        del self._changes[: self._sent]
        self._sent = 0
        fresh: OrderedDict[tuple[str, str], ClientQuarantine] = OrderedDict()
        for raw, until in live:
            member = raw.decode() if isinstance(raw, bytes) else str(raw)
            namespace, client = _split(member)
            info: dict[str, Any] = {}
            blob = reasons.get(raw if isinstance(raw, bytes) else member.encode(), reasons.get(member))
            if blob is not None:
                try:
                    info = json.loads(blob)
                except ValueError:
                    info = {}
            fresh[(namespace, client)] = ClientQuarantine(
                namespace, client, float(until), float(info.get("since", 0.0)), str(info.get("name", "")),
            )
        self._by_key = fresh
        for op, item in self._changes:  # made while the round trip was in flight
            if op == "set":
                self.set(item, share=False)
            elif op == "lift":
                self._by_key.pop(item, None)
        # Reasons of quarantines that ended: forget them with the next round.
        for raw in reasons:
            member = raw.decode() if isinstance(raw, bytes) else str(raw)
            if _split(member) not in fresh:
                self._change("forget", _split(member))
