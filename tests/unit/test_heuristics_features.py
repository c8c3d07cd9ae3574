"""Name features: wire parsing, presentation text, PSL, alphabets, entropy."""

from __future__ import annotations

import base64
import importlib
import os
import random
import string

import dns.name
import pytest
from hypothesis import given
from hypothesis import strategies as st

from heuristics import DetectorSettings, SettingsError, features, name_to_text, registrable_domain
from heuristics.features import (
    Alphabet,
    FeatureCache,
    alphabet_of,
    case_bits,
    expected_entropy,
    features_of,
    shannon_entropy,
    translated_alphabet,
)
from heuristics.names import DEFAULT_EXEMPTIONS, labels_of


def wire(text: str) -> bytes:
    return dns.name.from_text(text).to_wire().lower()


def test_labels_carry_any_octet() -> None:
    name = b"\x05ab\xbc\xfd\x00\x01x\x00"
    assert labels_of(name) == [b"ab\xbc\xfd\x00", b"x"]
    with pytest.raises(ValueError, match="label"):
        labels_of(b"\x09short\x00")


def test_name_to_text_escapes_and_omits_trailing_dot() -> None:
    assert name_to_text(wire("www.example.com.")) == "www.example.com"
    assert name_to_text(b"\x00") == "."
    raw = b"\x04a\xbc.\x20\x03net\x00"
    text = name_to_text(raw)
    assert text == "a\\188\\.\\032.net"
    # Round-trips through dnspython's parser.
    assert dns.name.from_text(text + ".").to_wire() == raw


@pytest.mark.parametrize(
    ("name", "domain"),
    [
        ("a.b.example.co.uk", "example.co.uk"),
        ("bucket.s3.amazonaws.com", "bucket.s3.amazonaws.com"),
        ("user.github.io", "user.github.io"),
        ("d1234abcd.cloudfront.net", "d1234abcd.cloudfront.net"),
        ("x.lambda-url.us-east-1.on.aws", "x.lambda-url.us-east-1.on.aws"),
        ("api.github.com.ns.svc.cluster.local", "cluster.local"),
        ("4.3.2.1.in-addr.arpa", "3.2.1.in-addr.arpa"),  # a /24's reverse zone (tests/unit/test_reverse_names.py)
        ("com", "com"),
    ],
)
def test_registrable_domain_uses_private_psl(name: str, domain: str) -> None:
    assert registrable_domain(wire(name)) == domain


def test_registrable_domain_of_binary_labels() -> None:
    name = b"\x03\xbc\xbd\xfe\x01i\x0ddevlab-iodine\x03net\x00"
    assert registrable_domain(name) == "devlab-iodine.net"


def test_default_exemptions_are_shipped() -> None:
    for domain in ("sophosxl.net", "avqs.mcafee.com", "zen.spamhaus.org"):
        assert domain in DEFAULT_EXEMPTIONS
    # Not arpa: the detector skips well-formed reverse lookups itself and scores the rest.
    assert not {"arpa", "in-addr.arpa", "ip6.arpa"} & DEFAULT_EXEMPTIONS


@pytest.mark.parametrize(
    ("label", "alphabet"),
    [
        (b"0123abcdef", Alphabet.HEX),
        (b"mzxw6ytboi2a", Alphabet.BASE32),
        (b"hello9world", Alphabet.ALNUM),
        (b"my-load_balancer", Alphabet.LDH),
        (b"agvsbg8+d29y/bgq=", Alphabet.BASE64),
        (b"ab\xbc\xfd", Alphabet.BINARY),
    ],
)
def test_alphabet_classes(label: bytes, alphabet: str) -> None:
    assert alphabet_of(label) == alphabet


