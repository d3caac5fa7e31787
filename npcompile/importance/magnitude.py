"""Magnitude scoring: the L1 or L2 norm of the weights that produce each channel, over its group.

Channels that are provably zero everywhere they are consumed (see
:mod:`npcompile.channels.analysis`) score exactly 0; every other channel scores above 0, so a threshold
of 0 removes exactly the dead channels.
"""

from __future__ import annotations

import numpy as np

from npcompile.channels.analysis import ChannelAnalysis, Group
from npcompile.rules.quant import site_values

__all__ = ["group_magnitude"]

_TINY = float(np.finfo(np.float64).tiny)


def _sums(analysis: ChannelAnalysis, group: Group, p: int) -> np.ndarray:
    """Per channel: sum of ``|w|**p`` over the ``out`` sites of ``group``; a maxout unit adds the
    sums of its neurons (the producing weights of a unit are those of its ``k`` neurons)."""
    acc = np.zeros(group.size)
    # a head's weights are its q/k/v rows (its neurons' out sites) and its output columns
    for site in group.sites_of("out") + (group.sites_of("in") if group.kind == "heads" else []):
        per_slot = site.layout.slot_sums(site_values(site), site.axis, power=p)
        off = 0
        for piece in site.layout.pieces:
            if piece.group is not None and analysis.find(piece.group) == group.id:
                acc[piece.start : piece.stop] += per_slot[off : off + len(piece)]
            off += len(piece)
    for lk in analysis.links:
        if analysis.find(lk.units) == group.id and analysis.find(lk.neurons) != group.id:
            per_neuron = _sums(analysis, analysis.group(lk.neurons), p)
            acc += per_neuron.reshape(lk.outer, lk.n_units, lk.k).sum(axis=(0, 2))
    return acc


def group_magnitude(analysis: ChannelAnalysis, group: Group, p: int = 1) -> np.ndarray:
    """Per-channel ``L_p`` norm over every ``out`` site (producing weights and biases) of ``group``
    (of a maxout unit: over those of its neurons)."""
    acc = _sums(analysis, group, p)
    score = acc if p == 1 else np.sqrt(acc)
    dead = group.dead if group.dead is not None else np.zeros(group.size, bool)
    return np.where(dead, 0.0, np.maximum(score, _TINY))
