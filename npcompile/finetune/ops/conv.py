"""Convolutions: Conv and ConvTranspose over 1, 2 or 3 spatial dimensions (explicit, asymmetric and
automatic pads, groups, dilations, output padding and shape)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from npcompile.errors import UserError
from npcompile.finetune.ops.pad import auto_pads, torch_pads
from npcompile.finetune.registry import OpNode, register
from npcompile.finetune.tensors import present

__all__ = ["conv", "nd_check"]


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def nd_check(node: OpNode) -> str | None:
    k = node.get("kernel_shape")
    if k is not None and len(k) not in (1, 2, 3):
        return f"{node.op} over {len(k)} spatial dimensions"
    return None


@register("Conv", weights=(1, 2), check=nd_check)
def conv(node: OpNode, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    key = tuple(x.shape[2:])
    cached = node.cache.get(key)
    if cached is None:
        nd = w.ndim - 2
        if nd not in _CONV:
            raise UserError(f"Conv over {nd} spatial dimensions")
        strides = list(node.get("strides") or [1] * nd)
        dil = list(node.get("dilations") or [1] * nd)
        pads = auto_pads(node, key, list(w.shape[2:]), strides, dil)
        sym = pads[:nd] == pads[nd:]
        cached = (_CONV[nd], strides, dil, node.get("group", 1), pads[:nd] if sym else 0,
                  None if sym else torch_pads(pads))
        node.cache[key] = cached
    fn, strides, dil, group, padding, explicit = cached
    if explicit is not None:
        x = F.pad(x, explicit)
    return fn(x, w, b if present(b) else None, strides, padding, dil, group)


@register("ConvTranspose", weights=(1, 2), check=nd_check)
def _conv_transpose(node: OpNode, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None
                    ) -> torch.Tensor:
    nd = w.ndim - 2
    if nd not in _CONV_T:
        raise UserError(f"ConvTranspose over {nd} spatial dimensions")
    strides = list(node.get("strides") or [1] * nd)
    dil = list(node.get("dilations") or [1] * nd)
    out_pad = list(node.get("output_padding") or [0] * nd)
    group = node.get("group", 1)
    kernel = list(w.shape[2:])
    in_shape = [int(s) for s in x.shape[2:]]
    auto = node.get("auto_pad", "NOTSET")
    output_shape = node.get("output_shape")
    full = [strides[i] * (in_shape[i] - 1) + out_pad[i] + (kernel[i] - 1) * dil[i] + 1 for i in range(nd)]
    if output_shape or auto in ("SAME_UPPER", "SAME_LOWER"):
        target = list(output_shape)[-nd:] if output_shape else [in_shape[i] * strides[i] for i in range(nd)]
        total = [full[i] - int(target[i]) for i in range(nd)]
        if auto == "SAME_UPPER":
            begin = [t // 2 for t in total]
        else:
            begin = [t - t // 2 for t in total]
        pads = begin + [t - bg for t, bg in zip(total, begin, strict=True)]
    elif auto == "VALID":
        pads = [0] * (2 * nd)
    else:
        pads = list(node.get("pads") or [0] * (2 * nd))
    bias = b if present(b) else None
    if pads[:nd] == pads[nd:] and min(pads) >= 0 and all(op < max(s, d) for op, s, d in
                                                         zip(out_pad, strides, dil, strict=True)):
        return _CONV_T[nd](x, w, bias, strides, pads[:nd], out_pad, group, dil)
    y = _CONV_T[nd](x, w, None, strides, 0, 0, group, dil)
    # output_padding adds rows no kernel reaches; then crop (or zero-extend) by the pads
    crop: list[int] = []
    for i in reversed(range(nd)):
        crop += [-pads[i], out_pad[i] - pads[i + nd]]
    y = F.pad(y, crop)
    if bias is not None:
        y = y + bias.reshape(1, -1, *([1] * nd))
    return y
