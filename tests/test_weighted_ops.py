"""The one table of weighted ops (:mod:`npcompile.graph.weighted_ops`) agrees with itself and
with the figures its users report."""

from __future__ import annotations

import pytest

from npcompile.graph.weighted_ops import REFIT_OPS, WEIGHTED, WEIGHTED_OPS


def test_the_table_lists_the_four_ops() -> None:
    assert WEIGHTED_OPS == ("Conv", "ConvTranspose", "Gemm", "MatMul")
    assert REFIT_OPS == ("Conv", "Gemm", "MatMul")
    assert WEIGHTED["MatMul"].bias is None and WEIGHTED["Conv"].bias == 2


@pytest.mark.parametrize(("op", "w", "group", "trans_b"), [
    ("Conv", (8, 3, 3, 3), 1, False), ("Conv", (8, 2, 3, 3), 2, False),
    ("ConvTranspose", (4, 6, 2, 2), 1, False), ("Gemm", (10, 20), 1, True), ("Gemm", (20, 10), 1, False),
    ("MatMul", (20, 10), 1, False)])
def test_channel_axes_match_the_channel_counts(op: str, w: tuple[int, ...], group: int, trans_b: bool) -> None:
    entry = WEIGHTED[op]
    cin, cout = entry.channels(w, group, trans_b)
    assert w[entry.in_axis(len(w), trans_b)] * (group if op == "Conv" else 1) == cin
    assert w[entry.out_axis(len(w), trans_b)] * (group if op == "ConvTranspose" else 1) == cout


def test_macs() -> None:
    assert WEIGHTED["Conv"].macs((1, 8, 5, 5), (8, 3, 3, 3), (1, 3, 7, 7)) == 8 * 25 * 27
    assert WEIGHTED["ConvTranspose"].macs((1, 6, 8, 8), (4, 6, 2, 2), (1, 4, 4, 4)) == 64 * 24
    assert WEIGHTED["ConvTranspose"].macs((1, 6, 8, 8), (4, 6, 2, 2), None) == 0
    assert WEIGHTED["Gemm"].macs((2, 10), (10, 20), None, trans_b=True) == 10 * 20
    assert WEIGHTED["MatMul"].macs((1, 5, 10), (20, 10), None) == 50 * 20
    assert WEIGHTED["MatMul"].macs((10,), (20, 10), None) == 200
