"""Features of one query name, computed once per name and memoised.

Everything here depends only on the name, never on settings or time, so the
result can be cached in a bounded LRU and shared by every namespace.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

from .names import _label_key, labels_of, registrable_domain

__all__ = [
    "Alphabet",
    "LabelShape",
    "NameFeatures",
    "FeatureCache",
    "alphabet_of",
    "expected_entropy",
    "shannon_entropy",
    "features_of",
]

_HEX = frozenset(b"0123456789abcdef")
_DIGITS = frozenset(b"0123456789")
_LETTERS = frozenset(b"abcdefghijklmnopqrstuvwxyz")
_ALNUM = _DIGITS | _LETTERS
_LDH = _ALNUM | frozenset(b"-_")
_B64_EXTRA = frozenset(b"+/=")
# Lowercase base32 flavours: RFC 4648, iodine's a-z0-5, and base32hex.
_BASE32_SETS = (
    _LETTERS | frozenset(b"234567"),
    _LETTERS | frozenset(b"012345"),
    _DIGITS | frozenset(b"abcdefghijklmnopqrstuv"),
)


class Alphabet:
    """Alphabet classes a label can be drawn from, with their symbol counts.

    The sizes are what a *lowercased* random label of that encoding can use:
    base64 loses its case when the resolver lowercases names, leaving 26
    letters, 10 digits and two of ``+/=``.
    """

    HEX = "hex"
    BASE32 = "base32"
    ALNUM = "alnum"
    LDH = "ldh"
    BASE64 = "base64"
    BINARY = "binary"  # any octet outside LDH and base64: base128 and friends
    SIZE = {HEX: 16, BASE32: 32, ALNUM: 36, LDH: 38, BASE64: 38, BINARY: 128}


def alphabet_of(label: bytes) -> str:
    """The smallest alphabet class that contains every octet of ``label``."""
    chars = set(label)
    if chars <= _HEX:
        return Alphabet.HEX
    if chars <= _ALNUM:
        for base32 in _BASE32_SETS:
            if chars <= base32:
                return Alphabet.BASE32
        return Alphabet.ALNUM
    if chars <= _LDH:
        return Alphabet.LDH
    if chars <= _LDH | _B64_EXTRA:
        return Alphabet.BASE64
    return Alphabet.BINARY


def shannon_entropy(data: bytes) -> float:
    """Shannon entropy of the octet distribution of ``data``, bits per octet."""
    n = len(data)
    if n == 0:
        return 0.0
    counts: dict[int, int] = {}
    for b in data:
        counts[b] = counts.get(b, 0) + 1
    h = 0.0
    for c in counts.values():
        p = c / n
        h -= p * math.log2(p)
    return h


@lru_cache(maxsize=4096)
def expected_entropy(alphabet_size: int, length: int) -> float:
    """Expected plug-in Shannon entropy of a uniform random string.

    Exact for every length: each symbol's count is Binomial(length, 1/k), and by
    linearity E[H] = -k * sum_c P(c) * (c/n) * log2(c/n). Short strings cannot
    reach log2(k) (16 random base32 chars score about 3.6, not 5), which is why a
    fixed "entropy > 4" rule misses hex and flags nothing short.
    """
    n, k = length, alphabet_size
    if n <= 1 or k <= 1:
        return 0.0
    p = 1.0 / k
    total = 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    for c in range(1, n + 1):
        log_binom = math.lgamma(n + 1) - math.lgamma(c + 1) - math.lgamma(n - c + 1)
        prob = math.exp(log_binom + c * log_p + (n - c) * log_q)
        if prob < 1e-300:
            continue
        x = c / n
        total -= prob * x * math.log2(x)
    return k * total


def _transitions(label: bytes) -> int:
    """Digit/letter alternations: random encodings mix them, words and numbers don't."""
    count = 0
    prev = -1
    for b in label:
        kind = 1 if b in _DIGITS else (2 if b in _LETTERS else 0)
        if kind and prev and kind != prev:
            count += 1
        if kind:
            prev = kind
    return count


