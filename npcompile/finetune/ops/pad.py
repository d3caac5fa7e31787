"""Pad, and the padding arithmetic convolutions and pools share (ONNX pads to F.pad pairs,
``auto_pad``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from npcompile.finetune.registry import OpNode, register
from npcompile.finetune.tensors import ints, present

__all__ = ["auto_pads", "torch_pads"]


def torch_pads(pads: Sequence[int]) -> list[int]:
    """ONNX ``[b1, b2, ..., e1, e2, ...]`` (first axis first) to F.pad's last-axis-first pairs."""
    nd = len(pads) // 2
    out: list[int] = []
    for i in reversed(range(nd)):
        out += [int(pads[i]), int(pads[i + nd])]
    return out


def auto_pads(node: OpNode, in_shape: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
               dilations: Sequence[int]) -> list[int]:
    nd = len(kernel)
    auto = node.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        return list(node.get("pads") or [0] * (2 * nd))
    if auto == "VALID":
        return [0] * (2 * nd)
    begin, end = [], []
    for i in range(nd):
        out = -(-int(in_shape[i]) // strides[i])
        total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - int(in_shape[i]))
        lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
        begin.append(lo)
        end.append(total - lo)
    return begin + end


def _pad_indices(n: int, before: int, after: int, mode: str) -> torch.Tensor:
    i = torch.arange(-before, n + after)
    if mode == "edge":
        return i.clamp(0, n - 1)
    if mode == "wrap":
        return i.remainder(n)
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    j = i.remainder(period)
    return torch.where(j >= n, period - j, j)


def _pad_check(node: OpNode) -> str | None:
    mode = node.get("mode", "constant")
    return None if mode in ("constant", "reflect", "edge", "wrap") else f"Pad mode {mode!r}"


@register("Pad", static=(1, 2, 3), check=_pad_check)
def _pad(node: OpNode, x: torch.Tensor, pads: torch.Tensor | None = None, value: torch.Tensor | None = None,
         axes: torch.Tensor | None = None) -> torch.Tensor:
    mode = node.get("mode", "constant")
    if node.opset < 11:
        p, cv = list(node.get("pads")), float(node.get("value", 0.0))
    else:
        p = ints(pads)
        cv = value.item() if present(value) else 0
    if present(axes):
        ax = [a % x.ndim for a in ints(axes)]
        full = [0] * (2 * x.ndim)
        for i, a in enumerate(ax):
            full[a], full[a + x.ndim] = p[i], p[i + len(ax)]
        p = full
    nd = x.ndim
    if mode == "constant":
        return F.pad(x, torch_pads(p), value=cv)
    for a in range(nd):
        b, e = p[a], p[a + nd]
        if b < 0:
            x = x.narrow(a, -b, x.shape[a] + b)
            b = 0
        if e < 0:
            x = x.narrow(a, 0, x.shape[a] + e)
            e = 0
        if b or e:
            x = x.index_select(a, _pad_indices(int(x.shape[a]), b, e, mode))
    return x
