"""Streaming statistics: running sums of each layer's normal equations (:class:`LayerStats`),
exact column means (:class:`MeanStats`), per-channel moments (:class:`ChannelMoments`), all folded
in batch by batch from the data stream (:func:`stream`, over :mod:`npcompile.runtime.stream`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from npcompile.recovery.layers import Layer, conv_column_sums, sample_positions
from npcompile.runtime.data import Dataset
from npcompile.runtime.stream import TensorStream, batches

__all__ = ["blas_threads", "LayerStats", "MeanStats", "ChannelMoments", "stream"]


def blas_threads(n: int = 1) -> contextlib.AbstractContextManager:
    """Limit NumPy's BLAS to ``n`` threads while the normal equations are accumulated (with
    ``threadpoolctl``, when installed). The products are many mid-sized ones between ONNX Runtime
    runs; on a busy machine a multi-threaded OpenBLAS spends far more time synchronising its
    threads than computing (measured 30x slower on 2 shared cores)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional
        return contextlib.nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


class LayerStats:
    """Running sums of one layer's normal equations, per block (float64).

    ``x`` rows (``[rows, blocks, d]``) and optional targets ``y`` (``[rows, blocks, o]``):
    ``n``, ``sx [b, d]``, ``sxx [b, d, d]``, ``sy [b, o]``, ``sxy [b, d, o]``, ``syy [b]``.
    """

    def __init__(self, layer: Layer, x_name: str, y_name: str | None, positions: int) -> None:
        self.layer, self.x_name, self.y_name, self.positions = layer, x_name, y_name, positions
        self.n = 0
        self.sx = self.sxx = self.sy = self.sxy = self.syy = None
        self.seconds = 0.0

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in (("sx", self.sx), ("sxx", self.sxx), ("sy", self.sy), ("sxy", self.sxy),
                                  ("syy", self.syy)) if v is not None}

    def update(self, first: int, x: np.ndarray, y: np.ndarray | None, y_shape: tuple[int, ...]) -> None:
        t0 = time.perf_counter()
        layer = self.layer
        per, out_sp = layer.per_sample(x.shape, y_shape)
        n_idx, pos = sample_positions(first, x.shape[0], per, self.positions, layer.salt)
        xr = layer.x_rows(x, n_idx, pos, out_sp).astype(np.float64)
        rows, b, d = xr.shape
        if self.sx is None:
            self.sx, self.sxx = np.zeros((b, d)), np.zeros((b, d, d))
        self.n += rows
        self.sx += xr.sum(axis=0)
        yr = layer.y_rows(y, n_idx, pos).astype(np.float64) if y is not None else None
        if yr is not None and self.sy is None:
            o = yr.shape[2]
            self.sy, self.sxy, self.syy = np.zeros((b, o)), np.zeros((b, d, o)), np.zeros(b)
        if b == 1 or d > 32:
            for j in range(b):  # contiguous 2-D products: BLAS (syrk for xᵀx)
                xj = np.ascontiguousarray(xr[:, j, :])
                self.sxx[j] += xj.T @ xj
                if yr is not None:
                    self.sxy[j] += xj.T @ np.ascontiguousarray(yr[:, j, :])
        else:  # many small blocks (depthwise): one einsum
            self.sxx += np.einsum("rbi,rbj->bij", xr, xr)
            if yr is not None:
                self.sxy += np.einsum("rbi,rbo->bio", xr, yr)
        if yr is not None:
            self.sy += yr.sum(axis=0)
            self.syy += np.einsum("rbo,rbo->b", yr, yr)
        self.seconds += time.perf_counter() - t0


class MeanStats:
    """Exact means of one layer's input columns (every sample and output position) for the
    input channels/features ``channels`` (reference indices): ``sums [len(channels), K]``."""

    def __init__(self, layer: Layer, channels: np.ndarray) -> None:
        self.layer, self.channels = layer, np.asarray(channels, np.int64)
        self.sums = np.zeros((len(self.channels), layer.ksize if layer.op == "Conv" else 1))
        self.count = 0

    def update(self, x: np.ndarray, y_shape: tuple[int, ...]) -> None:
        layer = self.layer
        if layer.op == "Conv":
            out_sp = tuple(int(s) for s in y_shape[2:])
            self.sums += conv_column_sums(x, layer, self.channels, out_sp)
            self.count += x.shape[0] * int(np.prod(out_sp))
        else:
            f = x.shape[-1]
            rows = x.reshape(-1, f)
            self.sums[:, 0] += rows[:, self.channels].sum(axis=0, dtype=np.float64)
            self.count += rows.shape[0]

    def means(self) -> np.ndarray:
        return self.sums / max(self.count, 1)


class ChannelMoments:
    """Per-channel mean and (population) variance of ``tensor`` along ``axis``, merged batch by
    batch with Chan's parallel formula (an accumulator for :class:`~npcompile.runtime.calibrate.Calibrator`)."""

    def __init__(self, tensor: str, axis: int = 1) -> None:
        self.tensor, self.axis = tensor, axis
        self.tensors = (tensor,)
        self.count = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None

    def update(self, values: dict[str, np.ndarray]) -> None:
        x = values[self.tensor]
        a = np.moveaxis(x, self.axis, 0).reshape(x.shape[self.axis], -1).astype(np.float64)
        m = a.shape[1]
        if m == 0:
            return
        mean_b = a.mean(axis=1)
        m2_b = ((a - mean_b[:, None]) ** 2).sum(axis=1)
        if self.mean is None:
            self.count, self.mean, self.m2 = m, mean_b, m2_b
            return
        n = self.count + m
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (m / n)
        self.m2 = self.m2 + m2_b + delta**2 * (self.count * m / n)
        self.count = n

    @property
    def var(self) -> np.ndarray:
        return self.m2 / max(self.count, 1)


def stream(dataset: Dataset, batch_size: int, sessions: Sequence[tuple[Any, Sequence[str]]],
           fn: Callable[[int, list[dict[str, np.ndarray]]], None]) -> tuple[int, list[float]]:
    """Run every batch of ``dataset`` through each ``(calibrator, tensors)`` (a
    :class:`~npcompile.runtime.calibrate.Calibrator` exposing them) and call ``fn(first, values)`` with
    the index of the batch's first sample and one dict of tensors per session. Only one batch of
    activations is held at a time. Returns (samples, seconds spent in each session)."""
    streams = [TensorStream(cal.session, cal.inputs) for cal, _ in sessions]
    first = 0
    for batch in batches(dataset, batch_size):
        values = [ts.run(names, batch.feeds) for ts, (_, names) in zip(streams, sessions, strict=True)]
        fn(batch.first, values)
        first += batch.size
    return first, [ts.seconds for ts in streams]
