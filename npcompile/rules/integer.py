"""Channel rules for integer ops with constant weights (QOperator and dynamic quantization).

Each is its float op seen through an adapter: the float rule of ``Conv`` / ``MatMul`` / ``Gemm``
runs on the dequantized weight (and bias), and the sites it records land on the integer op's own
inputs, with per-channel weight scales and zero points: ``QLinearConv``, ``ConvInteger``,
``QLinearMatMul``, ``MatMulInteger``, and from ``com.microsoft`` ``QGemm``,
``DynamicQuantizeMatMul`` and ``MatMulIntegerToFloat``. The input is read after subtracting its
zero point (see the potentials of :mod:`npcompile.rules.quant`); a quantized output's dead
channels equal its zero point. Dynamic quantization rescales the integer accumulator by
``Mul(x_scale, w_scale)``; a per-channel ``w_scale`` there joins the group. ``DynamicQuantizeLSTM``
takes the channels of its input (the input side of ``W``); its hidden units are not pruned.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_graphsurgeon as gs

from npcompile.channels.layout import Layout
from npcompile.rules.common import normalize_axis
from npcompile.rules.quant import _MS, _input_pot, _output_pot, _per_axis, _record, _zp_key
from npcompile.rules.registry import register, rule_for

if TYPE_CHECKING:
    from npcompile.channels.analysis import ChannelAnalysis, ChannelDim

__all__ = ["FORMS", "dequantized_weight", "dequantized_bias"]


class _Adapter:
    """An integer op seen as its float op: ``inputs`` are the data input, a constant holding the
    dequantized weight and one holding the dequantized bias; attributes and outputs are the
    node's own (so fixups that set attributes reach the real node)."""

    def __init__(self, node: gs.Node, inputs: list[gs.Tensor]) -> None:
        self.op = node.op
        self.name = node.name
        self.domain = node.domain
        self.attrs = node.attrs
        self.inputs = inputs
        self.outputs = node.outputs
        self.node = node


class _Form:
    """Where an integer op keeps what its float op has (input indices; ``None``: absent)."""

    def __init__(self, float_op: str, x: int, x_scale: int | None, x_zp: int | None, w: int,
                 w_scale: int | None, w_zp: int | None, bias: int | None, y_zp: int | None,
                 float_out: bool = False, y_scale: int | None = None) -> None:
        self.float_op, self.x, self.x_scale, self.x_zp, self.w = float_op, x, x_scale, x_zp, w
        self.w_scale, self.w_zp, self.bias, self.y_zp, self.y_scale = w_scale, w_zp, bias, y_zp, y_scale
        self.float_out = float_out


FORMS: dict[tuple[str, str], _Form] = {
    ("", "QLinearConv"): _Form("Conv", 0, 1, 2, 3, 4, 5, 8, 7, y_scale=6),
    ("", "ConvInteger"): _Form("Conv", 0, None, 2, 1, None, 3, None, None),
    ("", "QLinearMatMul"): _Form("MatMul", 0, 1, 2, 3, 4, 5, None, 7, y_scale=6),
    ("", "MatMulInteger"): _Form("MatMul", 0, None, 2, 1, None, 3, None, None),
    (_MS, "QGemm"): _Form("Gemm", 0, 1, 2, 3, 4, 5, 6, 8, y_scale=7),
    (_MS, "DynamicQuantizeMatMul"): _Form("MatMul", 0, None, None, 1, 2, 3, 4, None, float_out=True),
    (_MS, "MatMulIntegerToFloat"): _Form("MatMul", 0, 2, 4, 1, 3, 5, 6, None, float_out=True),
}


def _const_input(node: gs.Node, index: int | None) -> np.ndarray | None:
    if index is None or index >= len(node.inputs) or not node.inputs[index].name:
        return None
    t = node.inputs[index]
    return np.asarray(t.values) if isinstance(t, gs.Constant) else None


def _out_axis(form: _Form, node: gs.Node, ndim: int) -> int:
    """The weight's output-channel axis (where per-channel weight scales run)."""
    if form.float_op == "Conv":
        return 0
    if form.float_op == "Gemm":
        return 0 if int(node.attrs.get("transB", 0)) else 1
    return ndim - 1


