"""Windows, HyperLogLog, information budget, suppression and severity."""

from __future__ import annotations

import importlib
import os
import random
import zlib
from collections.abc import Callable

import dns.name
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heuristics import Detector, DetectorSettings, windows
from heuristics.hll import HyperLogLog
from heuristics.state import MemoryState
from heuristics.windows import Field, InformationEstimator, Window, deflate_wbits, zlib_deflated_size

# `make test` builds heuristics/_deflate.c with the compiled modules; `make NATIVE=0 test`
# runs everything from source (tests/integration/test_native.py decides the same way).
EXPECT_NATIVE = os.environ.get("DNSGATE_NATIVE", "1") != "0"


def wire(text: str) -> bytes:
    return dns.name.from_text(text).to_wire().lower()


def test_window_slides_and_expires_in_caller_time() -> None:
    w = Window(60, 6)
    for t in range(0, 60, 5):
        w.advance(1000.0 + t)
        w.add(Field.QUERIES)
    assert w.total(Field.QUERIES) == 12
    w.advance(1000.0 + 70)  # live buckets now cover 1020..1079: 1000..1019 expired
    assert w.total(Field.QUERIES) == 8
    w.advance(1000.0 + 65)  # late packet: counted in the current bucket, no rewind
    w.add(Field.QUERIES)
    assert w.total(Field.QUERIES) == 9
    w.advance(1000.0 + 10_000)  # long gap: everything expired
    assert w.total(Field.QUERIES) == 0


def test_hll_is_exact_when_small_and_close_when_large() -> None:
    rng = random.Random(1)
    small = HyperLogLog()
    for _ in range(3):
        for i in range(50):
            small.add(i * 0x9E3779B97F4A7C15 % 2**64)
    assert small.count() == 50
    big = HyperLogLog()
    for _ in range(200_000):
        big.add(rng.getrandbits(64))
    assert abs(big.count() - 200_000) / 200_000 < 0.1
    assert big.memory_bytes() == 1024
    halves = [HyperLogLog(), HyperLogLog()]
    for i in range(20_000):
        halves[i % 2].add(rng.getrandbits(64))
    assert abs(HyperLogLog.union_count(halves) - 20_000) / 20_000 < 0.1


def test_information_estimator_charges_fresh_bytes_not_repeats() -> None:
    est = InformationEstimator(1024)
    rng = random.Random(2)
    random_cost = sum(est.charge(rng.randbytes(16).hex().encode()) for _ in range(50))
    est2 = InformationEstimator(1024)
    counter_cost = sum(est2.charge(f"host-{i:04d}.corp".encode()) for i in range(50))
    assert random_cost > 50 * 12  # ~8 bytes of entropy per hex label, deflate overhead on top
    assert counter_cost < random_cost / 3


def _deflated_in_32k(context: bytes, text: bytes) -> int:
    """The compressed size the estimator charged before its window was sized to the context."""
    if context:
        comp = zlib.compressobj(6, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY, context)
    else:
        comp = zlib.compressobj(6, zlib.DEFLATED, -15, 8)
    return min(len(text), len(comp.compress(text)) + len(comp.flush()))


_OCTETS = st.sampled_from([b"ab", b"abcdefghijklmnopqrstuvwxyz0123456789.-", b"0123456789abcdef", bytes(range(256))])


@settings(max_examples=300, deadline=None)
@given(
    octets=_OCTETS,
    context_bytes=st.sampled_from([64, 512, 1024, 3000]),
    texts=st.lists(st.tuples(st.integers(1, 255), st.integers(0, 2**32 - 1), st.booleans()), min_size=1, max_size=12),
)
def test_the_sized_window_charges_what_the_32k_window_charged(
    octets: bytes, context_bytes: int, texts: list[tuple[int, int, bool]]
) -> None:
    """The window is sized to hold the context, a name and deflate's lookahead: no match is
    lost, so every charge equals the 32 KiB window's, whatever the octets (repeats included)."""
    assert deflate_wbits(context_bytes) > -15 or context_bytes > 32768 - 517
    est = InformationEstimator(context_bytes)
    for length, seed, repeat in texts:
        rng = random.Random(seed)
        if repeat and est.recent:  # a piece of the context again, repeated: long matches, long chains
            start = rng.randrange(len(est.recent))
            text = (est.recent[start : start + rng.randint(1, 64)] * 8)[:length]
        else:
            text = bytes(rng.choice(octets) for _ in range(length))
        expected = _deflated_in_32k(est.recent, text)
        assert est.charge(text) == expected


