"""Solving from the streamed sums: the ridge least-squares fit with an intercept
(:func:`solve`), the squared error of any fit (:func:`errors`) and the reference output energy.
"""

from __future__ import annotations

import numpy as np

from npcompile.recovery.stats import LayerStats

__all__ = ["regularised", "centered", "solve", "errors", "output_energy"]


def regularised(cxx: np.ndarray, ridge: float) -> np.ndarray:
    """``G + diag(λ)`` for Gram matrices ``[..., d, d]``: ``λ_i = ridge·(G_ii + 10⁻³·tr(G)/d)``,
    relative to each column's own second moment (so rescaling an input does not change its
    shrinkage) plus a small share of the mean diagonal (columns that never vary, such as removed
    or dead channels, stay solvable); at ``ridge=0`` a 10⁻⁹ share of the mean keeps it regular."""
    diag = np.diagonal(cxx, axis1=-2, axis2=-1)
    mean = diag.mean(axis=-1, keepdims=True)
    lam = ridge * diag + max(ridge, 1e-6) * 1e-3 * mean + 1e-30
    d = cxx.shape[-1]
    out = cxx.copy()
    idx = np.arange(d)
    out[..., idx, idx] += lam
    return out


def centered(stats: LayerStats, intercept: bool = True) -> tuple[np.ndarray, np.ndarray | None, np.ndarray,
                                                                 np.ndarray | None]:
    """(Cxx, Cxy, x̄, ȳ) per block; uncentered second moments when ``intercept`` is False."""
    n = max(stats.n, 1)
    xm = stats.sx / n
    cxx = stats.sxx / n
    ym = stats.sy / n if stats.sy is not None else None
    cxy = stats.sxy / n if stats.sxy is not None else None
    if intercept:
        cxx = cxx - xm[:, :, None] * xm[:, None, :]
        if cxy is not None:
            cxy = cxy - xm[:, :, None] * ym[:, None, :]
    return cxx, cxy, xm, ym


def _solve_spd(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.solve(a, b)
    except np.linalg.LinAlgError:
        return np.stack([np.linalg.lstsq(a[i], b[i], rcond=None)[0] for i in range(a.shape[0])])


def solve(stats: LayerStats, ridge: float, intercept: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Ridge least squares ``min ‖XW + 1βᵀ − Y‖² + n·Σ_i λ_i‖W_i‖²`` per block (λ: see
    :func:`regularised`; β unpenalised, zero without ``intercept``) from the streamed sums:
    returns ``W [b, d, o]`` and ``β [b, o]``."""
    cxx, cxy, xm, ym = centered(stats, intercept)
    w = _solve_spd(regularised(cxx, ridge), cxy)
    beta = ym - np.einsum("bdo,bd->bo", w, xm) if intercept else np.zeros_like(ym)
    return w, beta


def errors(stats: LayerStats, w: np.ndarray, beta: np.ndarray | None = None) -> float:
    """``Σ‖y − Wᵀx − β‖²`` over the streamed rows, all blocks (from the sums alone)."""
    beta = np.zeros(stats.sy.shape) if beta is None else beta
    e = stats.syy.sum() - 2 * np.einsum("bdo,bdo->", w, stats.sxy) + np.einsum("bdo,bde,beo->", w, stats.sxx, w)
    resid = stats.sy - np.einsum("bdo,bd->bo", w, stats.sx)  # Σ(y − Wᵀx)
    e += -2 * np.einsum("bo,bo->", beta, resid) + stats.n * float((beta**2).sum())
    return max(float(e), 0.0)


def output_energy(stats: LayerStats, bias: np.ndarray) -> float:
    """``Σ‖y + b‖²``: the reference output's energy (``bias``: per block ``[b, o]``)."""
    return float(stats.syy.sum() + 2 * (bias * stats.sy).sum() + stats.n * (bias**2).sum())
