"""Activation scoring: channels scored by what their consumers read on calibration data.

- ``apoz``: 1 - APoZ, the Average Percentage of Zeros (Hu et al. 2016): the share of exact zeros
  of a channel (after ReLU) over every sample and position. A channel that is almost always zero
  scores near 0.
- ``mean_abs``: the mean absolute value of a channel over every sample and position.

Both are measured on the tensors the group's consumers read (the data input of every Conv, Gemm
or MatMul that takes the channels, and the input of a maxout over them), pooled over those
tensors (each read tensor counted once). Higher is more important, as for magnitude. Channels
that are provably zero wherever they are consumed score exactly 0 and every other channel scores
above 0, so ``--threshold 0`` still removes exactly the dead channels.

:func:`activation_scores` turns the per-tensor statistics (:class:`~npcompile.runtime.calibrate.SlotStats`,
collected by a :class:`~npcompile.runtime.calibrate.Calibrator`) into scores per channel.
"""

from __future__ import annotations

import numpy as np

from npcompile.channels.analysis import ChannelAnalysis, Group
from npcompile.runtime.calibrate import SlotStats, group_inputs, slots_to_group

__all__ = ["CRITERIA", "activation_scores", "tensor_rank"]

CRITERIA = ("apoz", "mean_abs")
_TINY = float(np.finfo(np.float64).tiny)


def activation_scores(analysis: ChannelAnalysis, groups: list[Group], stats: dict[str, SlotStats],
                      criterion: str) -> dict[int, np.ndarray]:
    """Scores per channel of ``groups`` from per-tensor statistics (see the module docstring)."""
    out: dict[int, np.ndarray] = {}
    for g in groups:
        count, zeros, abs_sum = np.zeros(g.size), np.zeros(g.size), np.zeros(g.size)
        reads = group_inputs(analysis, g)
        for name, _ in reads:
            s = stats[name]
            slots_to_group(analysis, g, s.layout, s.count.astype(np.float64), count)
            slots_to_group(analysis, g, s.layout, s.zeros.astype(np.float64), zeros)
            slots_to_group(analysis, g, s.layout, s.abs_sum, abs_sum)
        if not reads or not (count > 0).all():
            continue
        score = 1.0 - zeros / count if criterion == "apoz" else abs_sum / count
        dead = g.dead if g.dead is not None else np.zeros(g.size, bool)
        out[g.id] = np.where(dead, 0.0, np.maximum(score, _TINY))
    return out


def tensor_rank(analysis: ChannelAnalysis, name: str) -> int | None:
    """The rank of tensor ``name`` from the analysis' shapes (None when it is unknown)."""
    shape = analysis.shapes.get(name)
    return None if shape is None else len(shape)