@dataclass(frozen=True, slots=True)
class LabelShape:
    """How encoded one label (or a run of joined labels) looks."""

    length: int
    alphabet: str
    entropy: float
    expected: float  # expected entropy of a random string of this length and alphabet
    transitions: int  # digit<->letter alternations
    non_ldh: bool  # holds octets outside letters, digits, '-' and '_'

    @property
    def ratio(self) -> float:
        """Observed over expected entropy (1.0 = as random as the alphabet allows)."""
        return self.entropy / self.expected if self.expected > 0 else 0.0

    def looks_encoded(self, min_length: int, entropy_ratio: float) -> bool:
        """True when the label reads like encoded data rather than a word or a number.

        Requires enough length, entropy close to a random string of the same
        alphabet and length, and (for letter/digit alphabets) digits and letters
        interleaved the way encoders produce them. Octets outside LDH are encoded
        data by themselves.
        """
        if self.non_ldh and self.alphabet == Alphabet.BINARY:
            return self.length >= 4
        if self.length < min_length or self.ratio < entropy_ratio:
            return False
        if self.alphabet == Alphabet.BASE64:
            return True
        need = max(2, self.length // 10)
        if self.alphabet == Alphabet.LDH:
            # base64url keeps '-' and '_'; hostnames use them between words, so ask more.
            return self.length >= 2 * min_length and self.transitions >= max(3, self.length // 8)
        return self.transitions >= need


def _shape(data: bytes) -> LabelShape:
    alphabet = alphabet_of(data)
    h = shannon_entropy(data)
    size = Alphabet.SIZE[alphabet]
    return LabelShape(
        length=len(data),
        alphabet=alphabet,
        entropy=h,
        expected=expected_entropy(size, len(data)),
        transitions=_transitions(data),
        non_ldh=not set(data) <= _LDH,
    )


@dataclass(frozen=True, slots=True)
class NameFeatures:
    """Settings-independent facts about one query name."""

    domain: str  # registrable domain, text
    suffixes: tuple[str, ...]  # name suffixes from the TLD down to a few labels below the domain
    subdomain: bytes  # labels left of the registrable domain, joined with '.'
    digest: bytes  # stable 8-byte hash of the whole name (HLL member, seen-set key)
    total_length: int  # wire length
    label_count: int
    max_label: int  # longest label, octets
    shapes: tuple[LabelShape, ...]  # subdomain labels, then the joined run if >1 label
    digit_ratio: float  # digits over subdomain octets
    non_ldh: bool  # any subdomain octet outside LDH (and '_')

    def encoded_shape(self, min_length: int, entropy_ratio: float) -> LabelShape | None:
        """The most random-looking label or joined run that looks encoded, if any."""
        best: LabelShape | None = None
        for shape in self.shapes:
            if shape.looks_encoded(min_length, entropy_ratio) and (
                best is None or shape.length > best.length
            ):
                best = shape
        return best


def features_of(qname: bytes) -> NameFeatures:
    """Compute :class:`NameFeatures` for a lowercased wire-format name."""
    labels = labels_of(qname)
    domain = registrable_domain(qname)
    domain_labels = 0 if domain == "." else domain.count(".") + 1
    # Suffix texts from the TLD down to three labels below the registrable domain:
    # enough for exemptions such as avqs.mcafee.com or zen.spamhaus.org.
    depth = min(len(labels), domain_labels + 3)
    suffixes = tuple(
        ".".join(_label_key(label) for label in labels[len(labels) - d :])
        for d in range(1, depth + 1)
    )
    sub_labels = labels[: max(0, len(labels) - domain_labels)]
    subdomain = b".".join(sub_labels)
    shapes = [_shape(label) for label in sub_labels if label]
    if len(sub_labels) > 1:
        # Encoders split long payloads over several labels: judge the joined run too.
        shapes.append(_shape(b"".join(sub_labels)))
    joined = b"".join(sub_labels)
    digits = sum(1 for b in joined if b in _DIGITS)
    return NameFeatures(
        domain=domain,
        suffixes=suffixes,
        subdomain=subdomain,
        digest=hashlib.blake2b(qname, digest_size=8).digest(),
        total_length=len(qname),
        label_count=len(labels),
        max_label=max((len(label) for label in labels), default=0),
        shapes=tuple(shapes),
        digit_ratio=digits / len(joined) if joined else 0.0,
        non_ldh=not set(joined) <= _LDH,
    )


class FeatureCache:
    """Bounded LRU of :class:`NameFeatures` keyed by wire name."""

    def __init__(self, max_names: int = 65536) -> None:
        self.max_names = max_names
        self._cache: OrderedDict[bytes, NameFeatures] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, qname: bytes) -> NameFeatures:
        """Features of ``qname``, computed on first sight."""
        cache = self._cache
        found = cache.get(qname)
        if found is not None:
            cache.move_to_end(qname)
            self.hits += 1
            return found
        self.misses += 1
        found = features_of(qname)
        cache[qname] = found
        if len(cache) > self.max_names:
            cache.popitem(last=False)
        return found

    def __len__(self) -> int:
        return len(self._cache)
