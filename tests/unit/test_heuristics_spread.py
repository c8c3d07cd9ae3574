"""How information is spread over time, clients and domains (heuristics/spread.py)."""

from __future__ import annotations

import base64
import dataclasses
import random
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heuristics import Detector, DetectorSettings, Verdict
from heuristics.features import NameFeatures
from heuristics.spread import (
    all_fresh,
    concentration,
    content_bytes,
    effective_clients,
    first_name_charge,
    note_recent_client,
    slow_drip,
)
from heuristics.state import MemoryState
from heuristics.windows import Field, PairWindows, Window
from tests.benign_corpus import first_names, sdk_telemetry, wire

T0 = 1_797_000_000.0


def _detector() -> tuple[Detector, DetectorSettings]:
    return Detector(MemoryState()), DetectorSettings()


def _b32(rng: random.Random, n: int) -> str:
    return base64.b32encode(rng.randbytes(n)).decode().rstrip("=").lower()


# --- content_bytes ------------------------------------------------------------------


def _labels(text: bytes) -> list[bytes]:
    return text.split(b".")  # labels of a name with no '.' inside a label


def test_content_bytes_charges_what_the_alphabet_carries() -> None:
    guid = str(uuid.UUID(int=random.Random(1).getrandbits(128))).encode()
    assert content_bytes([guid]) == 16  # 32 hex digits; the dashes are free
    assert content_bytes([b"0123456789"]) == 5  # ten digits, log2(10) bits each
    assert content_bytes([b"abcdefghij234567"]) == 10  # base32


def test_labels_the_domain_predicts_are_free() -> None:
    assert content_bytes(_labels(b"1f2e3d4c.events.data"), _labels(b"99aa88bb.events.data")) == 4
    assert content_bytes([b"img"], [b"img"]) == 0
    # a changed label right of an unchanged one is still charged
    assert content_bytes(_labels(b"x.api"), _labels(b"x.cdn")) == content_bytes(_labels(b"x.api"))


def test_a_dot_inside_a_label_is_an_octet_not_a_free_separator() -> None:
    """``ab.cd`` as one wire label is five octets of a binary alphabet; split at the dot it
    would read as two cheap alphanumeric labels, and could even match the last name's."""
    one_label = content_bytes([b"ab.cd", b"api"], [b"zz", b"cd", b"api"])
    assert one_label == content_bytes([b"ab.cd"]) == 5  # 5 x 7 bits; nothing predicted
    assert one_label > content_bytes(_labels(b"ab.cd.api"), _labels(b"zz.cd.api"))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=63), max_size=4), st.lists(st.binary(max_size=63), max_size=3))
def test_content_bytes_never_exceeds_the_text(labels: list[bytes], previous: list[bytes]) -> None:
    cost = content_bytes(labels, previous)
    assert 0 <= cost <= sum(len(label) for label in labels)
    assert content_bytes(labels, labels) == 0


# --- concentration and slow drip ------------------------------------------------------


def test_concentration_is_the_share_of_the_largest_clients() -> None:
    pair = PairWindows(60, 6, 86400, 24, 1024)
    pair.long.advance(T0)
    pair.long.add(Field.INFO, 4000)
    pair.clients = tuple(f"10.0.0.{i}" for i in range(40))
    even = {c: 100 for c in pair.clients}
    assert abs(concentration(pair, even, 8) - 0.2) < 1e-9
    few = dict(even, **{c: 1000 for c in pair.clients[:3]})
    assert concentration(pair, few, 8) > 0.5
    pair.clients = pair.clients[:5]
    assert concentration(pair, {}, 8) == 1.0  # fewer clients than looked at: all of it


def test_slow_drip_needs_budget_hours_and_fresh_names() -> None:
    w = Window(86400, 24)
    for hour in range(7):
        w.advance(T0 + hour * 3600)
        w.add(Field.QUERIES, 10)
        w.add(Field.NEW_NAMES, 10)
        w.add(Field.INFO, 200)
    assert slow_drip(w, 768, 6, 0.4)
    assert not slow_drip(w, 1024 * 2, 6, 0.4)  # not enough bytes
    assert not slow_drip(w, 768, 8, 0.4)  # not spread over enough hours
    w.add(Field.QUERIES, 200)  # the same names asked again and again: a pool
    assert not slow_drip(w, 768, 6, 0.4)


# --- the detector ------------------------------------------------------------------------


