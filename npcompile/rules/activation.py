"""Channel rules for unary elementwise ops: activations, casts, Dropout and Identity.

Channels pass through unchanged. Ops with ``f(0) = 0`` keep a dead channel dead; the others
(Sigmoid, Softplus, Exp...) give it a constant value, so it is no longer provably zero.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from npcompile.rules.registry import register

if TYPE_CHECKING:
    from npcompile.channels.analysis import ChannelAnalysis

ZERO_PRESERVING = (
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Tanh", "Erf", "Gelu", "HardSwish", "Mish",
    "Softsign", "Abs", "Neg", "Sign", "Sin", "Sinh", "Asin", "Atan", "Tan", "Floor", "Ceil", "Round",
    "Sqrt", "ThresholdedRelu", "Shrink", "Identity", "Dropout", "Cast", "CastLike",
)
REVIVING = ("Sigmoid", "HardSigmoid", "Softplus", "Exp", "Cos", "Cosh", "Reciprocal", "Log",
            "Acos", "IsNaN", "IsInf", "Not")


@register(*ZERO_PRESERVING)
def zero_preserving(node: gs.Node, ctx: ChannelAnalysis) -> None:
    x = ctx.dim(node.inputs[0])
    if x is not None:
        ctx.pass_through(node, x)
        if node.op == "Dropout" and len(node.outputs) > 1 and node.outputs[1].name:
            # the mask has the input's shape: it carries the channels too (not zero where x is)
            ctx.pass_through(node, x, pot=np.ones_like(x.pot), output=1)


@register(*REVIVING)
def reviving(node: gs.Node, ctx: ChannelAnalysis) -> None:
    x = ctx.dim(node.inputs[0])
    if x is not None:
        ctx.pass_through(node, x, pot=x.pot + 1.0)


@register("Clip")
def clip(node: gs.Node, ctx: ChannelAnalysis) -> None:
    x = ctx.dim(node.inputs[0])
    if x is None:
        return
    lo, hi = node.attrs.get("min"), node.attrs.get("max")
    for i, name in ((1, "min"), (2, "max")):
        if i < len(node.inputs) and node.inputs[i].name:
            value = ctx.const(node.inputs[i])
            if value is None:
                ctx.pass_through(node, x, pot=x.pot + 1.0)
                return
            if name == "min":
                lo = float(value)
            else:
                hi = float(value)
    keeps_zero = (lo is None or lo <= 0.0) and (hi is None or hi >= 0.0)
    ctx.pass_through(node, x, pot=x.pot if keeps_zero else x.pot + 1.0)


@register("Pow")
def power(node: gs.Node, ctx: ChannelAnalysis) -> None:
    x = ctx.dim(node.inputs[0])
    exponent = ctx.const(node.inputs[1])
    if x is None:
        ctx.freeze_inputs(node, f"Pow {node.name} with a channel in its exponent")
        return
    if exponent is None or exponent.size != 1:
        ctx.freeze(x, f"Pow {node.name} with a non-scalar or non-constant exponent")
        return
    ctx.pass_through(node, x, pot=x.pot if float(np.ravel(exponent)[0]) > 0 else x.pot + 1.0)
