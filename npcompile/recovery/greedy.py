"""Reconstruction-aware channel selection: remove, one at a time, the channel whose removal least
increases the optimal least-squares error of the consumers (:func:`greedy_removal`), with the
block-deletion (Schur complement) update of the inverse Gram matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from npcompile.channels.analysis import ChannelAnalysis, Group, Site
from npcompile.recovery.solve import regularised

__all__ = ["group_columns", "consumer_state", "greedy_removal"]


def group_columns(analysis: ChannelAnalysis, group: Group, site: Site, ksize: int) -> dict[int, np.ndarray]:
    """Channel of ``group`` -> the columns of the consumer ``site`` that it feeds (positions of
    the weight's input axis times the kernel)."""
    lay = site.layout
    idx = np.arange(lay.size).reshape(lay.outer, lay.channels, lay.inner)
    out: dict[int, list[np.ndarray]] = {}
    off = 0
    for piece in lay.pieces:
        if piece.group is not None and analysis.find(piece.group) == group.id:
            for c in range(piece.start, piece.stop):
                pos = idx[:, off + c - piece.start, :].ravel()
                cols = (pos[:, None] * ksize + np.arange(ksize)[None, :]).ravel()
                out.setdefault(c, []).append(cols)
        off += len(piece)
    return {c: np.unique(np.concatenate(v)) for c, v in out.items()}


@dataclass
class _Consumer:
    h: np.ndarray  # inverse of the (ridged) Gram matrix over the kept columns (zeros elsewhere)
    w: np.ndarray  # current optimal weights over the kept columns
    cols: dict[int, np.ndarray]
    norm: float


def consumer_state(cxx: np.ndarray, w_ref: np.ndarray, ridge: float, cols: dict[int, np.ndarray]) -> _Consumer:
    """Start of the greedy for one consumer: the full (centered) Gram matrix ``cxx [d, d]`` and
    reference weights ``w_ref [d, o]`` (targets ``y = xᵀW_ref``)."""
    h = np.linalg.inv(regularised(cxx, ridge))
    h = (h + h.T) / 2
    w = h @ (cxx @ w_ref)
    norm = float(np.einsum("do,de,eo->", w_ref, cxx, w_ref))
    return _Consumer(h, w, cols, max(norm, 1e-30))


def _deltas(c: _Consumer, chans: Sequence[int]) -> np.ndarray:
    """Relative error increase of removing each of ``chans`` (alone) from consumer ``c``: the
    block-deletion formula ``tr(W_Iᵀ (H_II)⁻¹ W_I)`` with ``H`` the current inverse Gram matrix,
    batched over channels with the same number of columns."""
    out = np.zeros(len(chans))
    by_len: dict[int, list[int]] = {}
    for i, ch in enumerate(chans):
        cols = c.cols.get(ch)
        if cols is not None and len(cols):
            by_len.setdefault(len(cols), []).append(i)
    for idxs in by_len.values():
        idx = np.stack([c.cols[chans[i]] for i in idxs])  # [m, k]
        hs = c.h[idx[:, :, None], idx[:, None, :]]  # [m, k, k]
        ws = c.w[idx]  # [m, k, o]
        try:
            z = np.linalg.solve(hs, ws)
        except np.linalg.LinAlgError:
            z = np.stack([np.linalg.lstsq(h, w, rcond=None)[0] for h, w in zip(hs, ws, strict=True)])
        out[idxs] = (ws * z).sum(axis=(1, 2)) / c.norm
    return out


def _remove(c: _Consumer, cols: np.ndarray) -> None:
    hii = c.h[np.ix_(cols, cols)]
    try:
        inv = np.linalg.inv(hii)
    except np.linalg.LinAlgError:
        inv = np.linalg.pinv(hii)
    hi = c.h[:, cols]
    c.w -= hi @ (inv @ c.w[cols])
    c.h -= hi @ inv @ hi.T
    c.h[cols, :] = 0.0
    c.h[:, cols] = 0.0
    c.w[cols] = 0.0


def greedy_removal(size: int, blocks: int, per_block: int, consumers: Sequence[_Consumer],
                   forced: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Remove ``per_block`` channels from each of ``blocks`` equal blocks of a group of ``size``,
    one at a time, each time the channel whose removal least increases the sum over consumers of
    the relative least-squares error (with every kept column refit). Returns the mask and the
    predicted relative error increase. ``forced``: channels removed first (dead ones)."""
    mask = np.zeros(size, bool)
    bsize = size // blocks
    left = np.full(blocks, per_block)
    total = 0.0

    def take(ch: int) -> None:
        nonlocal total
        mask[ch] = True
        left[ch // bsize] -= 1
        for c in consumers:
            cols = c.cols.get(ch)
            if cols is not None and len(cols):
                total += float(_deltas(c, [ch])[0])
                _remove(c, cols)

    if forced is not None:
        for ch in np.flatnonzero(forced):
            if left[ch // bsize] > 0:
                take(int(ch))
    while left.sum() > 0:
        cand = [ch for ch in range(size) if not mask[ch] and left[ch // bsize] > 0]
        if not cand:
            break
        d = np.zeros(len(cand))
        for c in consumers:
            d += _deltas(c, cand)
        take(cand[int(np.argmin(d))])  # ties: the lowest index
    return mask, total