def _deflated_size() -> Callable[[bytes, bytes, int], int]:
    """heuristics/_deflate.c's function in a compiled run (not built: the import fails the test), else zlib's."""
    if EXPECT_NATIVE:
        from heuristics._deflate import deflated_size

        return deflated_size
    return zlib_deflated_size


def _compressobj_size(dictionary: bytes, text: bytes, wbits: int) -> int:
    """What the estimator charged with zlib.compressobj, a new compressor for every text."""
    if dictionary:
        comp = zlib.compressobj(6, zlib.DEFLATED, wbits, 8, zlib.Z_DEFAULT_STRATEGY, dictionary)
    else:
        comp = zlib.compressobj(6, zlib.DEFLATED, wbits, 8)
    return len(comp.compress(text)) + len(comp.flush())


_WBITS = [sign * bits for bits in range(9, 16) for sign in (-1, 1)]  # raw deflate and zlib-wrapped, every window


def test_the_estimator_deflates_with_the_extension_in_a_compiled_run() -> None:
    if EXPECT_NATIVE:
        extension = importlib.import_module("heuristics._deflate")
        assert extension.ZLIB_RUNTIME_VERSION == zlib.ZLIB_RUNTIME_VERSION  # what keeps the sizes the same
        assert windows.deflated_size is extension.deflated_size
    else:  # NATIVE=0 runs the source: nothing is built
        with pytest.raises(ImportError):
            importlib.import_module("heuristics._deflate")
        assert windows.deflated_size is zlib_deflated_size


def _octets(min_size: int, max_size: int) -> st.SearchStrategy[bytes]:
    """Any octets, one octet repeated, only high octets, or a few name characters."""
    return st.one_of(
        st.binary(min_size=min_size, max_size=max_size),
        st.tuples(st.integers(0, 255), st.integers(min_size, max_size)).map(lambda t: bytes([t[0]]) * t[1]),
        st.lists(st.integers(128, 255), min_size=min_size, max_size=max_size).map(bytes),
        st.lists(st.sampled_from(b"ab0.-"), min_size=min_size, max_size=max_size).map(bytes),
    )


@st.composite
def _dictionary_and_text(draw: st.DrawFn) -> tuple[bytes, bytes]:
    dictionary = draw(_octets(0, 1024))
    how = draw(st.sampled_from(["fresh", "tail", "repeat"]))
    if how == "tail" and dictionary:  # the text is the dictionary's end (all of it when longer)
        return dictionary, dictionary[-draw(st.integers(1, 300)) :]
    if how == "repeat" and dictionary:  # a piece of the dictionary over and over: long matches, long chains
        start = draw(st.integers(0, len(dictionary) - 1))
        piece = dictionary[start : start + draw(st.integers(1, 64))]
        return dictionary, (piece * 300)[: draw(st.integers(1, 300))]
    return dictionary, draw(_octets(1, 300))


@settings(max_examples=400, deadline=None)
@given(case=_dictionary_and_text())
def test_deflated_size_is_what_zlib_compressobj_gives(case: tuple[bytes, bytes]) -> None:
    """One compressor per window, reset between calls (heuristics/_deflate.c), gives the size a new
    compressor gives, whatever the octets and whatever the calls before left in it."""
    dictionary, text = case
    deflated_size = _deflated_size()
    for wbits in _WBITS:
        assert deflated_size(dictionary, text, wbits) == _compressobj_size(dictionary, text, wbits), wbits