def dequantized_weight(node: gs.Node, form: _Form) -> np.ndarray:
    w = np.asarray(node.inputs[form.w].values).astype(np.float64)
    axis = _out_axis(form, node, w.ndim)
    zp = _const_input(node, form.w_zp)
    scale = _const_input(node, form.w_scale)
    if form.w_scale is None:  # ConvInteger, MatMulInteger: the weight scale comes in a later Mul
        found = _rescale(node)
        if found is not None:
            v = np.asarray(found[0].inputs[found[1]].values)
            scale = v if v.size in (1, w.shape[axis]) else None
    if zp is not None:
        w = w - (_per_axis(zp.astype(np.float64), axis, w.ndim) if zp.size > 1 else zp.astype(np.float64).ravel()[0])
    if scale is not None:
        w = w * (_per_axis(scale.astype(np.float64), axis, w.ndim) if scale.size > 1 else float(scale.ravel()[0]))
    return w.astype(np.float32)


def dequantized_bias(node: gs.Node, form: _Form) -> np.ndarray | None:
    b = _const_input(node, form.bias)
    if b is None:
        return None
    b = b.astype(np.float64)
    if not form.float_out:  # int32 bias in units of x_scale * w_scale
        for idx in (form.x_scale, form.w_scale):
            s = _const_input(node, idx)
            if s is not None:
                b = b * (s.astype(np.float64).ravel() if s.size == b.size else float(s.ravel()[0]))
    return b.astype(np.float32)


class _OpView:
    """The analysis as the float rule of an :class:`_Adapter` sees it (see the module docstring)."""

    is_view = True

    def __init__(self, ctx: Any, adapter: _Adapter, form: _Form, index: dict[int, int], x_pot: np.ndarray | None):
        self.real = ctx
        self.adapter, self.form, self.index, self.x_pot = adapter, form, index, x_pot

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def dim(self, t: gs.Tensor | None) -> ChannelDim | None:
        d = self.real.dim(t)
        if d is not None and self.x_pot is not None and t is self.adapter.inputs[0]:
            from npcompile.channels.analysis import ChannelDim

            return ChannelDim(d.axis, d.layout, self.x_pot)
        return d

    def add_site(self, node: Any, index: int, axis: int, layout: Layout, role: str,
                 pot: np.ndarray | None = None, blocks: int = 1) -> None:
        if node is not self.adapter:
            self.real.add_site(node, index, axis, layout, role, pot, blocks)
            return
        real, form = self.adapter.node, self.form
        idx = self.index[index]
        rank = len(real.inputs[idx].shape)
        axis = normalize_axis(axis, rank)
        self.real.add_site(real, idx, axis, layout, role, pot, blocks)
        if idx == form.w and axis == _out_axis(form, real, rank):
            for p in (form.w_scale, form.w_zp):
                v = _const_input(real, p)
                if v is not None and v.size > 1:
                    self.real.add_site(real, p, 0, layout, "param")

    def set_dim(self, t: gs.Tensor, axis: int, layout: Layout, pot: np.ndarray) -> None:
        real, form = self.adapter.node, self.form
        if t is real.outputs[0] and form.y_zp is not None and _has_input(real, form.y_scale):
            key = _zp_key(real, form.y_zp)
            _record(self.real, t, key, pot)
            pot = _output_pot(key, pot)
        elif t is real.outputs[0] and not form.float_out:
            _record(self.real, t, ("c", ()), pot)  # an int32 accumulator: zero is zero
        self.real.set_dim(t, axis, layout, pot)


def _has_input(node: gs.Node, index: int | None) -> bool:
    return index is not None and index < len(node.inputs) and bool(node.inputs[index].name)


