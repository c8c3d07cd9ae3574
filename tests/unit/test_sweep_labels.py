"""`dnsgate replay --sweep --labels`: labelled tunnel domains matched on wire labels."""

from __future__ import annotations

from pathlib import Path

import pytest

from resolver.offline.replay import load_labels, score


def test_flagged_domains_match_labels_label_by_label() -> None:
    labels = {"evil.test", "t.lab-x.net"}
    flagged = {
        "evil.test",  # the labelled domain itself
        "lab-x.net",  # an ancestor of a labelled name: the detector charges registrable domains
        "x\\.evil.test",  # one label "x.evil" under "test": not under evil.test, whatever its text
        "notevil.test",  # a text suffix, not a label suffix
    }
    tp, fp, fn = score(flagged, labels)
    assert tp == {"evil.test", "lab-x.net"}
    assert fp == {"x\\.evil.test", "notevil.test"}
    assert fn == set()
    assert score({"x\\.evil.test"}, {"evil.test"})[2] == {"evil.test"}  # missed


def test_label_file_comments_case_and_bad_lines(tmp_path: Path) -> None:
    good = tmp_path / "labels.txt"
    good.write_text("# tunnels\nEvil.Test.  # iodine\n\nt.lab-x.net\n")
    assert load_labels(str(good)) == {"evil.test", "t.lab-x.net"}
    bad = tmp_path / "bad.txt"
    bad.write_text("evil.test\n" + "a" * 70 + ".test\n")
    with pytest.raises(ValueError, match=r"bad\.txt:2: not a domain name"):
        load_labels(str(bad))
