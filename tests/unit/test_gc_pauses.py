"""The garbage collector's pauses as the admin server exports them."""

from __future__ import annotations

import gc

from resolver.operations.metrics import GC_BUCKETS, GcPauses


def test_each_collection_is_timed_under_its_generation_until_removed() -> None:
    pauses = GcPauses()
    pauses.install()
    pauses.install()  # once only
    try:
        gc.collect(0)
        gc.collect(2)
        assert pauses.histograms[0].count == 1
        assert pauses.histograms[2].count == 1
        assert pauses.histograms[1].count == 0
        assert pauses.longest[0] > 0
        assert pauses.longest[2] > 0
        assert pauses.histograms[2].sum == pauses.longest[2]
        cumulative = pauses.histograms[2].cumulative()
        assert [bound for bound, _ in cumulative] == [repr(b) for b in GC_BUCKETS] + ["+Inf"]
        assert cumulative[-1][1] == 1
    finally:
        pauses.remove()
    gc.collect(0)
    assert pauses.histograms[0].count == 1
    assert pauses._hook not in gc.callbacks
