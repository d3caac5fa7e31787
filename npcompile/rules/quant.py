"""Channel rules for quantized graphs: QDQ (QuantizeLinear / DequantizeLinear) and integer ops.

**Weights through DequantizeLinear.** In a QDQ model a weight arrives as
``DequantizeLinear(int8 constant, scale, zero point)``. Every rule sees such a tensor as a
constant (:class:`QuantView`, applied by the registry to each rule of a node that reads one):
``ctx.const`` returns the dequantized values, so potentials and the dead-channel proof work
through it (an int8 0 with zero point 0 dequantizes to exactly 0), and ``ctx.add_site`` on it
records sites on the ``DequantizeLinear`` instead: the int8 tensor on the same axis, and its
scale and zero point when they are per channel along that axis (per-tensor ones, or per-channel
ones along another axis, are left alone). A quantized weight read by several nodes, or quantized
in blocks along the pruned axis, freezes the group.

**Activations.** ``QuantizeLinear`` / ``DequantizeLinear`` on a tracked tensor pass its channels
through; per-channel scales and zero points along the channel axis become sites. Potentials of
integer tensors: ``q = round(x / s) + zp`` is exactly ``zp`` where ``x`` is 0, and
``(q - zp) * s`` is exactly 0 where ``q == zp``; so each integer tensor also keeps its potential
*relative to its zero point*, and a consumer that subtracts the same zero point (a
``DequantizeLinear``, ``QLinearConv``, ``ConvInteger`` with the zero point of the same
``DynamicQuantizeLinear``) reads that one; otherwise a non-zero zero point makes the channel live.

Integer ops (``QLinearConv``, ``ConvInteger``, ``QGemm``...) are in :mod:`npcompile.rules.integer`.

:func:`site_values` (dequantized values of a site's constant, for magnitude criteria) and
:func:`site_consumer` (the op that reads a site's weight) serve the code that reads sites.
"""

from __future__ import annotations

import functools
import weakref
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_graphsurgeon as gs

from npcompile.channels.layout import Layout
from npcompile.rules.common import normalize_axis
from npcompile.rules.registry import register

if TYPE_CHECKING:
    from npcompile.channels.analysis import ChannelAnalysis, ChannelDim, Site

__all__ = ["QuantView", "run_rule", "dequantize", "dequant_source", "site_values", "site_consumer", "weight_constant",
           "is_parameter"]

_QDQ_DOMAINS = ("", "ai.onnx", "com.microsoft")
_MS = "com.microsoft"


# --------------------------------------------------------------------------- weights through DQ


def dequant_source(t: gs.Tensor | None) -> gs.Node | None:
    """The ``DequantizeLinear`` of constants that produces ``t`` (``None`` if ``t`` is not one)."""
    if not isinstance(t, gs.Variable) or len(t.inputs) != 1:
        return None
    dq = t.inputs[0]
    if dq.op != "DequantizeLinear" or (dq.domain or "") not in _QDQ_DOMAINS or len(dq.inputs) < 2:
        return None
    if not isinstance(dq.inputs[0], gs.Constant) or not isinstance(dq.inputs[1], gs.Constant):
        return None
    if len(dq.inputs) > 2 and dq.inputs[2].name and not isinstance(dq.inputs[2], gs.Constant):
        return None
    return dq


def _zero_point(node: gs.Node, index: int) -> np.ndarray | None:
    if index < len(node.inputs) and node.inputs[index].name and isinstance(node.inputs[index], gs.Constant):
        return np.asarray(node.inputs[index].values)
    return None


def _per_axis(values: np.ndarray, axis: int, rank: int) -> np.ndarray:
    """A 1-D per-channel array shaped to broadcast along ``axis`` of a rank-``rank`` tensor."""
    shape = [1] * rank
    shape[axis] = values.size
    return values.reshape(shape)


