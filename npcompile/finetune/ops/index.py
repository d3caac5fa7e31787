"""Indexing: Gather (embedding lookups from a trainable table included), GatherElements, GatherND,
and the scatters (ScatterND, ScatterElements, with their reductions)."""

from __future__ import annotations

import math

import torch

from npcompile.finetune.registry import OpNode, register

__all__ = ["norm_index"]


def norm_index(idx: torch.Tensor, dim: int | torch.Tensor) -> torch.Tensor:
    """``idx`` as int64/int32 indices with negative ones counted from the end of ``dim``."""
    if idx.dtype not in (torch.int64, torch.int32):
        idx = idx.long()
    if idx.numel() and bool((idx < 0).any()):
        idx = torch.where(idx < 0, idx + dim, idx)
    return idx


@register("Gather")
def _gather(node: OpNode, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    axis = node.get("axis", 0) % x.ndim
    idx = norm_index(idx, int(x.shape[axis]))
    if idx.ndim == 0:
        return x.select(axis, int(idx))
    out = x.index_select(axis, idx.reshape(-1))
    if idx.ndim == 1:
        return out
    return out.reshape(*x.shape[:axis], *idx.shape, *x.shape[axis + 1:])


@register("GatherElements")
def _gather_elements(node: OpNode, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    axis = node.get("axis", 0) % x.ndim
    return torch.gather(x, axis, norm_index(idx, int(x.shape[axis])).long())


def _nd_index(idx: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    """The last axis of ``idx`` (``k`` coordinates into the first ``k`` axes of ``shape``) as ``k``
    flat int64 index tensors, negative coordinates counted from the end."""
    k = int(idx.shape[-1])
    flat = idx.reshape(-1, k).long()
    dims = torch.tensor(shape[:k], dtype=torch.int64, device=flat.device)
    return tuple(norm_index(flat, dims).unbind(-1))


@register("GatherND")
def _gather_nd(node: OpNode, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    b = node.get("batch_dims", 0)
    k = int(idx.shape[-1])
    nb = math.prod(x.shape[:b])
    xb = x.reshape(nb, *x.shape[b:])
    per = idx.reshape(nb, -1, k)
    coords = _nd_index(per, tuple(xb.shape[1:]))
    batch = torch.arange(nb, device=x.device).repeat_interleave(per.shape[1])
    out = xb[(batch, *coords)]
    return out.reshape(*idx.shape[:-1], *x.shape[b + k:])


_REDUCE = {"mul": "prod", "max": "amax", "min": "amin"}


def _reduction_check(node: OpNode) -> str | None:
    red = node.get("reduction", "none")
    return None if red in ("none", "add", *_REDUCE) else f"{node.op} reduction {red!r}"


@register("ScatterND", check=_reduction_check)
def _scatter_nd(node: OpNode, x: torch.Tensor, idx: torch.Tensor, updates: torch.Tensor) -> torch.Tensor:
    k = int(idx.shape[-1])
    coords = _nd_index(idx, tuple(x.shape))
    upd = updates.reshape(-1, *x.shape[k:])
    red = node.get("reduction", "none")
    if red in ("none", "add"):
        return x.index_put(coords, upd, accumulate=red == "add")
    strides = [math.prod(x.shape[i + 1:k]) for i in range(k)]
    lin = sum(c * s for c, s in zip(coords, strides, strict=True))
    flat = x.reshape(math.prod(x.shape[:k]), *x.shape[k:])
    index = lin.reshape(-1, *([1] * (upd.ndim - 1))).expand_as(upd)
    return flat.scatter_reduce(0, index, upd, _REDUCE[red], include_self=True).reshape(x.shape)


@register("ScatterElements", "Scatter", check=_reduction_check)
def _scatter_elements(node: OpNode, x: torch.Tensor, idx: torch.Tensor, updates: torch.Tensor) -> torch.Tensor:
    axis = node.get("axis", 0) % x.ndim
    idx = norm_index(idx, int(x.shape[axis])).long()
    red = node.get("reduction", "none")
    if red == "none":
        return x.scatter(axis, idx, updates)
    if red == "add":
        return x.scatter_add(axis, idx, updates)
    return x.scatter_reduce(axis, idx, updates, _REDUCE[red], include_self=True)