def _feed(det: Detector, s: DetectorSettings, rows: list[tuple[float, str, bytes, int, int]]
          ) -> dict[str, tuple[int, float, Verdict]]:
    """Domain -> (index of the query, its time, the verdict) of the first verdict."""
    flagged: dict[str, tuple[int, float, Verdict]] = {}
    for i, (ts, client, qname, qtype, rcode) in enumerate(rows):
        verdict = det.observe("ns", client, qname, qtype, ts, s)
        det.observe_response("ns", client, qname, rcode, ts + 0.02, s)
        if verdict is not None:
            flagged.setdefault(verdict.domain, (i, ts, verdict))
    return flagged


def test_telemetry_from_forty_clients_is_not_a_channel() -> None:
    det, s = _detector()
    rows = sdk_telemetry(seed=13, start=T0)  # tens of KB over the namespace, ~2 KB a client
    assert len({row[1] for row in rows}) == 40
    assert _feed(det, s, rows) == {}


def test_the_same_information_from_four_clients_is() -> None:
    det, s = _detector()
    rng = random.Random(4)
    clients = [f"10.9.0.{i}" for i in range(1, 5)]
    rows = []
    for i in range(400):  # 20 bytes a name, one name every 20 s, round robin over 4 clients
        rows.append((T0 + 20 * i, clients[i % 4], wire(f"{_b32(rng, 20)}.sync.blue-harbor.net"), 1, 0))
    index, _, verdict = _feed(det, s, rows)["blue-harbor.net"]
    assert "info_budget" in verdict.reasons
    assert verdict.evidence["scope"] == "namespace"
    assert verdict.evidence["top_clients_share"] == 1.0
    assert 20 * (index + 1) <= 4096  # payload sent before the verdict


def test_a_kilobyte_a_day_is_caught_within_the_day() -> None:
    det, s = _detector()
    rng = random.Random(1)
    rows = []
    for i in range(240):  # 10 bytes every 12 minutes: 1.2 KB/day, under every daily budget
        rows.append((T0 + 720 * i + rng.uniform(-60, 60), "10.8.0.3",
                     wire(f"{_b32(rng, 10)}.img.quiet-river.org"), 1, 0))
    index, ts, verdict = _feed(det, s, rows)["quiet-river.org"]
    assert ts - T0 < 86400
    assert 10 * (index + 1) < 1200
    assert verdict.evidence["budget_rule"] == "slow"
    assert verdict.evidence["active_buckets"] >= s.slow_min_buckets  # type: ignore[operator]


def test_a_pool_reasked_as_ttls_expire_is_not_a_slow_drip() -> None:
    det, s = _detector()
    rng = random.Random(2)
    pool = [wire(f"{_b32(rng, 10)}.edge.pool-cdn.net") for _ in range(100)]
    rows = []
    for i in range(1440):  # 100 names (1 KB of random labels), one look-up a minute, all day
        rows.append((T0 + 60 * i, "10.8.0.4", pool[rng.randrange(len(pool))], 1, 0))
    assert _feed(det, s, rows) == {}


def test_rotating_domains_does_not_reset_the_client_meter() -> None:
    det, s = _detector()
    rng = random.Random(3)
    domains = [f"{name}.com" for name in ("amber-field", "cold-lake", "far-hill", "iron-gate", "tall-reed")]
    rows = []
    for i in range(400):  # 20 bytes a name, every 30 s, the next domain each query
        rows.append((T0 + 30 * i, "10.8.0.5", wire(f"{_b32(rng, 20)}.api.{domains[i % 5]}"), 1, 0))
    flagged = _feed(det, s, rows)
    index, _, verdict = min(flagged.values(), key=lambda hit: hit[0])
    assert verdict.evidence["scope"] == "client_domains"
    # each domain alone would need the whole per-domain budget: five times as much
    assert 20 * (index + 1) <= 4096


def test_base64_case_is_charged_when_the_client_keeps_it() -> None:
    """A base64 channel whose case reaches the detector is charged more information than
    the same channel lowercased: the case is a bit per letter the deflate of lowercased
    text cannot see. A 0x20 forwarder's mixed-case domain gets no such charge."""
    rng = random.Random(3)
    names = [
        base64.urlsafe_b64encode(rng.randbytes(27)).decode().rstrip("=") + ".up.b64chan.example"
        for _ in range(400)
    ]

    def first_alert(raw_of: object) -> tuple[int, int]:
        det, s = _detector()
        for i, text in enumerate(names):
            raw = raw_of(text)  # type: ignore[operator]
            qname = wire(text)
            verdict = det.observe("ns", "10.0.0.7", qname, 1, T0 + i * 5.0, s, raw)
            det.observe_response("ns", "10.0.0.7", qname, 3, T0 + i * 5.0 + 0.02, s)
            if verdict is not None and verdict.alert:
                return i, int(verdict.evidence["info_bytes"])  # type: ignore[call-overload]
        raise AssertionError("never alerted")

    def sent(text: str) -> bytes:
        return _dns_name(text)

    def disguised(text: str) -> bytes:
        return _dns_name(text.replace("b64chan.example", "B64cHaN.eXaMpLe"))

    lowered = first_alert(lambda _text: None)
    kept = first_alert(sent)
    assert kept[0] <= lowered[0]
    # 36 base64 characters carry ~29 letters: ~3.6 more bytes a name
    assert kept[1] >= lowered[1] + 3 * (kept[0] + 1)
    assert first_alert(disguised) == lowered  # dressed up as 0x20: priced as before, never less


