"""Names on the wire: labels, presentation text, registrable domain, exemptions.

Query names arrive as uncompressed wire format (length-prefixed labels, ending
with the root label), lowercased by the caller with ``bytes.lower()``. Labels
may hold any octet (iodine's base128 puts 0xBC-0xFD in labels), so nothing here
assumes ASCII.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources
from typing import Final

from publicsuffixlist import PSLFILE, encode_idn

__all__ = [
    "DEFAULT_EXEMPTIONS",
    "ancestors",
    "domain_text",
    "domains_wire",
    "is_public_suffix",
    "is_reverse_lookup",
    "is_subdomain",
    "label_offsets",
    "label_to_text",
    "labels_of",
    "load_exemptions",
    "name_to_text",
    "platform_suffix",
    "registrable_domain",
    "registrable_offset",
    "registrable_wire",
    "suffix_rule_at_or_below",
    "wire_of",
]

# RFC 1035 5.1 specials that must be escaped in presentation format.
_SPECIALS = frozenset(b'."();\\@$')
_ESCAPED = tuple(
    f"\\{b:03d}" if b < 0x21 or b > 0x7E else ("\\" + chr(b) if b in _SPECIALS else chr(b))
    for b in range(256)
)
# The octets a label holds as they are in presentation format (_ESCAPED[b] == chr(b)).
_PLAIN: Final = bytes(b for b in range(0x21, 0x7F) if b not in _SPECIALS)
_PLAIN_OR_DOT: Final = _PLAIN + b"."


def label_offsets(qname: bytes) -> list[int]:
    """Offsets of the length octet of every label of a wire name, root excluded.

    ``qname[offset:]`` is then an ancestor of the name (the name itself first),
    cut at a label boundary, so it is a suffix in the DNS tree whatever octets
    the labels hold. A length octet pointing past the end raises ``ValueError``.
    """
    offsets: list[int] = []
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
        offsets.append(i)
        i = j
    return offsets


def labels_of(qname: bytes) -> list[bytes]:
    """Split a wire-format name into its labels, root label excluded.

    A name without the terminating root label is accepted; a length octet
    pointing past the end raises ``ValueError``.
    """
    return [qname[i + 1 : i + 1 + qname[i]] for i in label_offsets(qname)]


def ancestors(qname: bytes) -> list[bytes]:
    """The name and every ancestor up to (not including) the root, as wire names."""
    return [qname[i:] for i in label_offsets(qname)]


def is_subdomain(name: bytes, domain: bytes) -> bool:
    """True when wire ``name`` is ``domain`` or below it, compared label by label.

    A byte-wise ``endswith`` is not enough: ``\\x06x\\x04test\\x00`` ends with the
    octets of ``\\x04test\\x00`` but is a one-label name, not a name under ``test``.
    """
    if len(domain) > len(name) or not name.endswith(domain):
        return False
    cut = len(name) - len(domain)
    return cut == 0 or domain == b"\x00" or cut in label_offsets(name)


def label_to_text(label: bytes) -> str:
    """Presentation form of one label, non-printable octets as ``\\DDD``."""
    if not label.translate(None, _PLAIN):
        return label.decode("ascii")  # nothing to escape: the usual label
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
    joined = b".".join(labels)
    # Nothing to escape (the usual name): the text is the octets themselves, when the
    # only dots in them are the ones between labels.
    if not joined.translate(None, _PLAIN_OR_DOT) and joined.count(b".") == len(labels) - 1:
        return joined.decode("ascii")
    return ".".join([label_to_text(label) for label in labels])


def wire_of(text: str) -> bytes:
    """Lowercased wire form of a presentation-format name (``\\.`` and ``\\DDD`` understood)."""
    import dns.name  # only for config and offline text; the query path stays on wire names

    wire = dns.name.from_text(text).to_wire()
    assert wire is not None
    return wire.lower()


# --- the public suffix list, matched on wire labels ----------------------------------


_Rules = frozenset[tuple[bytes, ...]]


def _load_rules() -> tuple[_Rules, _Rules, _Rules, _Rules, int]:
    """Exact, wildcard (``*.x`` stored as x) and exception (``!x``) rules as label tuples,
    and the label tuples of the rules in the list's private section (any kind).

    Read from the snapshot shipped in the ``publicsuffixlist`` package, never
    fetched at run time. Unicode rules are kept in their IDNA (``xn--``) form,
    the one that travels in DNS labels. A rule's labels never hold a '.', so a
    label that does never matches one.
    """
    exact: set[tuple[bytes, ...]] = set()
    wild: set[tuple[bytes, ...]] = set()
    exception: set[tuple[bytes, ...]] = set()
    private: set[tuple[bytes, ...]] = set()
    in_private = False
    depth = 0
    with open(PSLFILE, encoding="utf-8") as handle:
        for line in handle:
            rule = line.strip().split(" ")[0].lower()
            if not rule or rule.startswith("//"):
                if "===begin private domains===" in line.lower():
                    in_private = True
                elif "===end private domains===" in line.lower():
                    in_private = False
                continue
            kind = exact
            if rule.startswith("!"):
                kind, rule = exception, rule[1:]
            elif rule.startswith("*."):
                kind, rule = wild, rule[2:]
            try:
                ascii_rule = encode_idn(rule) if not rule.isascii() else rule
            except UnicodeError:
                continue
            labels = tuple(part.encode("ascii") for part in ascii_rule.split("."))
            kind.add(labels)
            if in_private:
                private.add(labels)
            depth = max(depth, len(labels) + (kind is wild))
    return frozenset(exact), frozenset(wild), frozenset(exception), frozenset(private), depth


_EXACT, _WILD, _EXCEPTION, _PRIVATE, _MAX_RULE = _load_rules()

# The rules as a trie of labels read from the TLD down: a name is matched by
# walking its labels from the right until no rule goes deeper, a few dict
# look-ups, whatever the name's length and however many never-seen labels it
# carries in front.
_RULE_EXACT: Final = 1
_RULE_WILD: Final = 2
_RULE_EXCEPTION: Final = 4
_RULE_PRIVATE: Final = 8  # a rule of the list's private section ends here (a platform's, not a registry's)


class _Node:
    """A trie node: the nodes one label deeper, by label, and the rules (``_RULE_*`` bits)
    that end here. A class, not a list: compiled, its fields are read without a generic
    lookup for each label of each never-seen name."""

    __slots__ = ("children", "flags")

    def __init__(self) -> None:
        self.children: dict[bytes, _Node] = {}
        self.flags = 0


def _build_trie() -> _Node:
    root = _Node()
    for rules, flag in ((_EXACT, _RULE_EXACT), (_WILD, _RULE_WILD), (_EXCEPTION, _RULE_EXCEPTION)):
        for rule in rules:
            node = root
            for label in reversed(rule):
                child = node.children.get(label)
                if child is None:  # not setdefault: that builds a node for every label it finds
                    child = node.children[label] = _Node()
                node = child
            node.flags |= flag
            if rule in _PRIVATE:
                node.flags |= _RULE_PRIVATE
    return root


_TRIE = _build_trie()


def _public_depth(flags: list[int], n: int) -> int:
    """How many trailing labels form the public suffix (PSL algorithm, unknown TLD = 1),
    from the rule flags met at depths 1, 2, ... of a name of ``n`` labels.

    Longest suffix first; at each depth an exception beats a wildcard beats an
    exact rule, as in the list's own test data (``city.kobe.jp``).
    """
    for depth in range(len(flags), 0, -1):
        flag = flags[depth - 1] & ~_RULE_PRIVATE
        if not flag:
            continue
        if flag & _RULE_EXCEPTION:
            return depth - 1
        if flag & _RULE_WILD:
            return depth + 1 if depth < n else depth
        return depth
    return 1 if n else 0


def registrable_offset(qname: bytes, offsets: list[int] | None = None) -> int:
    """Offset in ``qname`` where its registrable domain starts (public suffix + one label).

    Decided on wire labels, so ``qname[registrable_offset(qname):]`` is always an
    ancestor of the name (or the name itself) in the DNS tree, whatever octets
    its labels hold: a '.' inside a label is one octet of that label. A name
    that is itself a public suffix (``com``, ``co.uk``) is its own domain; the
    root's is the root. ``offsets`` may pass :func:`label_offsets` already computed.

    Names under ``in-addr.arpa`` and ``ip6.arpa`` are the exception: their domain
    is the reverse zone of one site (:func:`_reverse_zone_offset`: up to a /24 or
    a /48), not the list's ``1.in-addr.arpa`` or ``2.ip6.arpa``.
    """
    if offsets is None:
        offsets = label_offsets(qname)
    n = len(offsets)
    if n == 0:
        return max(0, len(qname) - 1)
    if n > 2 and qname.endswith(_ARPA):
        reverse = _reverse_zone_offset(qname, offsets)
        if reverse >= 0:
            return reverse
    keep = min(n, _public_depth(_rule_flags(qname, offsets), n) + 1)
    return offsets[n - keep]


def is_public_suffix(qname: bytes) -> bool:
    """True when the wire name is itself a public suffix: ``com``, ``co.uk``, ``github.io``,
    ``s3.amazonaws.com`` (the list's private section included), a name a wildcard rule
    covers (``anything.ck``, not the exception ``www.ck``), and any single label (the
    list's default rule ``*``: an unlisted top-level domain is one too). The root is.

    For offline checks (``dnsgate import``), not the query path: the same trie and
    rule precedence as :func:`registrable_offset`.
    """
    offsets = label_offsets(qname)
    n = len(offsets)
    return _public_depth(_rule_flags(qname, offsets), n) >= n


def _rule_flags(qname: bytes, offsets: list[int]) -> list[int]:
    """The suffix-list trie's flags along the name's labels, top-level label first, as far
    as the trie reaches."""
    flags: list[int] = []
    node = _TRIE
    for k in range(len(offsets) - 1, -1, -1):
        i = offsets[k]
        child = node.children.get(qname[i + 1 : i + 1 + qname[i]])
        if child is None:
            break
        node = child
        flags.append(child.flags)
    return flags


# --- reverse lookups (in-addr.arpa, ip6.arpa) -------------------------------------------

_ARPA: Final = b"\x04arpa\x00"
_IN_ADDR: Final = b"\x07in-addr\x04arpa\x00"
_IP6: Final = b"\x03ip6\x04arpa\x00"
_IN_ADDR_LABELS: Final = 4  # a.b.c.d.in-addr.arpa
_IP6_LABELS: Final = 32  # one nibble a label
# The labels of the reverse zone a name is charged to (see _reverse_zone_offset): an IPv4
# /24 and an IPv6 /48, the smallest blocks whose reverse zone is commonly delegated whole.
REVERSE_ZONE_V4_LABELS: Final = 3
REVERSE_ZONE_V6_LABELS: Final = 12
_DIGITS: Final = frozenset(b"0123456789")
_NIBBLES: Final = frozenset(b"0123456789abcdef")


def _octet_label(label: bytes) -> bool:
    """A decimal octet 0-255 in canonical form (no leading zero, no sign, no space)."""
    n = len(label)
    if n == 0 or n > 3 or any(b not in _DIGITS for b in label):
        return False
    if n > 1 and label[0] == 0x30:
        return False
    return int(label) <= 255


def _nibble_label(label: bytes) -> bool:
    """One lowercase hex digit (names are lowercased before they get here)."""
    return len(label) == 1 and label[0] in _NIBBLES


def is_reverse_lookup(qname: bytes) -> bool:
    """True for a well-formed reverse lookup of a lowercased wire name.

    Under ``in-addr.arpa`` at most 4 labels, each a decimal octet 0-255 in
    canonical form (``4.3.2.1.in-addr.arpa``); under ``ip6.arpa`` at most 32
    labels, each one hex nibble. The two zones themselves count (a resolver
    asks for their NS and SOA). Anything else under ``arpa`` is not one: such
    names carry whatever their sender puts in them, and are scored like any
    other name.
    """
    if not qname.endswith(_ARPA):
        return False
    try:
        labels = labels_of(qname)
    except ValueError:
        return False
    n = len(labels)
    if n < 2 or labels[n - 1] != b"arpa":
        return False
    parent = labels[n - 2]
    above = labels[: n - 2]
    if parent == b"in-addr":
        return len(above) <= _IN_ADDR_LABELS and all(_octet_label(label) for label in above)
    if parent == b"ip6":
        return len(above) <= _IP6_LABELS and all(_nibble_label(label) for label in above)
    return False


def _reverse_zone_offset(qname: bytes, offsets: list[int]) -> int:
    """Where the reverse zone a name under ``in-addr.arpa`` or ``ip6.arpa`` is charged to
    starts; -1 for a name under neither.

    The zone is the tree's root (``in-addr.arpa``, ``ip6.arpa``) with the name's
    well-formed labels right below it, at most ``REVERSE_ZONE_V4_LABELS`` octets
    (a /24) or ``REVERSE_ZONE_V6_LABELS`` nibbles (a /48): what the delegated
    zone of one site is. Whatever a sender puts below that (a payload, more
    nibbles, a counter) stays in that one zone, so a channel run under a
    delegated reverse zone is charged to one (namespace, domain) pair, and its
    quarantine covers that zone and no other address's reverse lookups.
    """
    n = len(offsets)
    root = offsets[n - 2]
    tail = qname[root:]
    if tail == _IN_ADDR:
        cap, well_formed = REVERSE_ZONE_V4_LABELS, _octet_label
    elif tail == _IP6:
        cap, well_formed = REVERSE_ZONE_V6_LABELS, _nibble_label
    else:
        return -1
    start = root
    for k in range(n - 3, max(-1, n - 3 - cap), -1):
        i = offsets[k]
        if not well_formed(qname[i + 1 : i + 1 + qname[i]]):
            break
        start = i
    return start


# --- what a wildcard allow entry would span ---------------------------------------------


def _rule_text(labels: list[bytes], flags: int) -> str:
    text = ".".join(label_to_text(label) for label in labels)
    if flags & _RULE_EXCEPTION:
        return "!" + text
    if flags & _RULE_WILD and not flags & _RULE_EXACT:
        return "*." + text
    return text


def suffix_rule_at_or_below(domain: bytes) -> str | None:
    """A public suffix list rule (either section) for ``domain`` or a name below it, as
    the list writes it (``s3.amazonaws.com``, ``*.compute.amazonaws.com``); None when
    the list has none there.

    ``*.domain`` in an allowlist would then take in names the list says other
    parties register: S3 buckets and ELB names under ``amazonaws.com``. The
    shallowest rule is named (the first in label order among those as shallow).
    """
    try:
        labels = labels_of(domain)
    except ValueError:
        return None
    node = _node_of(labels)
    if node is None:
        return None
    level: list[tuple[list[bytes], _Node]] = [(labels, node)]
    while level:
        for found_labels, found in level:
            if found.flags & ~_RULE_PRIVATE:
                return _rule_text(found_labels, found.flags)
        deeper: list[tuple[list[bytes], _Node]] = []
        for found_labels, found in level:
            for label in sorted(found.children):
                deeper.append(([label, *found_labels], found.children[label]))
        level = deeper
    return None


def platform_suffix(domain: bytes) -> str | None:
    """The public suffix of the list's private section that ``domain`` sits right
    under (``googleapis.com`` for ``storage.googleapis.com``, ``github.io`` for
    ``user.github.io``), as text; None otherwise.

    Such a domain is a platform's name for one of its tenants or one of its own
    services, and what is below it is often handed out again (GCS buckets under
    ``storage.googleapis.com``), beyond what the list says.
    """
    try:
        labels = labels_of(domain)
    except ValueError:
        return None
    if len(labels) < 2:
        return None
    suffix = labels[1:]
    text = ".".join(label_to_text(label) for label in suffix)
    node = _node_of(suffix)
    if node is not None and node.flags & _RULE_EXCEPTION:
        return None  # the list says this one is registrable, not a suffix
    if node is not None and node.flags & _RULE_EXACT and node.flags & _RULE_PRIVATE:
        return text
    # A wildcard rule one label up (``*.r.appspot.com``) makes the suffix a public one too.
    wild = _node_of(suffix[1:]) if len(suffix) >= 2 else None
    if wild is not None and wild.flags & _RULE_WILD and wild.flags & _RULE_PRIVATE:
        return text
    return None


def _node_of(labels: list[bytes]) -> _Node | None:
    """The trie node of a name given as its labels (leftmost first); None when no rule reaches it."""
    node: _Node | None = _TRIE
    for label in reversed(labels):
        assert node is not None
        node = node.children.get(label)
        if node is None:
            return None
    return node


def registrable_wire(qname: bytes) -> bytes:
    """The registrable domain of a wire name, as a wire name (a label-wise suffix of it)."""
    return qname[registrable_offset(qname) :]


def registrable_domain(qname: bytes) -> str:
    """Registrable domain of a wire name, as presentation text without trailing dot.

    Uses the public suffix list including its private section (``s3.amazonaws.com``,
    ``github.io``, ``cloudfront.net``), from the snapshot shipped with the
    ``publicsuffixlist`` package, matched label by label (see :func:`registrable_offset`).
    The text is escaped as :func:`name_to_text` writes it, so two different
    domains never share a text.
    """
    return domain_text(registrable_wire(qname))


def domain_text(domain: bytes) -> str:
    """:func:`name_to_text` of a domain, memoised (few domains, many names under them).

    In a dict emptied when it holds ``_DOMAIN_TEXTS_MAX`` texts, not lru_cache:
    compiled, calling through lru_cache's wrapper is a generic call.
    """
    found = _DOMAIN_TEXTS.get(domain)
    if found is None:
        if len(_DOMAIN_TEXTS) >= _DOMAIN_TEXTS_MAX:
            _DOMAIN_TEXTS.clear()
        found = _DOMAIN_TEXTS[domain] = name_to_text(domain)
    return found


_DOMAIN_TEXTS: Final[dict[bytes, str]] = {}
_DOMAIN_TEXTS_MAX: Final = 65536


def domains_wire(names: Iterable[str]) -> frozenset[bytes]:
    """Wire forms of presentation-format domains (config lists, flagged domains)."""
    return frozenset(wire_of(name) for name in names)


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
