"""Features of one query name, computed once per name and memoised.

Everything here depends only on the name, never on settings or time, so the
result can be cached in a bounded LRU and shared by every namespace.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from .names import domain_text, is_reverse_lookup, label_offsets, name_to_text, registrable_offset

__all__ = [
    "Alphabet",
    "FeatureCache",
    "LabelShape",
    "NameFeatures",
    "alphabet_of",
    "case_bits",
    "content_prefix",
    "expected_entropy",
    "features_of",
    "shannon_entropy",
    "unpredicted",
]

_HEX = frozenset(b"0123456789abcdef")
_DIGITS = frozenset(b"0123456789")
_LETTERS = frozenset(b"abcdefghijklmnopqrstuvwxyz")
_ALNUM = _DIGITS | _LETTERS
_LDH = _ALNUM | frozenset(b"-_")
_B64_EXTRA = frozenset(b"+/=")
_LDH_BYTES: Final = bytes(sorted(_LDH))
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

    HEX: Final = "hex"
    BASE32: Final = "base32"
    ALNUM: Final = "alnum"
    LDH: Final = "ldh"
    BASE64: Final = "base64"
    BINARY: Final = "binary"  # any octet outside LDH and base64: base128 and friends
    SIZE: ClassVar[dict[str, int]] = {HEX: 16, BASE32: 32, ALNUM: 36, LDH: 38, BASE64: 38, BINARY: 128}


def alphabet_of(label: bytes) -> str:
    """The smallest alphabet class that contains every octet of ``label``."""
    if _label_shape is not None and len(label) < _SHAPE_MAX:
        return _ALPHABETS[_label_shape(label)[0]]
    return translated_alphabet(label)


def translated_alphabet(label: bytes) -> str:
    """:func:`alphabet_of` without heuristics/_labels.c (and what it is checked against)."""
    # Deleting a class's octets leaves nothing exactly when the label is drawn from it
    # (one pass in C each, no set built).
    if not label.translate(None, _HEX_BYTES):
        return Alphabet.HEX
    if not label.translate(None, _ALNUM_BYTES):
        for base32 in _BASE32_BYTES:
            if not label.translate(None, base32):
                return Alphabet.BASE32
        return Alphabet.ALNUM
    if not label.translate(None, _LDH_BYTES):
        return Alphabet.LDH
    if not label.translate(None, _B64_BYTES):
        return Alphabet.BASE64
    return Alphabet.BINARY


_HEX_BYTES: Final = bytes(sorted(_HEX))
_ALNUM_BYTES: Final = bytes(sorted(_ALNUM))
_BASE32_BYTES: Final = tuple(bytes(sorted(chars)) for chars in _BASE32_SETS)
_B64_BYTES: Final = bytes(sorted(_LDH | _B64_EXTRA))
_BITS: Final = {name: math.log2(size) for name, size in Alphabet.SIZE.items()}  # bits a symbol of each class


def unpredicted(labels: Sequence[bytes], previous: Sequence[bytes]) -> int:
    """How many of ``labels``, from the left, differ from ``previous``'s label at the same
    place from the right (see heuristics.spread.content_bytes): the rest are predicted."""
    keep = len(labels)
    for i in range(1, min(keep, len(previous)) + 1):
        if labels[-i] != previous[-i]:
            break
        keep -= 1
    return keep


def content_prefix(labels: Sequence[bytes]) -> list[float]:
    """Running totals of the bits ``labels`` can carry: entry k covers the first k labels.

    Each label is split at '-' and each part costs length x log2(its alphabet)
    bits, digits-only parts log2(10) a digit (see heuristics.spread.content_bytes,
    which rounds an entry up to bytes). The totals are added in label order, so
    entry k is exactly the sum a loop over the first k labels would give.
    """
    prefix = [0.0]
    bits = 0.0
    for label in labels:
        for part in label.split(b"-"):
            if not part:
                continue
            if part.isdigit():
                bits += len(part) * 3.33
                continue
            bits += len(part) * _BITS[alphabet_of(part)]
        prefix.append(bits)
    return prefix


_UPPER_BYTES: Final = bytes(range(0x41, 0x5B))
_LOWER_BYTES: Final = bytes(range(0x61, 0x7B))


def case_bits(raw: bytes, features: NameFeatures) -> int:
    """Bits a client put in the letter case of a name's subdomain labels.

    ``raw`` is the name as the client sent it (the same octets as the
    lowercased ``features.qname`` but for case). A label whose letters are all
    lower or all upper case says nothing; a label that mixes them (base64,
    base58) can carry one bit per letter, which lowercasing threw away.

    A forwarder that randomises case (DNS 0x20) mixes the case of the whole
    name, the registrable domain included; a channel has no reason to touch its
    own domain. So a name whose registrable domain is itself in mixed case is
    charged nothing for case (a channel that dresses up as 0x20 is priced as it
    was before: its case is lost, the rest of its text is not).
    """
    end = len(raw) - len(features.domain_wire)
    domain = raw[end:]
    if not (domain.islower() or domain.isupper()):
        return 0
    bits = 0
    for i in features.offsets:
        if i >= end:
            break
        label = raw[i + 1 : i + 1 + raw[i]]
        if label.islower() or label.isupper():
            continue
        # letters = octets dropped by deleting both cases
        bits += len(label) - len(label.translate(None, _UPPER_BYTES + _LOWER_BYTES))
    return bits


def shannon_entropy(data: bytes) -> float:
    """Shannon entropy of the octet distribution of ``data``, bits per octet."""
    n = len(data)
    if n == 0:
        return 0.0
    # H = log2(n) - sum(c log2 c) / n over the octets' counts c, read as runs of the
    # sorted octets (one C sort and a short loop: labels are at most 63 octets).
    if n < len(_CLOG):
        clog = _CLOG
        total = 0.0
        previous = -1
        run = 0
        for octet in sorted(data):
            if octet == previous:
                run += 1
            else:
                total += clog[run]
                previous = octet
                run = 1
        total += clog[run]
    else:
        total = sum([c * math.log2(c) for c in map(data.count, set(data))])
    return max(0.0, math.log2(n) - total / n)


_CLOG: Final = [0.0] + [c * math.log2(c) for c in range(1, 256)]  # c*log2(c) for names' label counts


def expected_entropy(alphabet_size: int, length: int) -> float:
    """Expected plug-in Shannon entropy of a uniform random string.

    Exact for every length: each symbol's count is Binomial(length, 1/k), and by
    linearity E[H] = -k * sum_c P(c) * (c/n) * log2(c/n). Short strings cannot
    reach log2(k) (16 random base32 chars score about 3.6, not 5), which is why a
    fixed "entropy > 4" rule misses hex and flags nothing short.

    Memoised for the first ``_EXPECTED_MAX`` (size, length) pairs asked, in a dict
    keyed by one int, not lru_cache: compiled, its wrapper is a generic call with an
    argument tuple. The detector asks a few alphabet sizes times label lengths.
    """
    if not (0 <= alphabet_size < 1 << 16 and 0 <= length < 1 << 16):
        return _expected_entropy(alphabet_size, length)
    key = (alphabet_size << 16) | length
    found = _EXPECTED.get(key)
    if found is None:
        found = _expected_entropy(alphabet_size, length)
        if len(_EXPECTED) < _EXPECTED_MAX:
            _EXPECTED[key] = found
    return found


_EXPECTED: Final[dict[int, float]] = {}
_EXPECTED_MAX: Final = 4096


def _expected_entropy(alphabet_size: int, length: int) -> float:
    """:func:`expected_entropy`, computed."""
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


_KIND: Final = bytes(1 if i in _DIGITS else 2 if i in _LETTERS else 0 for i in range(256))  # octet -> digit 1, letter 2


def _transitions(label: bytes) -> int:
    """Digit/letter alternations: random encodings mix them, words and numbers don't."""
    count = 0
    prev = -1
    kinds = _KIND
    for b in label:
        kind = kinds[b]
        if kind and prev and kind != prev:
            count += 1
        if kind:
            prev = kind
    return count