def _dns_name(text: str) -> bytes:
    import dns.name

    return dns.name.from_text(text).to_wire()


# --- rotation over many domains, a few names each --------------------------------------


def _rotation(rng: random.Random, domains: int, per_domain: int, every: float, labels: int = 3
              ) -> list[tuple[float, str, bytes, int, int]]:
    """One client, ``domains`` never-seen domains with ``per_domain`` names each, 30 bytes of
    base32 a label, then never again."""
    rows = []
    for i in range(domains * per_domain):
        data = ".".join(_b32(rng, 30) for _ in range(labels))
        rows.append((T0 + every * i, "10.8.0.6", wire(f"{data}.sync{i // per_domain}-relay.net"), 1, 0))
    return rows


def _first(flagged: dict[str, tuple[int, float, Verdict]]) -> tuple[int, float, Verdict]:
    return min(flagged.values(), key=lambda hit: hit[0])


def test_rotating_over_many_domains_with_two_names_each_is_charged() -> None:
    """The first ``spread_skip_names`` names of a domain used to be free in the all-domain
    meters: 60 domains x 2 names of 90 bytes (10.8 KB) went by unmetered."""
    det, s = _detector()
    rows = _rotation(random.Random(5), domains=60, per_domain=2, every=1.0)
    index, _, verdict = _first(_feed(det, s, rows))
    assert verdict.evidence["scope"] == "client_domains"
    assert "info_budget" in verdict.reasons
    assert verdict.evidence["new_names"] == index + 1  # every name of the rotation was metered
    assert 90 * (index + 1) <= 4096


def test_a_slow_rotation_with_one_name_a_domain_is_caught_within_the_day() -> None:
    det, s = _detector()
    rows = _rotation(random.Random(6), domains=60, per_domain=1, every=900.0)  # 90 B every 15 min
    index, ts, verdict = _first(_feed(det, s, rows))
    assert verdict.evidence["scope"] == "client_domains"
    assert verdict.evidence["budget_rule"] == "slow"
    assert ts - T0 < 86400
    assert 90 * (index + 1) <= 4096


def test_first_names_of_many_sites_and_senders_are_free() -> None:
    """A browser's www/cdn/api of 3,000 sites and a mail server's DKIM (named selectors and
    bulk-mail tokens) and DMARC look-ups for 2,000 senders, in one day: no verdict."""
    det, s = _detector()
    assert _feed(det, s, first_names()) == {}


def test_a_browser_asking_up_to_six_host_names_of_each_new_site_is_free() -> None:
    """A page load asks up to six host names of a site (www, static, api, cdn ...): the
    allowance covers a domain's first spread_skip_names (6) names. With 3, names 4-6 of
    3,000 sites were charged in full and their domains flagged."""
    det, s = _detector()
    assert s.spread_skip_names == 6
    rows = first_names(seed=37, senders=0, names_per_site=6)
    assert _feed(det, s, rows) == {}
    assert len(_feed(Detector(MemoryState()), dataclasses.replace(s, spread_skip_names=3), rows)) > 100


def test_a_first_name_is_charged_only_what_it_carries_beyond_the_allowance() -> None:
    www = NameFeatures(wire("www.example.com"))
    dkim = NameFeatures(wire("selector1._domainkey.example.com"))
    token = NameFeatures(wire(f"{_b32(random.Random(7), 20)}._domainkey.example.com"))
    channel = NameFeatures(wire(".".join(_b32(random.Random(8), 30) for _ in range(3)) + ".example.com"))
    assert first_name_charge(www, 0, 24) == first_name_charge(dkim, 0, 24) == 0
    assert first_name_charge(token, 0, 24) <= 4  # a 32-character token: 20 bytes and a label
    assert first_name_charge(channel, 0, 24) == 90 - 24


