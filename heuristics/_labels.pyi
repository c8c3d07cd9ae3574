"""heuristics/_labels.c, the C extension module (built by ``python -m resolver.native build``)."""

def label_shape(data: bytes, /) -> tuple[int, float, int, bool]:
    """(alphabet index, entropy, transitions, non_ldh) of fewer than 256 octets (heuristics.features)."""