@dataclass(frozen=True, slots=True, init=False)
class LabelShape:
    """How encoded one label (or a run of joined labels) looks."""

    length: int
    alphabet: str
    entropy: float
    expected: float  # expected entropy of a random string of this length and alphabet
    transitions: int  # digit<->letter alternations
    non_ldh: bool  # holds octets outside letters, digits, '-' and '_'

    def __init__(
        self, length: int, alphabet: str, entropy: float, expected: float, transitions: int, non_ldh: bool,
    ) -> None:
        object.__setattr__(self, "length", length)
        object.__setattr__(self, "alphabet", alphabet)
        object.__setattr__(self, "entropy", entropy)
        object.__setattr__(self, "expected", expected)
        object.__setattr__(self, "transitions", transitions)
        object.__setattr__(self, "non_ldh", non_ldh)

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
    if _label_shape is not None and len(data) < _SHAPE_MAX:
        # heuristics/_labels.c: the same four facts in one pass over the octets.
        index, h, transitions, non_ldh = _label_shape(data)
        alphabet = _ALPHABETS[index]
    else:
        alphabet = translated_alphabet(data)
        h = shannon_entropy(data)
        transitions = _transitions(data)
        non_ldh = bool(data.translate(None, _LDH_BYTES))
    size = Alphabet.SIZE[alphabet]
    return LabelShape(
        length=len(data),
        alphabet=alphabet,
        entropy=h,
        expected=expected_entropy(size, len(data)),
        transitions=transitions,
        non_ldh=non_ldh,
    )


