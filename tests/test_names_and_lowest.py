"""The one name matcher (:mod:`npcompile.graph.names`) and the one lowest-k helper
(:func:`npcompile.channels.select.lowest`, :func:`~npcompile.channels.select.lowest_per_block`)."""

from __future__ import annotations

import numpy as np

from npcompile.channels.select import lowest, lowest_per_block
from npcompile.graph.names import first_match, matches, name_patterns


def test_name_patterns_take_lists_and_comma_separated_strings() -> None:
    assert name_patterns(None) == []
    assert name_patterns(" a*, ,b ") == ["a*", "b"]
    assert name_patterns(("x", "y")) == ["x", "y"]


def test_matches_is_case_sensitive_and_skips_empty_names() -> None:
    assert matches(["", "conv1"], ["conv*"])
    assert not matches(["Conv1"], ["conv*"])
    assert not matches(["", None], ["*"])
    assert first_match("fc2", ["conv*", "fc*", "*"]) == "fc*"
    assert first_match("", ["*"]) is None


def test_lowest_breaks_ties_by_index_and_respects_candidates() -> None:
    s = np.array([3.0, 1.0, 1.0, 0.5, 2.0])
    assert lowest(s, 2).tolist() == [False, True, False, True, False]
    assert not lowest(s, 0).any()
    cand = np.array([True, False, True, False, True])
    assert lowest(s, 2, cand).tolist() == [False, False, True, False, True]


def test_lowest_per_block_is_lowest_in_each_block() -> None:
    rng = np.random.default_rng(0)
    s = rng.integers(0, 4, 12).astype(float)  # many ties
    got = lowest_per_block(s, 3, 2)
    want = np.concatenate([lowest(s[b * 4:(b + 1) * 4], 2) for b in range(3)])
    assert got.tolist() == want.tolist()
    assert got.reshape(3, 4).sum(axis=1).tolist() == [2, 2, 2]
