"""Names on the wire: labels, presentation text, registrable domain, exemptions.

Query names arrive as uncompressed wire format (length-prefixed labels, ending
with the root label), lowercased by the caller with ``bytes.lower()``. Labels
may hold any octet (iodine's base128 puts 0xBC-0xFD in labels), so nothing here
assumes ASCII.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from publicsuffixlist import PublicSuffixList

__all__ = [
    "DEFAULT_EXEMPTIONS",
    "labels_of",
    "name_to_text",
    "registrable_domain",
    "load_exemptions",
]

_PSL = PublicSuffixList()  # the package's bundled snapshot: never fetched at run time

# RFC 1035 5.1 specials that must be escaped in presentation format.
_SPECIALS = frozenset(b'."();\\@$')
_ESCAPED = tuple(
    f"\\{b:03d}" if b < 0x21 or b > 0x7E else ("\\" + chr(b) if b in _SPECIALS else chr(b))
    for b in range(256)
)


def labels_of(qname: bytes) -> list[bytes]:
    """Split a wire-format name into its labels, root label excluded.

    A name without the terminating root label is accepted; a length octet
    pointing past the end raises ``ValueError``.
    """
    labels: list[bytes] = []
    i = 0
    end = len(qname)
    while i < end:
        n = qname[i]
        if n == 0:
            break
        if n > 63:
            raise ValueError(f"label length {n} at offset {i} (compression pointers not allowed)")
        j = i + 1 + n
        if j > end:
            raise ValueError(f"label at offset {i} runs past the end of the name")
        labels.append(qname[i + 1 : j])
        i = j
    return labels


def label_to_text(label: bytes) -> str:
    """Presentation form of one label, non-printable octets as ``\\DDD``."""
    return "".join([_ESCAPED[b] for b in label])


def name_to_text(qname: bytes) -> str:
    """Presentation text of a wire name, WITHOUT the trailing dot.

    Octets below 0x21 or above 0x7E are written ``\\DDD`` (decimal) and the
    RFC 1035 specials ``. " ( ) ; \\ @ $`` inside a label are backslash-escaped,
    so the text round-trips through ``dns.name.from_text``. The root name is ``"."``.
    """
    labels = labels_of(qname)
    if not labels:
        return "."
    return ".".join(label_to_text(label) for label in labels)


def _label_key(label: bytes) -> str:
    # latin-1 maps every octet to one code point, so PSL matching never fails on
    # binary labels (they simply match no rule).
    return label.decode("latin-1")


@lru_cache(maxsize=65536)
def _registrable_from_text(text: str) -> str:
    suffix = _PSL.privatesuffix(text)
    if suffix is not None:
        return suffix
    # The name is itself a public suffix (or shorter): it is its own domain.
    return text


def registrable_domain(qname: bytes) -> str:
    """Registrable domain of a wire name (public suffix + one label).

    Uses the public suffix list including its private section (``s3.amazonaws.com``,
    ``github.io``, ``cloudfront.net``), from the snapshot shipped with the
    ``publicsuffixlist`` package. Returned as lowercase text without trailing dot;
    a name that is itself a public suffix (``com``, ``co.uk``) is returned as is.
    Only the last few labels are looked at, so long tunnel names cost nothing extra.
    """
    labels = labels_of(qname)
    if not labels:
        return "."
    # The longest PSL rule has fewer than 8 labels; keep the lookup key small so the
    # cache is shared by every name under the same domain.
    tail = labels[-8:]
    text = ".".join(_label_key(label) for label in tail)
    domain = _registrable_from_text(text)
    return label_to_text_str(domain)


def label_to_text_str(text: str) -> str:
    """Escape a latin-1 decoded name the way :func:`name_to_text` would."""
    if all(0x21 <= ord(c) <= 0x7E and c not in '"();\\@$' for c in text):
        return text
    return ".".join(label_to_text(part.encode("latin-1")) for part in text.split("."))


def load_exemptions(text: str) -> frozenset[str]:
    """Parse an exemption list: one domain per line, ``#`` starts a comment."""
    out: set[str] = set()
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip().lower().rstrip(".")
        if line:
            out.add(line)
    return frozenset(out)


DEFAULT_EXEMPTIONS: frozenset[str] = load_exemptions(
    resources.files(__package__).joinpath("exemptions.txt").read_text(encoding="utf-8")
)
