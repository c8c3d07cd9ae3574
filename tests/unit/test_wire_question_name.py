"""The question name's fast path reads what read_name reads, for any octets a client sends.

``question_name`` slices a straight run of labels at offset 12 and leaves
anything else (a compression pointer, a reserved label type) to ``read_name``;
parse_query and replay's response matching both rely on it giving the same
name, the same end offset and the same refusal.
"""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import example, given, settings
from hypothesis import strategies as st

from resolver.wire.message import MalformedMessage, question_name, read_name

HEADER = bytes(12)

# Label-shaped pieces, so that most draws reach deep into a name: lengths that fit,
# lengths that run past the end, pointers (forwards and backwards), reserved types.
piece = st.one_of(
    st.binary(min_size=1, max_size=63).map(lambda b: bytes([len(b)]) + b),
    st.binary(min_size=0, max_size=70).map(lambda b: bytes([min(63, len(b) + 3)]) + b),
    st.integers(0, 0x3FFF).map(lambda p: bytes([0xC0 | (p >> 8), p & 0xFF])),
    st.integers(0x40, 0xBF).map(lambda t: bytes([t])),
    st.just(b"\x00"),
)


def outcome(read: Callable[[bytes], tuple[bytes, int]], wire: bytes) -> tuple[bytes, int] | str:
    try:
        return read(wire)
    except MalformedMessage:
        return "malformed"


@settings(max_examples=600)
@given(st.one_of(st.binary(max_size=300), st.lists(piece, max_size=12).map(b"".join)))
@example(b"\x03www\x07example\x03com\x00\x00\x01\x00\x01")
@example(b"\x01a" * 127 + b"\x00")  # 255 octets: the longest name
@example(b"\x01a" * 127 + b"\x01b\x00")  # 257 octets: too long
@example(b"\x03www\xc0\x0c")  # a pointer to itself
@example(b"\x03www")  # no root label
def test_question_name_reads_what_read_name_reads(body: bytes) -> None:
    wire = HEADER + body
    assert outcome(question_name, wire) == outcome(lambda w: read_name(w, 12), wire)