def dequantize(dq: gs.Node) -> np.ndarray:
    """``(x - zero_point) * scale`` of a ``DequantizeLinear`` of constants, as ONNX defines it
    (per tensor, per axis, or in blocks), in the scale's dtype."""
    x = np.asarray(dq.inputs[0].values)
    scale = np.asarray(dq.inputs[1].values)
    zp = _zero_point(dq, 2)
    zp = np.zeros((), np.int64) if zp is None else zp.astype(np.int64)
    q = x.astype(np.int64)
    block = int(dq.attrs.get("block_size", 0) or 0)
    if x.ndim and (block or scale.size > 1):
        axis = normalize_axis(int(dq.attrs.get("axis", 1)), x.ndim)
        if block:
            scale = np.repeat(scale, block, axis=axis).take(range(x.shape[axis]), axis=axis)
            if zp.ndim:
                zp = np.repeat(zp, block, axis=axis).take(range(x.shape[axis]), axis=axis)
        else:
            scale = _per_axis(scale, axis, x.ndim)
            if zp.size > 1:
                zp = _per_axis(zp, axis, x.ndim)
    out = (q - zp).astype(scale.dtype) * scale
    return np.asarray(out, dtype=scale.dtype)


class QuantView:
    """The analysis as a rule of a node reading quantized weights sees it: a ``DequantizeLinear``
    of constants is a constant (its dequantized values), and a site on it is a site on the
    ``DequantizeLinear``'s int8 tensor (with its per-channel scale and zero point). Everything
    else is the analysis itself."""

    is_view = True

    def __init__(self, ctx: ChannelAnalysis) -> None:
        object.__setattr__(self, "_ctx", ctx)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._ctx, name, value)

    @property
    def real(self) -> ChannelAnalysis:
        return self._ctx

    def const(self, t: gs.Tensor | None) -> np.ndarray | None:
        dq = dequant_source(t)
        if dq is not None:
            try:
                return dequantize(dq)
            except (ValueError, TypeError, IndexError):  # an encoding numpy cannot read: not a constant
                return None
        return self._ctx.const(t)

    def add_site(self, node: gs.Node, index: int, axis: int, layout: Layout, role: str,
                 pot: np.ndarray | None = None, blocks: int = 1) -> None:
        t = node.inputs[index]
        dq = dequant_source(t)
        if dq is None:
            self._ctx.add_site(node, index, axis, layout, role, pot, blocks)
            return
        readers = len(t.outputs)
        if readers != 1:
            self._ctx.freeze(layout, f"quantized weight {t.name} is read by {readers} nodes")
            return
        rank = len(dq.inputs[0].shape)
        axis = normalize_axis(axis, rank)
        scale = np.asarray(dq.inputs[1].values)
        block = int(dq.attrs.get("block_size", 0) or 0)
        q_axis = normalize_axis(int(dq.attrs.get("axis", 1)), rank) if rank else 0
        params: list[tuple[int, int]] = []  # (input, axis) of the scale and zero point to slice
        if block:
            if q_axis == axis:
                self._ctx.freeze(layout, f"{dq.name} quantizes {t.name} in blocks of {block} along the channel axis")
                return
            params = [(1, axis), (2, axis)]
        elif scale.size > 1 and q_axis == axis:
            if blocks != 1:
                self._ctx.freeze(layout, f"{dq.name}: per-channel scales along a grouped channel axis")
                return
            params = [(1, 0), (2, 0)]
        self._ctx.add_site(dq, 0, axis, layout, role, pot, blocks)
        for i, a in params:
            if i < len(dq.inputs) and dq.inputs[i].name:
                self._ctx.add_site(dq, i, a, layout, "param", None, blocks if block else 1)


def _reads_quantized(node: gs.Node) -> bool:
    return any(dequant_source(t) is not None for t in node.inputs)


def run_rule(fn: Any, node: gs.Node, ctx: ChannelAnalysis) -> None:
    """Run rule ``fn`` on ``node``, with a :class:`QuantView` when the node reads a weight through
    a ``DequantizeLinear`` of constants (with the analysis itself otherwise). The registry runs
    every rule through this."""
    if not getattr(ctx, "is_view", False) and _reads_quantized(node):
        ctx = QuantView(ctx)  # type: ignore[assignment]
    fn(node, ctx)


def _real(ctx: Any) -> ChannelAnalysis:
    while getattr(ctx, "is_view", False):
        ctx = ctx.real
    return ctx


# --------------------------------------------------------------------------- potentials of integer tensors

