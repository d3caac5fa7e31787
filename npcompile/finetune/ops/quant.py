"""Quantization: QuantizeLinear and DequantizeLinear (per tensor, per axis and blocked),
DynamicQuantizeLinear, and the integer products that follow dynamic quantization (MatMulInteger,
ConvInteger).

Evaluating (``module.eval()``), they are exact: QuantizeLinear rounds half to even and saturates
into the zero point's integer type, as ONNX Runtime does. Training (``module.train()``), they are
*fake quantization*: QuantizeLinear returns the same integer values as floats, and the gradient
passes straight through the rounding (zero outside the representable range, like
``torch.fake_quantize_per_tensor_affine``); DequantizeLinear, MatMulInteger and ConvInteger accept
those floats, so a QDQ graph trains as its quantized function. Scales and zero points are constants.

Quantized weights train too: an integer constant dequantized by a DequantizeLinear with constant
scale and zero point (the int8 weights and int32 biases of ONNX Runtime's QDQ models) becomes a
float parameter holding its dequantized value; the node fake-quantizes it back (the same values
until it changes, the gradient straight through), and writing back stores its integers again.
"""

from __future__ import annotations

import torch

from npcompile.finetune.ops.conv import conv, nd_check
from npcompile.finetune.registry import OpNode, Shadow, register
from npcompile.finetune.tensors import present, torch_dtype

_RANGES: dict[torch.dtype, tuple[int, int]] = {
    torch.uint8: (0, 255), torch.int8: (-128, 127), torch.int16: (-32768, 32767), torch.int32: (-2**31, 2**31 - 1),
}
if hasattr(torch, "uint16"):
    _RANGES[torch.uint16] = (0, 65535)


def _qtype(node: OpNode, zp: torch.Tensor | None) -> torch.dtype:
    """The integer type QuantizeLinear produces: the zero point's, else ``output_dtype``, else uint8."""
    if zp is not None:
        return zp.dtype
    code = node.get("output_dtype", 0)
    return torch_dtype(code) if code else torch.uint8


