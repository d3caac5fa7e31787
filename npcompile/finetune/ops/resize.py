"""Resampling: Resize (every opset form, nearest and linear modes, the coordinate transformations)
and Upsample."""

from __future__ import annotations

import math

import torch

from npcompile.finetune.registry import OpNode, register
from npcompile.finetune.tensors import floats, ints, present

_COORD_MODES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn",
                "half_pixel_symmetric")


def _resize_check(node: OpNode) -> str | None:
    mode = node.get("mode", "nearest")
    if mode not in ("nearest", "linear", "bilinear", "trilinear"):
        return f"{node.op} mode {mode!r}"
    coord = node.get("coordinate_transformation_mode", "half_pixel")
    if node.op == "Resize" and coord not in _COORD_MODES:
        return f"Resize coordinate_transformation_mode {coord!r}"
    if node.get("antialias", 0):
        return "Resize with antialias"
    policy = node.get("keep_aspect_ratio_policy", "stretch")
    if policy != "stretch":
        return f"Resize keep_aspect_ratio_policy {policy!r}"
    return None


def _source_coords(coord: str, out_len: int, in_len: int, scale: float) -> torch.Tensor:
    x = torch.arange(out_len, dtype=torch.float64)
    if coord == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if coord == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if out_len > 1 else torch.zeros_like(x)
    if coord == "align_corners":
        return x * (in_len - 1) / (out_len - 1) if out_len > 1 else torch.zeros_like(x)
    if coord == "tf_half_pixel_for_nn":
        return (x + 0.5) / scale
    if coord == "half_pixel_symmetric":
        adjustment = out_len / (scale * in_len)
        center = in_len / 2
        offset = center * (1 - adjustment)
        return offset + (x + 0.5) / scale - 0.5
    return x / scale  # asymmetric


def _nearest(coords: torch.Tensor, mode: str, in_len: int) -> torch.Tensor:
    if mode == "floor":
        idx = torch.floor(coords)
    elif mode == "ceil":
        idx = torch.ceil(coords)
    elif mode == "round_prefer_ceil":
        idx = torch.floor(coords + 0.5)
    else:  # round_prefer_floor
        idx = torch.ceil(coords - 0.5)
    return idx.clamp(0, in_len - 1).long()


def _resizeaxes_arg(node: OpNode, x: torch.Tensor, scales: list[float] | None, sizes: list[int] | None
                 ) -> torch.Tensor:
    mode = node.get("mode", "nearest")
    linear = mode != "nearest"
    coord = node.get("coordinate_transformation_mode", "half_pixel" if node.op == "Resize" and node.opset >= 11
                     else "asymmetric")
    nearest_mode = node.get("nearest_mode", "round_prefer_floor" if node.op == "Resize" else "floor")
    axes = node.get("axes")
    rank = x.ndim
    axes = [a % rank for a in axes] if axes else list(range(rank))
    for k, a in enumerate(axes):
        in_len = int(x.shape[a])
        if sizes is not None:
            out_len = int(sizes[k])
            scale = out_len / in_len
        else:
            scale = float(scales[k])
            out_len = int(math.floor(in_len * scale))
        if out_len == in_len and scale == 1.0:
            continue
        coords = _source_coords(coord, out_len, in_len, scale)
        if not linear:
            x = x.index_select(a, _nearest(coords, nearest_mode, in_len))
            continue
        lo = torch.floor(coords)
        w = (coords - lo).to(x.dtype)
        i0 = lo.long().clamp(0, in_len - 1)
        i1 = (lo.long() + 1).clamp(0, in_len - 1)
        shape = [1] * rank
        shape[a] = out_len
        w = w.reshape(shape)
        x = x.index_select(a, i0) * (1 - w) + x.index_select(a, i1) * w
    return x


@register("Resize", static=(1, 2, 3), check=_resize_check)
def _resize(node: OpNode, x: torch.Tensor, roi: torch.Tensor | None = None, scales: torch.Tensor | None = None,
            sizes: torch.Tensor | None = None) -> torch.Tensor:
    if node.opset < 11:  # Resize-10: (X, scales)
        scales, sizes = roi, None
    return _resizeaxes_arg(node, x, floats(scales) if present(scales) else None,
                        ints(sizes) if present(sizes) else None)


@register("Upsample", static=(1,), check=_resize_check)
def _upsample(node: OpNode, x: torch.Tensor, scales: torch.Tensor | None = None) -> torch.Tensor:
    s = floats(scales) if present(scales) else list(node.get("scales"))
    return _resizeaxes_arg(node, x, s, None)
