"""Channel layouts: which group channel sits at which position of a tensor's channel axis.

A :class:`Layout` describes one axis of one tensor (or weight) as a sequence of :class:`Piece` s,
each a window ``[start, stop)`` of one channel group (or of channels no group owns, ``group=None``),
optionally repeated: ``inner`` copies of every channel next to each other (the ``C·H·W`` block
behind a Flatten, a depthwise multiplier) and ``outer`` copies of the whole sequence (an
``H·W·C`` flatten of a channels-last tensor). Position ``p`` of the axis holds slot
``(p // inner) % channels``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["Piece", "Layout"]


@dataclass(frozen=True)
class Piece:
    """Channels ``[start, stop)`` of group ``group`` (``None``: channels no group can prune)."""

    group: int | None
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Layout:
    """The channel structure of one axis; see the module docstring."""

    pieces: tuple[Piece, ...]
    inner: int = 1
    outer: int = 1

    @staticmethod
    def fixed(size: int) -> Layout:
        """An axis of ``size`` channels no group owns."""
        return Layout((Piece(None, 0, size),))

    @staticmethod
    def of_group(group: int, size: int) -> Layout:
        return Layout((Piece(group, 0, size),))

    @property
    def channels(self) -> int:
        """Number of channel slots (positions before the inner/outer repetition)."""
        return sum(len(p) for p in self.pieces)

    @property
    def size(self) -> int:
        """Length of the axis this layout describes."""
        return self.outer * self.channels * self.inner

    def groups(self, find: Callable[[int], int] = lambda g: g) -> set[int]:
        return {find(p.group) for p in self.pieces if p.group is not None}

    @property
    def plain(self) -> bool:
        return self.inner == 1 and self.outer == 1

    def repeat(self, inner: int = 1, outer: int = 1) -> Layout:
        return Layout(self.pieces, self.inner * inner, self.outer * outer)

    def window(self, start: int, stop: int) -> Layout | None:
        """Slots ``[start, stop)`` of a plain layout (``None`` when not plain)."""
        if not self.plain:
            return None
        out: list[Piece] = []
        pos = 0
        for p in self.pieces:
            lo, hi = max(start, pos), min(stop, pos + len(p))
            if lo < hi:
                out.append(Piece(p.group, p.start + lo - pos, p.start + hi - pos))
            pos += len(p)
        return Layout(tuple(out))

    @staticmethod
    def concat(layouts: Iterable[Layout]) -> Layout | None:
        """Concatenation of plain layouts (``None`` when one is not plain)."""
        pieces: list[Piece] = []
        for lay in layouts:
            if not lay.plain:
                return None
            pieces.extend(lay.pieces)
        return Layout(tuple(pieces))

    # -- applying removals ------------------------------------------------------------------
    def slot_keep(self, removed: Mapping[int, np.ndarray], find: Callable[[int], int]) -> np.ndarray:
        """Boolean mask over slots: True where the channel stays."""
        parts = []
        for p in self.pieces:
            mask = removed.get(find(p.group)) if p.group is not None else None
            parts.append(np.ones(len(p), bool) if mask is None else ~mask[p.start : p.stop])
        return np.concatenate(parts) if parts else np.zeros(0, bool)

    def keep_positions(self, removed: Mapping[int, np.ndarray], find: Callable[[int], int]) -> np.ndarray:
        """Positions of the axis that stay, in order."""
        keep = self.slot_keep(removed, find)
        idx = np.arange(self.size).reshape(self.outer, self.channels, self.inner)
        return idx[:, keep, :].ravel()

    def kept_size(self, removed: Mapping[int, np.ndarray], find: Callable[[int], int]) -> int:
        return self.outer * int(self.slot_keep(removed, find).sum()) * self.inner

    def slot_sums(self, array: np.ndarray, axis: int, power: int = 1) -> np.ndarray:
        """Sum of ``|array|**power`` over everything that belongs to each slot along ``axis``."""
        a = np.asarray(array)
        if not np.issubdtype(a.dtype, np.floating):
            a = a.astype(np.float64)
        a = np.abs(a) if power == 1 else np.square(a, dtype=np.float64)
        if a.ndim == 0 or a.shape[axis] == 1:
            return np.full(self.channels, float(a.sum(dtype=np.float64)))
        a = np.moveaxis(a, axis, 0).reshape(self.outer, self.channels, self.inner, -1)
        return a.sum(axis=(0, 2, 3), dtype=np.float64)
