"""Indexing: Gather (embedding lookups from a trainable table included) and GatherElements."""

from __future__ import annotations

import torch

from npcompile.finetune.registry import OpNode, register

__all__ = ["norm_index"]


def norm_index(idx: torch.Tensor, dim: int) -> torch.Tensor:
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
