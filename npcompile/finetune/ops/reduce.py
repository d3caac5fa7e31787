"""Reductions: Reduce* (attribute and input axes, noop_with_empty_axes), ArgMax/ArgMin, CumSum."""

from __future__ import annotations

from collections.abc import Callable

import torch

from npcompile.finetune.ops.shape import axes_arg
from npcompile.finetune.registry import OpFn, OpNode, register


def _arg(fn: Callable[..., torch.Tensor]) -> OpFn:
    def run(node: OpNode, x: torch.Tensor) -> torch.Tensor:
        axis = node.get("axis", 0) % x.ndim
        keep = bool(node.get("keepdims", 1))
        if node.get("select_last_index", 0):
            return (x.shape[axis] - 1) - fn(x.flip(axis), dim=axis, keepdim=keep)
        return fn(x, dim=axis, keepdim=keep)

    return run


register("ArgMax")(_arg(torch.argmax))
register("ArgMin")(_arg(torch.argmin))


@register("CumSum", static=(1,))
def _cumsum(node: OpNode, x: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
    a = int(axis.item()) % x.ndim
    if node.get("reverse", 0):
        x = x.flip(a)
    y = torch.cumsum(x, a)
    if node.get("exclusive", 0):
        y = y - x
    return y.flip(a) if node.get("reverse", 0) else y




def _reduce(fn: Callable[[torch.Tensor, tuple[int, ...], bool], torch.Tensor],
            noop: Callable[[torch.Tensor], torch.Tensor] | None = None) -> OpFn:
    def run(node: OpNode, x: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
        ax = axes_arg(node, axes)
        keep = bool(node.get("keepdims", 1))
        if not ax:
            if node.get("noop_with_empty_axes", 0):
                # no reduction, but (as in ONNX Runtime) the elementwise part still applies
                return x if noop is None else noop(x)
            ax = list(range(x.ndim))
        return fn(x, tuple(a % x.ndim for a in ax), keep)

    return run


def _prod(x: torch.Tensor, dims: tuple[int, ...], keep: bool) -> torch.Tensor:
    for d in sorted(dims, reverse=True):
        x = torch.prod(x, d, keepdim=keep)
    return x


for _op, _fn, _noop in (
    ("ReduceMean", lambda x, d, k: x.mean(dim=d, keepdim=k), None),
    ("ReduceSum", lambda x, d, k: x.sum(dim=d, keepdim=k), None),
    ("ReduceMax", lambda x, d, k: torch.amax(x, dim=d, keepdim=k), None),
    ("ReduceMin", lambda x, d, k: torch.amin(x, dim=d, keepdim=k), None),
    ("ReduceProd", _prod, None),
    ("ReduceL1", lambda x, d, k: x.abs().sum(dim=d, keepdim=k), torch.abs),
    ("ReduceL2", lambda x, d, k: (x * x).sum(dim=d, keepdim=k).sqrt(), torch.abs),
    ("ReduceSumSquare", lambda x, d, k: (x * x).sum(dim=d, keepdim=k), lambda x: x * x),
    ("ReduceLogSumExp", lambda x, d, k: torch.logsumexp(x, dim=d, keepdim=k), None),
    ("ReduceLogSum", lambda x, d, k: x.sum(dim=d, keepdim=k).log(), torch.log),
):
    register(_op, static=(1,))(_reduce(_fn, _noop))