# --- rotation split over a few clients of the namespace ----------------------------------


def _split_rotation(rng: random.Random, clients: int, every: float, domains: int = 60
                    ) -> list[tuple[float, str, bytes, int, int]]:
    """A rotation over ``domains`` never-seen domains, 2 names each (2 labels of 24 bytes in
    base32: ~25 bytes a name beyond the allowance), the domains shared out over ``clients``
    clients of the namespace in turn, as the adaptive generator's ``rotation`` does."""
    hosts = [f"10.8.1.{i + 10}" for i in range(clients)]
    rows = []
    for i in range(domains * 2):
        data = ".".join(_b32(rng, 24) for _ in range(2))
        rows.append((T0 + every * i, hosts[(i // 2) % clients], wire(f"{data}.sync{i // 2}-relay.net"), 1, 0))
    return rows


def test_effective_clients_is_how_many_equal_parts() -> None:
    assert effective_clients([]) == effective_clients([0, 0]) == 0.0
    assert effective_clients([500]) == 1.0
    assert effective_clients([300, 300, 300]) == 3.0
    assert 1.0 < effective_clients([1000, 10, 10, 10]) < 1.1  # one client carries nearly all
    assert effective_clients([40] * 30) == 30.0


def test_the_namespace_meter_lists_its_latest_clients() -> None:
    pair = PairWindows(60, 6, 86400, 24, 1024, unique=False)
    for i in range(100):
        note_recent_client(pair, f"10.0.0.{i}")
    note_recent_client(pair, "10.0.0.50")
    assert len(pair.clients) == 64
    assert pair.clients[-1] == "10.0.0.50"  # a client charging again moves to the end
    assert pair.clients.count("10.0.0.50") == 1
    assert "10.0.0.0" not in pair.clients  # the oldest made room


@pytest.mark.parametrize("clients", [2, 3, 8])
@pytest.mark.parametrize("every", [0.25, 600.0])
def test_a_rotation_split_over_a_few_clients_is_one_channel(clients: int, every: float) -> None:
    """Each client's all-domain meter sees its share only (a bulk split: under the client's
    short budget; a paced one: 10 or 15 hours to its slow-drip bar); the namespace's
    first-names meter, carried by that many clients' worth, is judged like one client's and
    alerts as a single client sending it all would."""
    det, s = _detector()
    index, ts, verdict = _first(_feed(det, s, _split_rotation(random.Random(5), clients, every)))
    alone = _first(_feed(*_detector(), _split_rotation(random.Random(5), 1, every)))
    assert verdict.evidence["scope"] == "namespace_first_names"
    assert "info_budget" in verdict.reasons
    assert verdict.evidence["effective_clients"] == pytest.approx(clients, abs=0.2)
    assert index == alone[0]  # as soon as from one client
    assert 48 * (index + 1) <= 4096
    assert ts - T0 < 86400
    if every > 1:
        assert verdict.evidence["budget_rule"] == "slow"


def test_a_rotation_split_over_more_clients_keeps_the_namespace_budgets() -> None:
    """Over more than ``spread_clients`` clients' worth, the namespace's first-names meter is
    not judged like a client's: the namespace meter's budgets and no slow drip are left."""
    det, s = _detector()
    assert _feed(det, s, _split_rotation(random.Random(5), 9, 600.0)) == {}


def test_first_names_of_many_sites_from_eight_clients_are_free() -> None:
    """Six browsers' first names of 6,000 sites and two mail servers' DKIM (named selectors,
    bulk-mail tokens) and DMARC look-ups for 2,000 senders, in one day: few enough clients for
    the namespace's first-names meter to be judged like one client's, and no verdict."""
    det, s = _detector()
    rows = first_names(seed=31, sites=6000, senders=2000, browsers=6, mail_servers=2)
    assert len({row[1] for row in rows}) == 8
    assert _feed(det, s, rows) == {}


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.binary(min_size=1, max_size=63), min_size=1, max_size=3),
    st.integers(0, 400),
    st.integers(0, 200),
)
def test_a_first_names_charge_is_never_negative_nor_above_what_it_carries(
    labels: list[bytes], case: int, free: int
) -> None:
    qname = b"".join(bytes([len(label)]) + label for label in labels) + wire("example.com")
    feats = NameFeatures(qname)
    carried = content_bytes(feats.subdomain_labels()) + (case + 7) // 8
    charge = first_name_charge(feats, case, free)
    assert 0 <= charge <= carried
    assert charge == max(0, carried - free)


# --- a channel spread over a fleet: names all asked once ---------------------------------


def _fleet_channel(clients: int, name_bytes: int, every: float, seed: int, pick_at_random: bool,
                   domain: str = "grey-owl-relay.net") -> list[tuple[float, str, bytes, int, int]]:
    """One channel over ``clients`` clients of a namespace: each name carries ``name_bytes``
    bytes in base32 under a fixed parent, asked once (A), answered NOERROR; the clients take
    turns or one is picked at random per name."""
    rng = random.Random(seed)
    hosts = [f"10.70.{i // 200}.{i % 200 + 10}" for i in range(clients)]
    rows = []
    for i in range(8192 // name_bytes):  # twice the 4 KB target
        client = rng.choice(hosts) if pick_at_random else hosts[i % clients]
        rows.append((T0 + every * i, client, wire(f"{_b32(rng, name_bytes)}.img.{domain}"), 1, 0))
    return rows


def test_all_fresh_is_new_names_against_queries() -> None:
    window = Window(86400.0, 24)
    assert not all_fresh(window, 0.9)  # nothing asked yet
    window.advance(T0)
    window.add_all(((Field.QUERIES, 2), (Field.NEW_NAMES, 1)))  # a name asked A and AAAA
    assert not all_fresh(window, 0.9)
    assert all_fresh(window, 0.5)
    window.add_all(((Field.QUERIES, 18), (Field.NEW_NAMES, 18)))
    assert all_fresh(window, 0.9)


def test_a_channel_over_twenty_four_clients_is_alerted() -> None:
    """24 clients each carry a twenty-fourth: no client nears its budget and the 8 largest
    carry a third, which is what telemetry looks like to the concentration test; but every
    name is asked once, and the namespace budget counts."""
    det, s = _detector()
    rows = _fleet_channel(24, 20, 30.0, 1, False)
    index, _, verdict = _feed(det, s, rows)["grey-owl-relay.net"]
    assert "info_budget" in verdict.reasons
    assert verdict.evidence["scope"] in ("namespace", "namespace_domains")
    assert 20 * (index + 1) <= 4096


def test_the_alert_says_the_names_were_fresh() -> None:
    det, s = _detector()
    rows = _fleet_channel(24, 20, 30.0, 1, False)
    verdict = _feed(det, s, rows)["grey-owl-relay.net"][2]
    if verdict.evidence["scope"] == "namespace":
        assert verdict.evidence["new_names_per_query"] == 1.0
        assert "top_clients_share" not in verdict.evidence


@settings(max_examples=12, deadline=None)
@given(clients=st.integers(17, 48), name_bytes=st.integers(12, 36), pace=st.floats(0.0001, 1.0),
       seed=st.integers(0, 1000), pick_at_random=st.booleans())
def test_a_fleet_channel_is_alerted_within_4_kb(clients: int, name_bytes: int, pace: float, seed: int,
                                               pick_at_random: bool) -> None:
    """Any fleet channel carrying at least 4 KB a day (slower ones stay under the daily
    namespace budget: docs/detection.md, what still gets through)."""
    every = pace * name_bytes * 86400 / 4096
    det, s = _detector()
    rows = _fleet_channel(clients, name_bytes, every, seed, pick_at_random)
    flagged = _feed(det, s, rows)
    assert "grey-owl-relay.net" in flagged
    index = flagged["grey-owl-relay.net"][0]
    assert name_bytes * (index + 1) <= 4096


@pytest.mark.parametrize("seed", range(13, 19))
def test_sdk_telemetry_of_every_provider_is_not_a_channel(seed: int) -> None:
    det, s = _detector()
    assert _feed(det, s, sdk_telemetry(seed=seed, start=T0)) == {}


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 1000), clients=st.integers(30, 60), single_stack=st.floats(0.0, 0.5))
def test_telemetry_stays_unflagged_when_some_clients_ask_only_a(seed: int, clients: int,
                                                               single_stack: float) -> None:
    """Telemetry from 30-60 clients (fewer are concentrated enough for the namespace budget
    to count anyway) with up to half the clients asking only A (an IPv4-only stack) is at most
    2/3 new names a query, under ``spread_fresh_ratio``."""
    det, s = _detector()
    rows = sdk_telemetry(seed=seed, start=T0, clients=clients)
    rng = random.Random(seed)
    v4_only = {c for c in sorted({row[1] for row in rows}) if rng.random() < single_stack}
    rows = [row for row in rows if not (row[1] in v4_only and row[3] == 28)]
    assert _feed(det, s, rows) == {}