#: analysis -> integer tensor name -> (zero point key, potential relative to that zero point)
_RELATIVE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
#: ops that move values without changing them (a channel equal to its zero point stays so)
_SAME_VALUES = ("MaxPool", "GlobalMaxPool", "Identity", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze")


def _zp_key(node: gs.Node, index: int) -> tuple | None:
    """What identifies zero point input ``index`` of ``node``: its values (a constant), the tensor
    (computed at run time), or zero (absent)."""
    if index >= len(node.inputs) or not node.inputs[index].name:
        return ("c", ())
    t = node.inputs[index]
    if isinstance(t, gs.Constant):
        v = np.asarray(t.values)
        return ("c", () if not v.any() else tuple(int(x) for x in v.ravel()))
    return ("t", t.name)


def _relative(ctx: Any) -> dict[str, tuple[tuple, np.ndarray]]:
    real = _real(ctx)
    table = _RELATIVE.get(real)
    if table is None:
        table = _RELATIVE[real] = {}
    return table


def _record(ctx: Any, t: gs.Tensor, key: tuple | None, pot: np.ndarray) -> None:
    if key is not None:
        _relative(ctx)[t.name] = (key, np.asarray(pot, np.float64))


def _relative_pot(ctx: Any, t: gs.Tensor, key: tuple | None) -> np.ndarray | None:
    """The potential of integer tensor ``t`` relative to zero point ``key``, if known."""
    if key is None:
        return None
    table = _relative(ctx)
    for _ in range(64):
        entry = table.get(t.name)
        if entry is not None:
            d = ctx.dim(t)
            return entry[1] if entry[0] == key and d is not None and entry[1].shape == d.pot.shape else None
        producer = t.inputs[0] if len(t.inputs) == 1 else None
        if producer is None or producer.op not in _SAME_VALUES or not producer.inputs:
            return None
        src = producer.inputs[0]
        d_in, d_out = ctx.dim(src), ctx.dim(t)
        if d_in is None or d_out is None or d_in.layout.pieces != d_out.layout.pieces:
            return None
        t = src
    return None


def _input_pot(ctx: Any, node: gs.Node, x: ChannelDim, data: int, zp: int) -> np.ndarray:
    """Potential of data input ``data`` as ``node`` reads it, after subtracting zero point ``zp``."""
    key = _zp_key(node, zp)
    rel = _relative_pot(ctx, node.inputs[data], key)
    if rel is not None:
        return rel
    return x.pot if key == ("c", ()) else x.pot + 1.0


def _output_pot(key: tuple, pot: np.ndarray) -> np.ndarray:
    """Absolute potential of an integer output whose dead channels equal zero point ``key``."""
    return pot if key == ("c", ()) else pot + 1.0


# --------------------------------------------------------------------------- Q / DQ on activations


def _scale_sites(node: gs.Node, ctx: Any, x: ChannelDim, what: str) -> bool:
    """Per-channel scale and zero point of a Q/DQ along the channel axis become sites; False
    (after freezing) when they cannot be sliced."""
    scale = ctx.const(node.inputs[1])
    zp_present = len(node.inputs) > 2 and node.inputs[2].name
    if scale is None or (zp_present and ctx.const(node.inputs[2]) is None):
        ctx.freeze(x, f"{what} {node.name} has a non-constant scale or zero point")
        return False
    if np.size(scale) <= 1:
        return True
    if int(node.attrs.get("block_size", 0) or 0):
        ctx.freeze(x, f"{what} {node.name} quantizes a channel tensor in blocks")
        return False
    rank = ctx.rank(node.inputs[0])
    if rank is None:
        ctx.freeze(x, f"{what} {node.name}: unknown rank")
        return False
    if normalize_axis(int(node.attrs.get("axis", 1)), rank) == x.axis:
        ctx.add_site(node, 1, 0, x.layout, "param")
        if zp_present:
            ctx.add_site(node, 2, 0, x.layout, "param")
    return True


@register("QuantizeLinear")
@register("QuantizeLinear", domain=_MS)
def quantize_linear(node: gs.Node, ctx: ChannelAnalysis) -> None:
    x = ctx.dim(node.inputs[0])
    if x is None or not _scale_sites(node, ctx, x, "QuantizeLinear"):
        return
    key = _zp_key(node, 2)
    _record(ctx, node.outputs[0], key, x.pot)  # round(0 / s) + zp == zp exactly
    ctx.pass_through(node, x, pot=_output_pot(key, x.pot))


@register("DequantizeLinear")
@register("DequantizeLinear", domain=_MS)
def dequantize_linear(node: gs.Node, ctx: ChannelAnalysis) -> None:
    x = ctx.dim(node.inputs[0])
    if x is None or not _scale_sites(node, ctx, x, "DequantizeLinear"):
        return  # a constant (weight): its readers see it through QuantView
    ctx.pass_through(node, x, pot=_input_pot(ctx, node, x, 0, 2))


@register("DynamicQuantizeLinear")
def dynamic_quantize_linear(node: gs.Node, ctx: ChannelAnalysis) -> None:
    x = ctx.dim(node.inputs[0])
    if x is None:
        return
    y = node.outputs[0]
    if len(node.outputs) > 2 and node.outputs[2].name:
        _record(ctx, y, ("t", node.outputs[2].name), x.pot)
    ctx.set_dim(y, x.axis, x.layout, x.pot + 1.0)  # its zero point is computed at run time


# --------------------------------------------------------------------------- for readers of sites


def site_values(site: Site) -> np.ndarray:
    """The values of a site's constant as its op computes with them: dequantized for the int8
    tensor of a ``DequantizeLinear`` or the weight of an integer op, the constant otherwise."""
    node, t = site.node, site.node.inputs[site.index]
    if node.op == "DequantizeLinear" and site.index == 0 and dequant_source(node.outputs[0]) is node:
        return dequantize(node)
    from npcompile.rules import integer

    form = integer.FORMS.get((node.domain or "", node.op))
    if form is not None and site.index == form.w:
        return integer.dequantized_weight(node, form)
    if form is not None and site.index == form.bias:
        bias = integer.dequantized_bias(node, form)
        if bias is not None:
            return bias
    return np.asarray(t.values)


def site_consumer(site: Site) -> tuple[gs.Node, int]:
    """The op that reads a site's weight and the input it reads it on: the reader of a
    ``DequantizeLinear``'s output for a site on its int8 tensor, the site's own node otherwise."""
    node = site.node
    if node.op == "DequantizeLinear" and site.index == 0 and node.outputs and len(node.outputs[0].outputs) == 1:
        reader = node.outputs[0].outputs[0]
        for i, t in enumerate(reader.inputs):
            if t is node.outputs[0]:
                return reader, i
    return node, site.index


def weight_constant(t: gs.Tensor) -> gs.Tensor:
    """The constant holding a weight: the int8 tensor of a ``DequantizeLinear`` of constants, or
    ``t`` itself."""
    dq = dequant_source(t)
    return dq.inputs[0] if dq is not None else t


@functools.cache
def _qparam_inputs() -> dict[tuple[str, str], tuple[int, ...]]:
    """Inputs of quantization and integer ops that are quantization parameters (scales, zero
    points), not weights."""
    from npcompile.rules.integer import FORMS

    out = {(d, op): (1, 2) for d in ("", _MS) for op in ("QuantizeLinear", "DequantizeLinear")}
    for key, f in FORMS.items():
        out[key] = tuple(i for i in (f.x_scale, f.x_zp, f.w_scale, f.w_zp, f.y_scale, f.y_zp) if i is not None)
    return out


def is_parameter(t: gs.Constant) -> bool:
    """Whether a constant counts as parameters: a float tensor that no quantization op reads as a
    scale or zero point, or an integer tensor a ``DequantizeLinear`` (input 0) or an integer op
    (weight, bias) reads."""
    floating = np.issubdtype(np.asarray(t.values).dtype, np.floating)
    quant_param = False
    quant_weight = False
    for node in t.outputs:
        key = (node.domain or "", node.op)
        for i, inp in enumerate(node.inputs):
            if inp is not t:
                continue
            if i in _qparam_inputs().get(key, ()):
                quant_param = True
            elif key in _qparam_inputs() or node.op == "DynamicQuantizeLSTM":
                quant_weight = True
    return quant_weight or (floating and not quant_param)
