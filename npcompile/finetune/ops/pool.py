"""Pooling: MaxPool, AveragePool (pads, ceil mode, count_include_pad, dilations for MaxPool) and the
global pools."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from npcompile.finetune.ops.pad import auto_pads, torch_pads
from npcompile.finetune.registry import OpNode, register

_MAXPOOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVGPOOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _pool_setup(node: OpNode, x: torch.Tensor) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    kernel = list(node.get("kernel_shape"))
    nd = len(kernel)
    strides = list(node.get("strides") or [1] * nd)
    dil = list(node.get("dilations") or [1] * nd)
    in_shape = [int(s) for s in x.shape[2:]]
    pads = auto_pads(node, in_shape, kernel, strides, dil)
    ceil = node.get("ceil_mode", 0)
    out = []
    for i in range(nd):
        span = in_shape[i] + pads[i] + pads[i + nd] - ((kernel[i] - 1) * dil[i] + 1)
        if ceil:
            o = -(-span // strides[i]) + 1
            if (o - 1) * strides[i] >= in_shape[i] + pads[i]:
                o -= 1
        else:
            o = span // strides[i] + 1
        out.append(o)
    return kernel, strides, dil, pads, out


def _crop_to(y: torch.Tensor, out: list[int]) -> torch.Tensor:
    for i, o in enumerate(out):
        if y.shape[2 + i] > o:
            y = y.narrow(2 + i, 0, o)
    return y


def _maxpool_check(node: OpNode) -> str | None:
    if 1 in node.used:
        return "MaxPool with its Indices output in use"
    return _pool_rank_check(node)


def _pool_rank_check(node: OpNode) -> str | None:
    k = node.get("kernel_shape")
    if k is None or len(k) not in (1, 2, 3):
        return f"{node.op} over {len(k) if k else 0} spatial dimensions"
    return None


@register("MaxPool", check=_maxpool_check)
def _maxpool(node: OpNode, x: torch.Tensor) -> torch.Tensor:
    key = tuple(x.shape[2:])
    cached = node.cache.get(key)
    if cached is None:
        kernel, strides, dil, pads, out = _pool_setup(node, x)
        nd = len(kernel)
        ceil = bool(node.get("ceil_mode", 0))
        direct = pads[:nd] == pads[nd:] and all(p <= ((k - 1) * d + 1) // 2 for p, k, d in
                                                zip(pads[:nd], kernel, dil, strict=True))
        cached = (_MAXPOOL[nd], kernel, strides, dil, ceil, pads[:nd] if direct else 0,
                  None if direct else torch_pads(pads), out)
        node.cache[key] = cached
    fn, kernel, strides, dil, ceil, padding, explicit, out = cached
    if explicit is not None:
        x = F.pad(x, explicit, value=-math.inf)
    y = fn(x, kernel, strides, padding, dil, ceil_mode=ceil)
    return _crop_to(y, out) if ceil else y


def _avgpool_check(node: OpNode) -> str | None:
    dil = node.get("dilations")
    if dil and any(d != 1 for d in dil):
        return "AveragePool with dilations"
    return _pool_rank_check(node)


def _sum_pool(x: torch.Tensor, kernel: list[int], strides: list[int], ceil: bool) -> torch.Tensor:
    """Window sums over valid positions (no padding, ``ceil_mode`` windows clipped)."""
    nd = len(kernel)
    if nd == 1:
        return _sum_pool(x.unsqueeze(-1), kernel + [1], strides + [1], ceil).squeeze(-1)
    return _AVGPOOL[nd](x, kernel, strides, 0, ceil_mode=ceil, count_include_pad=True, divisor_override=1)


@register("AveragePool", check=_avgpool_check)
def _avgpool(node: OpNode, x: torch.Tensor) -> torch.Tensor:
    kernel, strides, _, pads, out = _pool_setup(node, x)
    nd = len(kernel)
    ceil = bool(node.get("ceil_mode", 0))
    include = bool(node.get("count_include_pad", 0))
    if pads[:nd] == pads[nd:] and all(p <= k // 2 for p, k in zip(pads[:nd], kernel, strict=True)):
        y = _AVGPOOL[nd](x, kernel, strides, pads[:nd], ceil_mode=ceil, count_include_pad=include)
        return _crop_to(y, out) if ceil else y
    tp = torch_pads(pads)
    ones = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype)
    mask = F.pad(ones, tp, value=1.0 if include else 0.0)
    total = _sum_pool(F.pad(x, tp), kernel, strides, ceil)
    count = _sum_pool(mask, kernel, strides, ceil)
    return _crop_to(total / count, out)


@register("GlobalAveragePool")
def _global_avgpool(node: OpNode, x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)


@register("GlobalMaxPool")
def _global_maxpool(node: OpNode, x: torch.Tensor) -> torch.Tensor:
    return torch.amax(x, dim=tuple(range(2, x.ndim)), keepdim=True)