def _label_extension() -> Callable[[bytes], tuple[int, float, int, bool]] | None:
    """heuristics._labels's ``label_shape`` if it is built: alphabet_of, shannon_entropy,
    _transitions and the non-LDH test of a label at once, the same results (running from
    source: the functions above)."""
    try:
        from ._labels import label_shape
    except ImportError:
        return None
    return label_shape


# label_shape(data) -> (index into _ALPHABETS, entropy, transitions, non_ldh), for fewer
# than _SHAPE_MAX octets (every label and subdomain of a wire name); None from source.
_ALPHABETS: Final = (Alphabet.HEX, Alphabet.BASE32, Alphabet.ALNUM, Alphabet.LDH, Alphabet.BASE64, Alphabet.BINARY)
_SHAPE_MAX: Final = 256
_label_shape: Final = _label_extension()


_DIGIT_BYTES: Final = bytes(sorted(_DIGITS))
_blake2b: Final = hashlib.blake2b  # bound once: compiled code looks a module attribute up on every use


class NameFeatures:
    """Settings-independent facts about one query name.

    Everything a decision keys on is taken from the wire labels: ``domain_wire``
    is a label-wise suffix of ``qname`` (an ancestor in the DNS tree) and
    ``domain`` its escaped presentation text. The cheap facts (lengths, domain,
    digest, non-LDH octets) are computed at once; the label shapes (alphabet,
    entropy), the expensive part, only when first asked for.
    """

    __slots__ = (
        "_ancestors",
        "_client_key",
        "_client_key_client",
        "_client_key_tag",
        "_shapes",
        "_tag",
        "digest",
        "domain",
        "domain_labels",
        "domain_wire",
        "key",
        "label_count",
        "max_label",
        "member",
        "non_ldh",
        "offsets",
        "qname",
        "reverse",
        "sub_labels",
        "subdomain",
        "suffixes",
        "total_length",
    )

    def __init__(self, qname: bytes) -> None:
        offsets = label_offsets(qname)
        start = registrable_offset(qname, offsets)
        domain = domain_text(qname[start:])
        sub_labels = tuple([qname[i + 1 : i + 1 + qname[i]] for i in offsets if i < start])
        self.qname = qname
        self.offsets = offsets
        self.domain = domain  # registrable domain, escaped text
        self.domain_wire = qname[start:]
        self.domain_labels = sum(1 for i in offsets if i >= start)
        # Pair keys join namespace, domain and client with '|': a '|' inside the
        # domain's text must not let one domain's key read as another's.
        self.key = domain.replace("|", "\\124")
        # Wire suffixes from the TLD down to three labels below the registrable
        # domain, for exemptions such as avqs.mcafee.com or zen.spamhaus.org.
        depth = min(len(offsets), self.domain_labels + 3)
        self.suffixes = tuple(qname[i:] for i in offsets[len(offsets) - depth :])
        # A well-formed reverse lookup (names.is_reverse_lookup) is never scored; any
        # other name under arpa is.
        self.reverse = is_reverse_lookup(qname)
        # Labels left of the registrable domain, joined with '.': the text the
        # information estimate deflates (an amount, not a decision key).
        self.subdomain = b".".join(sub_labels)
        self.sub_labels = sub_labels  # the labels left of the registrable domain, in order
        self.digest = _blake2b(qname, digest_size=8).digest()  # seen-set key
        self.member = int.from_bytes(self.digest, "little")  # the same, as a HyperLogLog member
        self.total_length = len(qname)  # wire length
        self.label_count = len(offsets)
        longest = 0
        for i in offsets:  # a loop, not max() over a generator: compiled, it stays in C
            if qname[i] > longest:
                longest = qname[i]
        self.max_label = longest
        joined = b"".join(sub_labels)
        self.non_ldh = bool(joined.translate(None, _LDH_BYTES))  # any octet outside LDH and '_'
        self._shapes: tuple[LabelShape, ...] | None = None
        self._ancestors: tuple[bytes, ...] | None = None
        self._tag = ""  # the pair tag last asked for (see tag())
        self._client_key = self._client_key_tag = self._client_key_client = ""  # see client_key()

    @property
    def shapes(self) -> tuple[LabelShape, ...]:
        """Subdomain labels' shapes, then the joined run's if there is more than one label."""
        shapes = self._shapes
        if shapes is None:
            sub_labels = self.subdomain_labels()
            found = [_shape(label) for label in sub_labels if label]
            if len(sub_labels) > 1:
                # Encoders split long payloads over several labels: judge the joined run too.
                found.append(_shape(b"".join(sub_labels)))
            shapes = self._shapes = tuple(found)
        return shapes

    def tag(self, namespace: str) -> str:
        """The detector's pair tag of this name's domain in ``namespace`` (``namespace|key``).

        Kept for the last namespace asked: the same string object again, its hash
        already computed, for every query and response of the name.
        """
        tag = self._tag
        # tag is "<some namespace>|<key>": of this namespace when it starts so and is as long.
        if len(tag) == len(namespace) + 1 + len(self.key) and tag.startswith(namespace):
            return tag
        tag = self._tag = f"{namespace}|{self.key}"
        return tag

    def client_key(self, tag: str, client: str) -> str:
        """The pair key of ``client`` under ``tag`` (this name's :meth:`tag`): ``tag|client``.

        Kept for the last pair asked: a query's response, and the client's next query
        of the name, find the pair with the same string, its hash already computed.
        """
        if self._client_key_tag is tag and self._client_key_client == client:
            return self._client_key
        key = self._client_key = f"{tag}|{client}"
        self._client_key_tag = tag
        self._client_key_client = client
        return key

    def subdomain_labels(self) -> tuple[bytes, ...]:
        """The labels left of the registrable domain, in order."""
        return self.sub_labels

    def content_bound(self, previous: tuple[bytes, ...] = ()) -> int:
        """:func:`heuristics.spread.content_bytes` of the subdomain labels against ``previous``.

        The per-label totals are computed once per name; each meter's call then
        only finds how many labels ``previous`` predicts.
        """
        labels = self.sub_labels
        keep = unpredicted(labels, previous) if previous else len(labels)
        # The meters of one query ask about the same name one after the other: the
        # totals of the last name asked are kept (not per name: memory stays as it was).
        last = _LAST_CONTENT
        if last[0] is self:
            prefix: list[float] = last[1]
        else:
            prefix = content_prefix(labels)
            last[0] = self
            last[1] = prefix
        return math.ceil(prefix[keep] / 8)

    def ancestors(self) -> tuple[bytes, ...]:
        """Wire names from the registrable domain up to the root (computed once)."""
        found = self._ancestors
        if found is None:
            q = self.qname
            start = len(q) - len(self.domain_wire)
            found = self._ancestors = (*tuple(q[i:] for i in self.offsets if i >= start), b"\x00")
        return found

    @property
    def digit_ratio(self) -> float:
        """Digits over subdomain octets."""
        joined = b"".join(self.subdomain_labels())
        if not joined:
            return 0.0
        return (len(joined) - len(joined.translate(None, _DIGIT_BYTES))) / len(joined)

    @property
    def text(self) -> str:
        """The whole name as escaped presentation text."""
        return name_to_text(self.qname)

    def encoded_shape(self, min_length: int, entropy_ratio: float) -> LabelShape | None:
        """The most random-looking label or joined run that looks encoded, if any."""
        last = _LAST_ENCODED
        if last[0] is self and last[1] == min_length and last[2] == entropy_ratio:
            found: LabelShape | None = last[3]
            return found
        best: LabelShape | None = None
        for shape in self.shapes:
            if shape.looks_encoded(min_length, entropy_ratio) and (
                best is None or shape.length > best.length
            ):
                best = shape
        last[0] = self
        last[1] = min_length
        last[2] = entropy_ratio
        last[3] = best
        return best


# One-entry memos of NameFeatures methods a query asks twice (see content_bound, encoded_shape).
_LAST_CONTENT: Final[list[Any]] = [None, None]
_LAST_ENCODED: Final[list[Any]] = [None, 0, 0.0, None]


def features_of(qname: bytes) -> NameFeatures:
    """Compute :class:`NameFeatures` for a lowercased wire-format name."""
    return NameFeatures(qname)


class FeatureCache:
    """Bounded LRU of :class:`NameFeatures` keyed by wire name."""

    def __init__(self, max_names: int = 65536) -> None:
        self.max_names = max_names
        self._cache: OrderedDict[bytes, NameFeatures] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def peek(self, qname: bytes) -> NameFeatures | None:
        """Features of ``qname`` if cached, without marking them used or computing them."""
        return self._cache.get(qname)

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
