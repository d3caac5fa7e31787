"""Selection: turn per-channel scores into the channels to remove (a removal mask per group)."""

from __future__ import annotations

import math

import numpy as np

from npcompile.channels.analysis import Group
from npcompile.errors import OPT, OptionError
from npcompile.graph.names import name_patterns  # noqa: F401 - re-exported (its old home)

__all__ = ["select_ratio", "select_threshold", "rounded_keep", "name_patterns", "lowest", "lowest_per_block"]


def rounded_keep(n: int, keep: int, round_to: int, min_channels: int = 1) -> int:
    """Width to keep: at least ``keep``, a multiple of ``round_to`` where one fits in ``n``, never 0."""
    keep = max(keep, min_channels, 1)
    if round_to > 1:
        keep = round_to * math.ceil(keep / round_to)
    return min(n, keep)


def lowest(scores: np.ndarray, count: int, candidates: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of the ``count`` lowest of ``scores`` (ties: the lower index first), among
    ``candidates`` (a boolean mask) when given."""
    mask = np.zeros(scores.shape[0], bool)
    if count <= 0:
        return mask
    order = np.lexsort((np.arange(scores.shape[0]), scores))  # ties: lower index first
    if candidates is not None:
        order = order[candidates[order]]
    mask[order[:count]] = True
    return mask


_lowest = lowest  # the old private name


def lowest_per_block(scores: np.ndarray, blocks: int, count: int,
                     candidates: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of the ``count`` lowest of ``scores`` in each of ``blocks`` equal consecutive
    blocks (see :func:`lowest`; ``candidates`` per channel, like ``scores``)."""
    scores = np.asarray(scores).reshape(-1)
    size = scores.shape[0] // blocks
    parts = [lowest(scores[b * size:(b + 1) * size], count,
                    None if candidates is None else candidates[b * size:(b + 1) * size])
             for b in range(blocks)]
    return np.concatenate(parts)


def _per_block(g: Group, scores: np.ndarray, remove_per_block: int,
               candidates: np.ndarray | None = None) -> np.ndarray:
    """Remove ``remove_per_block`` lowest-scored channels in each of the group's blocks."""
    return lowest_per_block(scores, g.blocks, remove_per_block, candidates)


def _block_round(round_to: int, blocks: int) -> int:
    """Per-block multiple so that the total width is a multiple of ``round_to`` where possible."""
    return max(1, round_to // math.gcd(round_to, blocks))


def select_ratio(groups: list[Group], scores: dict[int, np.ndarray], ratio: float, round_to: int = 1,
                 min_channels: int = 1) -> dict[int, np.ndarray]:
    """Remove ``floor(ratio * width)`` lowest-scored channels of every prunable group (fewer where
    rounding keeps more); of a group of attention heads, the nearest whole number of heads
    (``round(ratio * heads)``, never all), without width rounding."""
    if not 0.0 <= ratio < 1.0:
        raise OptionError(f"{OPT:ratio} must be in [0, 1), got {ratio}")
    out: dict[int, np.ndarray] = {}
    for g in groups:
        if not g.prunable or g.id not in scores:
            continue
        if g.blocks > 1:
            size = g.size // g.blocks
            keep = rounded_keep(size, size - math.floor(ratio * size), _block_round(round_to, g.blocks),
                                math.ceil(min_channels / g.blocks))
            mask = _per_block(g, scores[g.id], size - keep)
        elif g.kind == "heads":  # whole heads: the nearest count, never all, no width rounding
            mask = lowest(scores[g.id], min(g.size - 1, math.floor(ratio * g.size + 0.5)))
        else:
            keep = rounded_keep(g.size, g.size - math.floor(ratio * g.size), round_to, min_channels)
            mask = lowest(scores[g.id], g.size - keep)
        if mask.any():
            out[g.id] = mask
    return out


def select_threshold(groups: list[Group], scores: dict[int, np.ndarray], threshold: float,
                     round_to: int = 1, min_channels: int = 1) -> dict[int, np.ndarray]:
    """Remove channels scored ``<= threshold`` (``0``: exactly the dead ones), keeping widths at
    multiples of ``round_to`` and never emptying a group."""
    if threshold < 0 or not math.isfinite(threshold):
        raise OptionError(f"{OPT:threshold} must be a finite number >= 0, got {threshold}")
    out: dict[int, np.ndarray] = {}
    for g in groups:
        if not g.prunable or g.id not in scores:
            continue
        s = scores[g.id]
        cand = s <= threshold
        if g.blocks > 1:
            size = g.size // g.blocks
            fewest = int(cand.reshape(g.blocks, size).sum(axis=1).min())
            keep = rounded_keep(size, size - fewest, _block_round(round_to, g.blocks),
                                math.ceil(min_channels / g.blocks))
            mask = _per_block(g, s, size - keep, cand)
        else:
            keep = rounded_keep(g.size, g.size - int(cand.sum()), 1 if g.kind == "heads" else round_to,
                                min_channels)
            mask = lowest(s, g.size - keep, cand)
        if mask.any():
            out[g.id] = mask
    return out