def test_expected_entropy_matches_simulation_for_short_strings() -> None:
    rng = random.Random(0)
    for k, n in ((16, 16), (32, 16), (16, 44), (32, 63), (38, 8)):
        alphabet = bytes(range(k))
        sims = [shannon_entropy(bytes(rng.choice(alphabet) for _ in range(n))) for _ in range(3000)]
        assert abs(sum(sims) / len(sims) - expected_entropy(k, n)) < 0.02, (k, n)
    # Facts from DETECTION.md: hex can't reach 4.0; 16 base32 chars ~ 3.6.
    assert expected_entropy(16, 44) < 4.0
    assert 3.5 < expected_entropy(32, 16) < 3.7


def test_hex_and_short_base32_look_encoded_but_words_do_not() -> None:
    rng = random.Random(4)
    hex16 = features_of(wire(f"{rng.randbytes(8).hex()}.t.example.com"))
    assert hex16.encoded_shape(10, 0.8) is not None
    b32 = base64.b32encode(rng.randbytes(10)).decode().lower().rstrip("=")
    assert features_of(wire(f"{b32}.example.com")).encoded_shape(10, 0.8) is not None
    for benign in (
        "thequickbrownfoxjumpsoverthelazydog.example.com",  # 4.5 bits, still words
        "my-loadbalancer-1234567890.us-east-1.elb.amazonaws.com",
        "r1---sn-4g5e6nze.googlevideo.com",
        "selector1._domainkey.example.com",
        "e12345.dscb.akamaiedge.net",
    ):
        assert features_of(wire(benign)).encoded_shape(10, 0.8) is None, benign


def test_joined_labels_form_one_run() -> None:
    rng = random.Random(5)
    chunk = "".join(rng.choice(string.ascii_lowercase + "234567") for _ in range(150))
    name = ".".join([chunk[:63], chunk[63:126], chunk[126:]]) + ".t.example.com"
    feats = features_of(wire(name))
    shape = feats.encoded_shape(10, 0.8)
    assert shape is not None
    assert shape.length == 150 + 1
    assert feats.max_label == 63


def test_non_ldh_octets_are_encoded() -> None:
    feats = features_of(b"\x08\xbc\xbd\xbe\xbf\xc0\xc1\xc2\xc3\x01i\x07example\x03net\x00")
    assert feats.non_ldh
    assert feats.encoded_shape(10, 0.8) is not None


def test_feature_cache_is_bounded_lru() -> None:
    cache = FeatureCache(max_names=3)
    names = [wire(f"n{i}.example.com") for i in range(5)]
    for name in names:
        cache.get(name)
    assert len(cache) == 3
    cache.get(names[-1])
    assert cache.hits == 1
    assert cache.misses == 5


def test_settings_from_mapping_validates() -> None:
    s = DetectorSettings.from_mapping(
        {"exempt": ["Corp.Example.", "x.org"], "client_budget_long_bytes": 8192,
         "rare_qtypes": ["NULL", 65399], "entropy_ratio": 0.75}
    )
    assert s.exempt == ("corp.example", "x.org")
    assert s.rare_qtypes == (10, 65399)
    assert DetectorSettings.from_mapping({}) == DetectorSettings()
    for bad, key in (
        ({"no_such": 1}, "no_such"),
        ({"client_budget_long_bytes": "4k"}, "client_budget_long_bytes"),
        ({"entropy_ratio": 1.5}, "entropy_ratio"),
        ({"rare_qtypes": ["BOGUS"]}, "rare_qtypes"),
        ({"exempt": "corp.example"}, "exempt"),
        ({"default_exemptions": "yes"}, "default_exemptions"),
        ({"short_window_seconds": 90000}, "short_window_seconds"),
    ):
        with pytest.raises(SettingsError) as info:
            DetectorSettings.from_mapping(bad)
        assert info.value.key == key


def _raw(text: str) -> bytes:
    return dns.name.from_text(text).to_wire()  # case as written


def test_case_bits_count_letters_of_mixed_case_labels_only() -> None:
    raw = _raw("aBcD12eF.www.Upload.evil.test")
    feats = features_of(raw.lower())
    # "aBcD12eF" mixes case: 6 letters; "www" is all lower, "Upload" mixes case: 6 letters
    assert case_bits(raw, feats) == 12
    assert case_bits(_raw("ABCDEF.www.evil.test"), features_of(wire("abcdef.www.evil.test"))) == 0
    assert case_bits(_raw("abc.EVIL.TEST"), features_of(wire("abc.evil.test"))) == 0  # no mixed label