def test_deflated_size_across_calls_and_past_its_output_buffer() -> None:
    deflated_size = _deflated_size()
    rng = random.Random(5)
    big_dictionary = rng.randbytes(40_000)  # longer than every window: deflate keeps the window's worth
    big_text = rng.randbytes(100_000)  # deflates to far more than one output buffer's worth
    cases = [
        (b"", b""),
        (b"", b"x"),
        (b"host-0001.corp", b"host-0002.corp"),
        (big_dictionary, big_text),
        (big_dictionary[-1024:], b"\xff" * 300),
        (b"a" * 1024, b"a" * 300),
        (b"", big_text[:255]),
    ]
    for _ in range(2):  # and again, on the compressors the first round left behind
        for dictionary, text in [*cases, *reversed(cases)]:
            for wbits in _WBITS:
                assert deflated_size(dictionary, text, wbits) == _compressobj_size(dictionary, text, wbits), wbits


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("", b"x", -9), TypeError),
        ((b"", "x", -9), TypeError),
        ((bytearray(b"ab"), b"x", -9), TypeError),
        ((b"ab", memoryview(b"x"), -9), TypeError),
        ((None, b"x", -9), TypeError),
        ((b"", b"x", -9.0), TypeError),
        ((b"", b"x"), TypeError),
        ((b"", b"x", -9, 6), TypeError),
        ((b"", b"x", -8), ValueError),
        ((b"", b"x", 8), ValueError),
        ((b"", b"x", 0), ValueError),
        ((b"", b"x", -16), ValueError),
        ((b"", b"x", 16), ValueError),
        ((b"", b"x", 31), ValueError),
        ((b"", b"x", 2**70), ValueError),
        ((b"", b"x", -(2**70)), ValueError),
    ],
)
def test_deflated_size_takes_bytes_and_a_window_zlib_has(args: tuple[object, ...], error: type[Exception]) -> None:
    for deflated_size in (_deflated_size(), zlib_deflated_size):
        with pytest.raises(error):
            deflated_size(*args)  # type: ignore[arg-type]
    assert _deflated_size()(b"ab", b"x", -9) == _compressobj_size(b"ab", b"x", -9)  # and it still works


def test_the_window_grows_with_the_context() -> None:
    assert deflate_wbits(1024) == -11  # 1024 + 255 + 262 octets fit in 2 KiB
    assert deflate_wbits(0) == -10
    assert deflate_wbits(4096) == -13
    assert deflate_wbits(1 << 20) == -15  # capped at zlib's largest


@pytest.mark.parametrize("suppress", [0.0, 300.0], ids=["scored_every_query", "decided"])
def test_flood_of_unique_names_keeps_memory_bounded(suppress: float) -> None:
    state = MemoryState(max_keys=1000, max_names=20_000)
    det = Detector(state, max_names=5_000)
    s = DetectorSettings(suppress_seconds=suppress)
    rng = random.Random(3)
    verdicts = 0
    for i in range(60_000):
        name = wire(f"{rng.getrandbits(64):x}.flood{i % 7}.example.net")
        if det.observe("ns", f"10.0.{i % 250}.1", name, 1, 5000.0 + i / 1000, s):
            verdicts += 1
    assert len(det.features) <= 5_000
    stats = state.stats()
    assert stats["names"] <= 20_000
    assert stats["pairs"] <= 1000
    assert verdicts > 59_000  # a flood is itself detected, and stays so
    if suppress:
        # Flagged: every later query of the window cost a counter, nothing more.
        assert det.decided_queries == verdicts - 1
        assert det.estimated < 1_000
    else:
        pair = state.pair("ns|example.net", det._settings(s).geometry)
        assert pair.short.unique() > 10_000  # HLL still counts past the seen-set cap


def _base32_name(rng: random.Random, domain: str) -> bytes:
    import base64

    return wire(base64.b32encode(rng.randbytes(30)).decode().rstrip("=") + "." + domain)


def test_flagged_pair_costs_a_counter_until_the_window_ends() -> None:
    det = Detector(MemoryState())
    s = DetectorSettings()
    rng = random.Random(4)
    verdicts = []
    for i in range(400):
        v = det.observe("ns", "10.0.0.9", _base32_name(rng, "t.evil.example"), 16, 100.0 + i, s)
        if v is not None:
            verdicts.append((i, v))
    first_i, first = verdicts[0]
    assert first.alert
    assert not first.repeat
    assert "encoding" in first.reasons
    assert first.evidence["encoded_names"] >= 8
    # For one short window: the same decision on every query, unscored, no figures.
    hold = s.short_window_seconds
    inside = [v for i, v in verdicts if first_i < i < first_i + hold]
    assert len(inside) == hold - 1
    assert all(v.repeat and not v.alert and v.evidence == {} for v in inside)
    assert all(v.domain == first.domain and v.severity == first.severity for v in inside)
    assert det.decided_queries == len([v for _, v in verdicts if v.repeat])
    # Then the pair is scored again (a repeat alert stays suppressed for suppress_seconds) ...
    assert any(not v.repeat for i, v in verdicts if i >= first_i + hold)
    # ... and alerts again after it, saying how many queries cost only a counter.
    after = [v for i, v in verdicts if i >= first_i + s.suppress_seconds and v.alert]
    assert after
    assert not after[0].repeat
    assert after[0].evidence["decided_queries"] >= hold - 1