def _broadcast(node: OpNode, p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A scale or zero point shaped to broadcast against ``x``: a scalar as it is, a 1-D one along
    ``axis`` (per axis), one of ``x``'s rank repeated ``block_size`` times along ``axis`` (blocked)."""
    if p.numel() == 1 and p.ndim <= 1:
        return p.reshape(())
    axis = node.get("axis", 1) % x.ndim
    if p.ndim == 1:
        shape = [1] * x.ndim
        shape[axis] = -1
        return p.reshape(shape)
    block = node.get("block_size", 0)
    return p.repeat_interleave(block, axis).narrow(axis, 0, x.shape[axis])


def _quant_check(node: OpNode) -> str | None:
    code = node.get("output_dtype", 0)
    if code and code not in (2, 3, 4, 5, 6):  # uint8, int8, uint16, int16, int32
        return f"{node.op} to ONNX type {code}"
    return None


def quantize(v: torch.Tensor, zp: torch.Tensor | float, lo: int, hi: int, fake: bool) -> torch.Tensor:
    """``saturate(round(v) + zp)`` (``v = x / scale``, rounding half to even). ``fake``: as floats,
    with the gradient of ``clamp(v + zp)`` (1 inside the range, 0 outside: straight through)."""
    q = (torch.round(v) + zp).clamp(lo, hi)
    if not fake:
        return q
    c = (v + zp).clamp(lo, hi)
    return c + (q - c).detach()


@register("QuantizeLinear", static=(1, 2), check=_quant_check)
def _quantize(node: OpNode, x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None = None) -> torch.Tensor:
    zp = zp if present(zp) else None
    qtype = _qtype(node, zp)
    lo, hi = _RANGES[qtype]
    s = _broadcast(node, scale, x)
    v = x.float() / s.float() if x.dtype in (torch.float16, torch.bfloat16) else x / s.to(x.dtype)
    z = _broadcast(node, zp, x).to(v.dtype) if zp is not None else 0.0
    q = quantize(v, z, lo, hi, node.state.training)
    return q if node.state.training else q.to(qtype)


def _out_dtype(node: OpNode, scale: torch.Tensor) -> torch.dtype:
    return torch_dtype(node.get("output_dtype")) if node.get("output_dtype") else scale.dtype


def _dequantize(node: OpNode, x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None = None
                ) -> torch.Tensor:
    """``(x - zero_point) * scale``; integers are centred exactly, then converted (as ONNX Runtime)."""
    s = _broadcast(node, scale, x)
    out = _out_dtype(node, scale)
    if x.is_floating_point():  # fake-quantized integers while training
        v = x.to(torch.promote_types(x.dtype, torch.float32))
        if present(zp):
            v = v - _broadcast(node, zp, x).to(v.dtype)
    else:
        v = x.long() - _broadcast(node, zp, x).long() if present(zp) else x
        v = v.to(torch.promote_types(out, torch.float32))
    return (v * s.to(v.dtype)).to(out)


def _shadow_value(node: OpNode, q: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """The float weight an integer constant stands for (float64 for int32, exact to 2**53)."""
    node.cache["shadow_dtype"] = q.dtype
    wide = torch.float64 if q.dtype == torch.int32 else torch.float32
    v = q.long() - _broadcast(node, zp, q).long() if present(zp) else q
    return v.to(wide) * _broadcast(node, scale, q).to(wide)


def _shadow_quantize(node: OpNode, w: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None, fake: bool
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | float]:
    lo, hi = _RANGES[node.cache["shadow_dtype"]]
    s = _broadcast(node, scale, w).to(w.dtype)
    z = _broadcast(node, zp, w).to(w.dtype) if present(zp) else 0.0
    return quantize(w / s, z, lo, hi, fake), s, z


def _shadow_run(node: OpNode, w: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None = None
                ) -> torch.Tensor:
    """DequantizeLinear of the integers the float weight ``w`` quantizes to, with the gradient
    passing straight through the rounding (exactly the original values while ``w`` is unchanged)."""
    q, s, z = _shadow_quantize(node, w, scale, zp, True)
    return ((q - z) * s).to(_out_dtype(node, scale))


def _shadow_store(node: OpNode, w: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None = None
                  ) -> torch.Tensor:
    q, _, _ = _shadow_quantize(node, w.detach(), scale, zp, False)
    return q.to(node.cache["shadow_dtype"])


register("DequantizeLinear", static=(1, 2), check=_quant_check,
         shadow=Shadow(_shadow_value, _shadow_run, _shadow_store))(_dequantize)


@register("DynamicQuantizeLinear")
def _dynamic_quantize(node: OpNode, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 quantization with the scale and zero point of ``x``'s range (extended to include 0); the
    scale and zero point carry no gradient."""
    with torch.no_grad():
        lo = torch.clamp(x.min(), max=0.0) if x.numel() else x.new_zeros(())
        hi = torch.clamp(x.max(), min=0.0) if x.numel() else x.new_zeros(())
        scale = ((hi - lo) / 255.0).to(torch.float32)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # all zeros: scale 1 (as ONNX Runtime)
        zp = torch.round(-lo / scale).clamp(0, 255)
    y = quantize(x / scale, zp, 0, 255, node.state.training)
    return (y if node.state.training else y.to(torch.uint8)), scale, zp.to(torch.uint8)


def _centered(node: OpNode, x: torch.Tensor, zp: torch.Tensor | None, axis: int) -> torch.Tensor:
    """``x - zero_point`` as float64 (exact for integer products), or in ``x``'s float type while
    training; a 1-D zero point runs along ``axis``."""
    v = x if x.is_floating_point() else x.to(torch.float64)
    if present(zp):
        z = zp.to(v.dtype)
        if z.ndim == 1 and z.numel() > 1:
            shape = [1] * x.ndim
            shape[axis] = -1
            z = z.reshape(shape)
        v = v - z
    return v


def _integer(y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return y if like.is_floating_point() else torch.round(y).to(torch.int32)


@register("MatMulInteger", static=(2, 3))
def _matmul_integer(node: OpNode, a: torch.Tensor, b: torch.Tensor, a_zp: torch.Tensor | None = None,
                    b_zp: torch.Tensor | None = None) -> torch.Tensor:
    va = _centered(node, a, a_zp, a.ndim - 2 if a.ndim >= 2 else 0)
    vb = _centered(node, b, b_zp, b.ndim - 1)
    dtype = torch.promote_types(va.dtype, vb.dtype)
    return _integer(torch.matmul(va.to(dtype), vb.to(dtype)), a)


@register("ConvInteger", static=(2, 3), check=nd_check)
def _conv_integer(node: OpNode, x: torch.Tensor, w: torch.Tensor, x_zp: torch.Tensor | None = None,
                  w_zp: torch.Tensor | None = None) -> torch.Tensor:
    vx = _centered(node, x, x_zp, 1)
    vw = _centered(node, w, w_zp, 0)
    dtype = torch.promote_types(vx.dtype, vw.dtype)
    return _integer(conv(node, vx.to(dtype), vw.to(dtype)), x)
