"""How information is spread: over time, over clients, over domains.

Three questions the per-pair budgets alone cannot answer, each cheap to ask
because it is asked only about never-seen names:

* **Over time** (low and slow): a client that keeps sending never-seen names to
  a domain, hour after hour, carries a channel even when a day's worth stays
  under the daily budget. :func:`slow_drip` asks whether the long window holds
  ``slow_budget_bytes`` of new text spread over at least ``slow_min_buckets``
  buckets, with names that are not re-asked (fresh: a pool of CDN names is
  re-resolved as TTLs expire, a channel's names never are).
* **Over clients** (telemetry versus a spread channel): a namespace budget adds
  every client's new text. Telemetry from forty pods sends a few unique IDs
  each; a channel split over a few clients sends a lot each.
  :func:`concentration` is the share of a (namespace, domain)'s information
  carried by its ``spread_clients`` largest contributors: the namespace budget
  is evidence only when that share is at least ``concentration``, or when the
  pair is nearly all fresh names (:func:`all_fresh`): a provider's domain also
  carries names its clients re-ask (collector hosts, login), and a dual-stack
  client asks A and AAAA of every name, unique IDs included, so telemetry
  scores at most 0.5 new names a query; a channel spread over many clients
  asks each of its names once, 1.0.
* **Over domains** (rotation): a client rotating its channel over several rare
  domains resets each domain's meter. A per-client meter over every rare
  domain (asked by at most ``spread_clients`` clients of the namespace) charges
  each new name against the client's own recent text. A domain's first
  ``spread_skip_names`` new names are charged only what they carry beyond
  ``spread_free_bytes`` each (:func:`first_name_charge`): a browser's first
  names of a site (``www``, ``cdn``), a mail server's DKIM and DMARC look-ups
  per sender carry a few bytes and are free; a channel rotating over many
  domains with one or two names each carries a hundred bytes a name and pays
  for all but the allowance.
* **Over domains and clients**: a rotation split over a few clients of the
  namespace fills each client's meter only by its share. The namespace's
  first-names meter takes what the domains' first names are charged beyond the
  allowance, from every client, and is judged like one client's meter when at
  most ``spread_clients`` clients' worth carry it (:func:`effective_clients`,
  read from those clients' meters). A rotation puts everything it sends in
  first names; a fleet's first names are free and leave it empty.

:func:`content_bytes` bounds the charge of a name by what its alphabet can
carry: a GUID is 16 bytes of information, not the ~28 its 36 hex-and-dash
characters deflate to, so unique-ID telemetry is charged what it carries.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Final

from .features import NameFeatures, content_prefix, unpredicted
from .windows import Field, PairWindows, Window

__all__ = [
    "MAX_CLIENTS",
    "active_buckets",
    "all_fresh",
    "concentration",
    "content_bytes",
    "effective_clients",
    "first_name_charge",
    "note_client",
    "note_recent_client",
    "slow_drip",
]

MAX_CLIENTS: Final = 64  # clients remembered per (namespace, domain); beyond, it is "many"


def content_bytes(labels: Sequence[bytes], previous: Sequence[bytes] = ()) -> int:
    """Upper bound of the information in a name's subdomain ``labels`` (wire labels, in order).

    Labels equal to ``previous``'s label at the same place from the right (the
    domain's last new name: ``events.data`` in ``<id>.events.data``, a parent
    such as ``img``) are predicted and cost nothing. Each other label is split
    at '-' (GUIDs, word lists, hostnames use it between parts) and each part
    costs length x log2(its alphabet) bits; digits-only parts cost log2(10) a
    digit. Separators cost nothing: their places are what the length of the
    parts already tells. Labels are taken as the wire has them: a '.' inside a
    label is one of its octets (and makes its alphabet binary), not a separator.
    """
    if previous:
        labels = labels[: unpredicted(labels, previous)]
    return math.ceil(content_prefix(labels)[-1] / 8)


def first_name_charge(feats: NameFeatures, case: int, free: int) -> int:
    """At most what one of a domain's first new names costs in the all-domain meters.

    Its text bound (:func:`content_bytes`, no label predicted) plus ``case``
    bits of letter case, less the ``free`` allowance; never negative. The meters
    charge at most this (deflate and the client's last name only lower it). A
    name whose octets and case cannot exceed the allowance (``www``, ``_dmarc``,
    ``selector1._domainkey``) is answered from its length alone.
    """
    sub = feats.subdomain
    extra = (case + 7) // 8
    if len(sub) + extra <= free:  # content_bytes never exceeds the octets
        return 0
    return max(0, feats.content_bound() + extra - free)


def note_client(pair: PairWindows, client: str) -> int:
    """Remember that ``client`` asked a never-seen name under this namespace pair.

    Returns how many distinct clients the pair has seen (``MAX_CLIENTS + 1``
    once it stopped counting).
    """
    clients = pair.clients
    if client in clients:
        return len(clients)
    if len(clients) > MAX_CLIENTS:
        return len(clients)
    pair.clients = (*clients, client)
    return len(pair.clients)


def note_recent_client(pair: PairWindows, client: str) -> None:
    """Remember that ``client`` charged the meter ``pair``: the ``MAX_CLIENTS`` latest, oldest first.

    Unlike :func:`note_client` (a namespace pair's clients, counted once and
    then "many"), the list moves on: a client that charged long ago makes room
    for the one charging now, so the namespace's first-names meter, which lives
    as long as the namespace, still lists the clients of a channel that starts
    late in a busy namespace.
    """
    clients = pair.clients
    if clients and clients[-1] == client:
        return
    if client in clients:
        clients = tuple(c for c in clients if c != client)
    elif len(clients) >= MAX_CLIENTS:
        clients = clients[1:]
    pair.clients = (*clients, client)


def effective_clients(client_info: Iterable[int]) -> float:
    """How many clients' worth the information is spread over: (sum x)^2 / sum x^2.

    The inverse Simpson index of the clients' shares: k for k clients carrying
    equal parts, ~1 when one client carries nearly all of it, 0 when none
    carries anything.
    """
    total = 0
    squares = 0
    for info in client_info:
        if info > 0:
            total += info
            squares += info * info
    if squares == 0:
        return 0.0
    return total * total / squares


def concentration(pair: PairWindows, client_info: dict[str, int], top: int) -> float:
    """Share of the pair's long-window information carried by its ``top`` largest clients.

    ``client_info`` holds the long-window information of each client the pair
    remembers (the caller reads it from the client pairs). Clients past
    ``MAX_CLIENTS`` are not listed, so their part only lowers the share.
    """
    total = pair.long.total(Field.INFO)
    if total <= 0:
        return 0.0
    if len(pair.clients) <= top:
        return 1.0
    largest = sorted(client_info.values(), reverse=True)[:top]
    return min(1.0, sum(largest) / total)


def all_fresh(window: Window, ratio: float) -> bool:
    """True when never-seen names are at least ``ratio`` of the window's queries (and there are some)."""
    new = window.total(Field.NEW_NAMES)  # every replica's, where the pair is shared
    return new > 0 and new >= ratio * window.total(Field.QUERIES)


def active_buckets(window: Window) -> int:
    """Buckets of the window in which never-seen names arrived."""
    new = Field.NEW_NAMES
    return sum(1 for row in window.counts.values() if row[new] > 0)


def slow_drip(window: Window, budget: int, min_buckets: int, fresh_ratio: float) -> bool:
    """True when the window holds ``budget`` bytes of new text spread over time in fresh names.

    Fresh: never-seen names are at least ``fresh_ratio`` of the queries (A and
    AAAA of one name count twice, so 0.5 is what a one-shot unique name scores).
    """
    if window.total(Field.INFO) < budget:
        return False
    queries = window.total(Field.QUERIES)
    if queries and window.total(Field.NEW_NAMES) < fresh_ratio * queries:
        return False
    return active_buckets(window) >= min_buckets
