"""Shape and layout ops: Flatten, Reshape, Transpose, Squeeze/Unsqueeze, Concat, Split, Slice, Shape,
Size, Constant, ConstantOfShape, Cast/CastLike, Expand, Tile, Range, Trilu."""

from __future__ import annotations

import math

import torch

from npcompile.errors import UserError
from npcompile.finetune.registry import OpNode, register
from npcompile.finetune.tensors import ints, present, tensor_from_proto, torch_dtype

__all__ = ["axes_arg", "constant_value"]


@register("Flatten")
def _flatten(node: OpNode, x: torch.Tensor) -> torch.Tensor:
    axis = node.get("axis", 1)
    if axis < 0:
        axis += x.ndim
    lead = math.prod(x.shape[:axis])
    return x.reshape(lead, math.prod(x.shape[axis:]))


@register("Reshape", static=(1,))
def _reshape(node: OpNode, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    dims = ints(shape)
    if not node.get("allowzero", 0):
        dims = [int(x.shape[i]) if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


@register("Transpose")
def _transpose(node: OpNode, x: torch.Tensor) -> torch.Tensor:
    perm = node.get("perm")
    return x.permute(*(perm if perm is not None else reversed(range(x.ndim))))


def axes_arg(node: OpNode, axes: torch.Tensor | None) -> list[int] | None:
    if present(axes):
        return ints(axes)
    a = node.get("axes")
    return list(a) if a is not None else None


@register("Squeeze", static=(1,))
def _squeeze(node: OpNode, x: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
    ax = axes_arg(node, axes)
    if not ax:
        return x.squeeze()
    return x.squeeze(tuple(a % x.ndim for a in ax))


@register("Unsqueeze", static=(1,))
def _unsqueeze(node: OpNode, x: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
    ax = axes_arg(node, axes) or []
    rank = x.ndim + len(ax)
    for a in sorted(a % rank for a in ax):
        x = x.unsqueeze(a)
    return x


@register("Concat")
def _concat(node: OpNode, *xs: torch.Tensor) -> torch.Tensor:
    return torch.cat(xs, node.get("axis"))


@register("Split", static=(1,))
def _split(node: OpNode, x: torch.Tensor, split: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    axis = node.get("axis", 0) % x.ndim
    sizes = ints(split) if present(split) else node.get("split")
    if not sizes:
        n = node.get("num_outputs") or len(node.outputs)
        dim = int(x.shape[axis])
        size = -(-dim // n)
        sizes = [size] * (n - 1) + [dim - size * (n - 1)]
    return tuple(torch.split(x, list(sizes), axis))


@register("Slice", static=(1, 2, 3, 4))
def _slice(node: OpNode, x: torch.Tensor, starts: torch.Tensor | None = None, ends: torch.Tensor | None = None,
           axes: torch.Tensor | None = None, steps: torch.Tensor | None = None) -> torch.Tensor:
    if node.opset < 10:
        st, en = list(node.get("starts")), list(node.get("ends"))
        ax = list(node.get("axes") or range(len(st)))
        sp = [1] * len(st)
    else:
        st, en = ints(starts), ints(ends)
        ax = ints(axes) if present(axes) else list(range(len(st)))
        sp = ints(steps) if present(steps) else [1] * len(st)
    index: list[slice] = [slice(None)] * x.ndim
    flips: list[int] = []
    for s, e, a, step in zip(st, en, ax, sp, strict=True):
        a %= x.ndim
        dim = int(x.shape[a])
        if s < 0:
            s += dim
        if e < 0:
            e += dim
        if step > 0:
            index[a] = slice(min(max(s, 0), dim), min(max(e, 0), dim), step)
        else:
            s, e = min(max(s, 0), dim - 1), min(max(e, -1), dim - 1)
            flips.append(a)
            index[a] = slice(dim - 1 - s, dim - 1 - e, -step)
    if flips:
        x = x.flip(flips)
    return x[tuple(index)]



@register("Shape")
def _shape(node: OpNode, x: torch.Tensor) -> torch.Tensor:
    dims = list(x.shape)
    start, end = node.get("start", 0), node.get("end")
    return torch.tensor(dims[start:end], dtype=torch.int64)


@register("Size")
def _size(node: OpNode, x: torch.Tensor) -> torch.Tensor:
    return torch.tensor(x.numel(), dtype=torch.int64)


def _constant_check(node: OpNode) -> str | None:
    bad = [k for k in node.attrs if k in ("sparse_value", "value_string", "value_strings")]
    return f"Constant with {bad[0]}" if bad else None


@register("Constant", check=_constant_check)
def constant_value(node: OpNode) -> torch.Tensor:
    a = node.attrs
    if "value" in a:
        return tensor_from_proto(a["value"])
    for key, dtype in (("value_float", torch.float32), ("value_int", torch.int64),
                       ("value_floats", torch.float32), ("value_ints", torch.int64)):
        if key in a:
            return torch.tensor(a[key], dtype=dtype)
    raise UserError(f"Constant {node.name} holds a value torch cannot take ({', '.join(a)})")


@register("ConstantOfShape", static=(0,))
def _constant_of_shape(node: OpNode, shape: torch.Tensor) -> torch.Tensor:
    value = node.get("value")
    fill = tensor_from_proto(value).reshape(-1) if value is not None else torch.zeros(1)
    return torch.full(ints(shape), fill[0].item(), dtype=fill.dtype)


@register("Cast")
def _cast(node: OpNode, x: torch.Tensor) -> torch.Tensor:
    return x.to(torch_dtype(node.get("to")))


@register("CastLike")
def _cast_like(node: OpNode, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return x.to(like.dtype)


@register("Expand", static=(1,))
def _expand(node: OpNode, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(ints(shape))))


@register("Tile", static=(1,))
def _tile(node: OpNode, x: torch.Tensor, repeats: torch.Tensor) -> torch.Tensor:
    return x.repeat(*ints(repeats))


@register("Range", static=(0, 1, 2))
def _range(node: OpNode, start: torch.Tensor, limit: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)



@register("Trilu", static=(1,))
def _trilu(node: OpNode, x: torch.Tensor, k: torch.Tensor | None = None) -> torch.Tensor:
    diag = int(k.item()) if present(k) else 0
    return torch.triu(x, diag) if node.get("upper", 1) else torch.tril(x, diag)
