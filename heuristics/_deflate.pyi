"""heuristics/_deflate.c, the C extension module (built by ``python -m resolver.native build``)."""

ZLIB_RUNTIME_VERSION: str

def deflated_size(dictionary: bytes, text: bytes, wbits: int, /) -> int:
    """The size in bytes of ``text`` deflated at level 6 with ``dictionary`` as preset dictionary."""