def _integer_op(node: gs.Node, ctx: ChannelAnalysis) -> None:
    form = FORMS[(node.domain or "", node.op)]
    x_t = node.inputs[form.x]
    w_t = node.inputs[form.w] if form.w < len(node.inputs) else None
    params = [i for i in (form.w_scale, form.w_zp, form.bias) if _has_input(node, i)]
    if not isinstance(w_t, gs.Constant) or any(not isinstance(node.inputs[i], gs.Constant) for i in params):
        ctx.freeze_inputs(node, f"{node.op} {node.name} has non-constant weights")
        return
    for i in (form.x_scale, form.x_zp):
        v = _const_input(node, i)
        if _has_input(node, i) and isinstance(node.inputs[i], gs.Constant) and v is not None and v.size > 1:
            ctx.freeze_inputs(node, f"{node.op} {node.name} quantizes its input per channel")
            return
    w_syn = gs.Constant(f"{w_t.name}_npc_dequantized", dequantized_weight(node, form))
    inputs: list[gs.Tensor] = [x_t, w_syn]
    index = {0: form.x, 1: form.w}
    bias = dequantized_bias(node, form)
    if bias is not None:
        inputs.append(gs.Constant(f"{node.inputs[form.bias].name}_npc_dequantized", bias))
        index[2] = form.bias
    x = ctx.dim(x_t)
    x_pot = None
    if x is not None:
        x_pot = x.pot if form.x_zp is None else _input_pot(ctx, node, x, form.x, form.x_zp)
    adapter = _Adapter(node, inputs)
    view = _OpView(ctx, adapter, form, index, x_pot)
    rule = rule_for(form.float_op)
    if rule is None:  # pragma: no cover - the float rules are built in
        ctx.freeze_inputs(node, f"no channel rule for {form.float_op}")
        return
    rule(adapter, view)  # type: ignore[arg-type]
    _scales_after(node, ctx)


def _rescale(node: gs.Node) -> tuple[gs.Node, int, gs.Tensor] | None:
    """Dynamic quantization rescales an integer accumulator: ``Mul(Cast(acc), Mul(x_scale, w_scale))``
    with ``x_scale`` computed at run time. Returns (the inner ``Mul``, the input holding the
    constant ``w_scale``, the product tensor), or ``None`` when the output is not used that way."""
    t = node.outputs[0]
    for _ in range(2):
        readers = list(t.outputs)
        if len(readers) != 1:
            return None
        reader = readers[0]
        if reader.op == "Cast":
            t = reader.outputs[0]
            continue
        if reader.op != "Mul":
            return None
        other = next((i for i in reader.inputs if i is not t), None)
        producer = other.inputs[0] if isinstance(other, gs.Variable) and len(other.inputs) == 1 else None
        if producer is None or producer.op != "Mul":
            return None
        consts = [i for i, inp in enumerate(producer.inputs) if isinstance(inp, gs.Constant)]
        return (producer, consts[0], other) if len(consts) == 1 else None
    return None


def _scales_after(node: gs.Node, ctx: Any) -> None:
    """With per-channel ``w_scale`` the rescaling product (see :func:`_rescale`) runs along the
    output channels: it joins the group, and ``w_scale`` becomes a site."""
    y = ctx.dim(node.outputs[0])
    found = _rescale(node) if y is not None else None
    if found is None:
        return
    producer, i, other = found
    v = np.asarray(producer.inputs[i].values)
    if ctx.dim(other) is None and v.ndim == 1 and v.size == y.layout.size and v.size > 1:
        ctx.add_site(producer, i, 0, y.layout, "param")
        ctx.set_dim(other, 0, y.layout, np.ones(y.layout.channels))


for (_domain, _op) in FORMS:
    register(_op, domain=_domain)(_integer_op)


@register("DynamicQuantizeLSTM", domain=_MS)
def dynamic_quantize_lstm(node: gs.Node, ctx: ChannelAnalysis) -> None:
    """The input features of the LSTM are the input side of ``W`` ``[directions, input, 4*hidden]``;
    its hidden units are not pruned."""
    x = ctx.dim(node.inputs[0])
    w = node.inputs[1] if len(node.inputs) > 1 else None
    if x is None:
        return
    rank = ctx.rank(node.inputs[0])
    if not isinstance(w, gs.Constant) or rank != 3 or x.axis != 2 or len(w.shape) != 3:
        ctx.freeze(x, f"DynamicQuantizeLSTM {node.name} reads features it cannot slice")
        return
    w_zp = node.inputs[9] if len(node.inputs) > 9 else None
    if w_zp is not None and w_zp.name and not isinstance(w_zp, gs.Constant):
        ctx.freeze(x, f"DynamicQuantizeLSTM {node.name} has a non-constant weight zero point")
        return
    ctx.add_site(node, 1, 1, x.layout, "in", pot=x.pot)