def test_severity_grows_with_evidence() -> None:
    det = Detector(MemoryState())
    s = DetectorSettings(suppress_seconds=5.0)
    rng = random.Random(4)
    alerts = []
    for i in range(400):
        v = det.observe("ns", "10.0.0.9", _base32_name(rng, "t.evil.example"), 16, 100.0 + i, s)
        if v is not None and v.alert:
            alerts.append(v)
    order = ["info", "warning", "high", "critical"]
    levels = [order.index(v.severity) for v in alerts]
    assert levels[0] == 1
    assert max(levels) >= 2


def test_single_heavy_name_alone_never_alerts() -> None:
    det = Detector(MemoryState())
    s = DetectorSettings()
    name = wire("a" * 20 + "0123456789abcdef0123456789abcdef01234567.cdn.example.com")
    for i in range(1000):  # the same long, random-looking name, over and over
        assert det.observe("ns", "10.0.0.1", name, 1, 10.0 + i, s) is None


def test_nxdomain_ratio_adds_evidence() -> None:
    det = Detector(MemoryState())
    s = DetectorSettings(suppress_seconds=0.0)  # score every query: watch the evidence grow
    rng = random.Random(6)
    alerted = []
    for i in range(14):
        name = wire(f"{rng.randbytes(20).hex()}.c.blocked.example")
        v = det.observe("ns", "10.0.0.2", name, 1, 50.0 + i, s)
        if v is not None and v.alert:
            alerted.append(v)
        det.observe_response("ns", "10.0.0.2", name, 3, 50.0 + i, s)
    with_ratio = [v for v in alerted if "nxdomain_ratio" in v.reasons]
    assert with_ratio, [v.reasons for v in alerted]
    assert with_ratio[0].evidence["nxdomain_ratio"] == 1.0


def test_suppressed_repeats_carry_the_decision_without_figures() -> None:
    det = Detector(MemoryState())
    s = DetectorSettings()
    rng = random.Random(8)
    verdicts = []
    for i in range(60):
        name = wire(f"{rng.randbytes(24).hex()}.c.repeat.example")
        v = det.observe("ns", "10.0.0.9", name, 16, 10.0 + i, s)
        if v is not None:
            verdicts.append(v)
    assert verdicts
    assert verdicts[0].alert
    assert verdicts[0].evidence["info_bytes"] > 0
    quiet = [v for v in verdicts if not v.alert]
    assert quiet
    assert all(v.domain == "repeat.example" and v.evidence == {} for v in quiet)


def test_exempt_cluster_and_user_domains() -> None:
    det = Detector(MemoryState())
    s = DetectorSettings.from_mapping(
        {"exempt": ["vendor.example"], "cluster_domains": ["k8s.lan"]}
    )
    rng = random.Random(7)
    for i in range(500):
        for suffix in ("x.vendor.example", "svc.k8s.lan", "zen.spamhaus.org", "sophosxl.net"):
            assert det.observe("ns", "10.0.0.3", _base32_name(rng, suffix), 16, float(i), s) is None
    assert det.exempted == 2000


def test_qtype_null_with_encoded_names_is_high() -> None:
    det = Detector(MemoryState())
    s = DetectorSettings()
    rng = random.Random(8)
    v = None
    for i in range(4):
        name = _base32_name(rng, "i.tun.example")
        found = det.observe("ns", "10.0.0.4", name, 10, float(i), s)
        if found is not None and found.alert:
            v = found
    assert v is not None
    assert "qtype" in v.reasons
    assert v.evidence["rare_qtype_names"] >= 3


def test_quarantine_is_time_bounded() -> None:
    det = Detector(MemoryState())
    det.quarantine("ns", "evil.example", until=1000.0)
    assert det.quarantined("ns", "evil.example", 999.0)
    assert not det.quarantined("ns", "evil.example", 1000.5)
    assert not det.quarantined("other", "evil.example", 999.0)