def test_case_bits_ignore_case_randomising_forwarders() -> None:
    """DNS 0x20 mixes the registrable domain's case too: nothing is charged for case then."""
    raw = _raw("aBcD12eF.eViL.TeSt")
    assert case_bits(raw, features_of(raw.lower())) == 0


@given(st.binary(min_size=1, max_size=40), st.lists(st.booleans(), min_size=40, max_size=40))
def test_case_bits_are_bounded_by_the_letters_of_the_subdomain(label: bytes, upper: list[bool]) -> None:
    """Whatever octets and case a client picks, the charge is at most a bit per subdomain letter."""
    lowered = label.lower()
    qname = bytes([len(lowered)]) + lowered + b"\x04evil\x04test\x00"
    raw = bytes([len(label)]) + bytes(
        b - 32 if 0x61 <= b <= 0x7A and up else b for b, up in zip(lowered, upper, strict=False)
    ) + b"\x04evil\x04test\x00"
    feats = features_of(qname)
    bits = case_bits(raw, feats)
    letters = sum(1 for b in lowered if 0x61 <= b <= 0x7A)
    assert 0 <= bits <= letters
    assert case_bits(qname, feats) == 0  # the lowercased name itself carries no case


# `make test` builds heuristics/_labels.c with the compiled modules; `make NATIVE=0 test`
# runs everything from source (tests/integration/test_native.py decides the same way).
EXPECT_NATIVE = os.environ.get("DNSGATE_NATIVE", "1") != "0"

# Octets a label's alphabet test, entropy and alternations turn on: the class boundaries
# (digits, a-f, a-v, '2'-'7', '-', '_', '+', '/', '='), case, and every other octet.
_LABEL_OCTETS = st.one_of(
    st.sampled_from(b"0123456789abcdefghijklmnopqrstuvwxyz-_+/=ABZ.\\\x00\x7f\x80\xff"),
    st.integers(0, 255),
)


def test_label_shapes_use_the_extension_in_a_compiled_run() -> None:
    if EXPECT_NATIVE:
        extension = importlib.import_module("heuristics._labels")
        assert features._label_shape is extension.label_shape
    else:  # NATIVE=0 runs the source: nothing is built
        with pytest.raises(ImportError):
            importlib.import_module("heuristics._labels")
        assert features._label_shape is None


@given(st.lists(_LABEL_OCTETS, max_size=255).map(bytes))
def test_the_extensions_label_shape_is_the_pythons(data: bytes) -> None:
    """heuristics/_labels.c gives, for any octets, what the Python gives: the same alphabet
    class, the same entropy to the last bit, the same alternations and non-LDH test."""
    label_shape = features._label_shape
    if label_shape is None:
        assert not EXPECT_NATIVE, "heuristics._labels is not built"
        return
    index, entropy, transitions, non_ldh = label_shape(data)
    assert features._ALPHABETS[index] == translated_alphabet(data)
    assert entropy == shannon_entropy(data)  # exactly: the same sums in the same order
    assert transitions == features._transitions(data)
    assert non_ldh is bool(data.translate(None, b"-0123456789_abcdefghijklmnopqrstuvwxyz"))


def test_the_extension_leaves_long_texts_to_the_python() -> None:
    """256 octets or more (no label or subdomain of a wire name) are the Python's."""
    label_shape = features._label_shape
    data = bytes(range(256))
    if label_shape is not None:
        with pytest.raises(ValueError, match="256"):
            label_shape(data)
        with pytest.raises(TypeError, match="bytes"):
            label_shape("text")  # type: ignore[arg-type]
    assert alphabet_of(data) == Alphabet.BINARY
    assert features._shape(data).entropy == shannon_entropy(data) == 8.0
