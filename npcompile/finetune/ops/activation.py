"""Activations (ReLU family, sigmoid/tanh family, GELU, Softplus, Softmax/LogSoftmax) and Clip."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from npcompile.finetune.ops.elementwise import unary
from npcompile.finetune.registry import OpFn, OpNode, register
from npcompile.finetune.tensors import present

for _op, _fn in {
    "Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Softsign": F.softsign,
    "HardSwish": F.hardswish, "Mish": F.mish,
}.items():
    register(_op)(unary(_fn))


@register("LeakyRelu")
def _leaky_relu(node: OpNode, x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, node.get("alpha", 0.01))


@register("PRelu", weights=(1,))
def _prelu(node: OpNode, x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    # ONNX broadcasts the slope numpy-style (aligned right); F.prelu wants per-channel slopes
    if x.ndim >= 2 and (slope.numel() == 1 or (slope.ndim == x.ndim - 1 and slope.shape[0] == x.shape[1]
                                               and slope.numel() == x.shape[1])):
        return F.prelu(x, slope.reshape(-1))
    return torch.where(x < 0, x * slope, x)


@register("Elu")
def _elu(node: OpNode, x: torch.Tensor) -> torch.Tensor:
    return F.elu(x, node.get("alpha", 1.0))


@register("Celu")
def _celu(node: OpNode, x: torch.Tensor) -> torch.Tensor:
    return F.celu(x, node.get("alpha", 1.0))


@register("Selu")
def _selu(node: OpNode, x: torch.Tensor) -> torch.Tensor:
    alpha = node.get("alpha", 1.67326319217681884765625)
    gamma = node.get("gamma", 1.05070102214813232421875)
    return gamma * F.elu(x, alpha)


@register("HardSigmoid")
def _hard_sigmoid(node: OpNode, x: torch.Tensor) -> torch.Tensor:
    alpha, beta = node.get("alpha", 0.2), node.get("beta", 0.5)
    return torch.clamp(x * alpha + beta, 0.0, 1.0)


@register("ThresholdedRelu")
def _thresholded_relu(node: OpNode, x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > node.get("alpha", 1.0), x, torch.zeros_like(x))


@register("Gelu")
def _gelu(node: OpNode, x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate=node.get("approximate", "none"))


@register("Softplus")
def _softplus(node: OpNode, x: torch.Tensor) -> torch.Tensor:
    return F.softplus(x)


def _softmax_like(fn: Callable[..., torch.Tensor]) -> OpFn:
    def run(node: OpNode, x: torch.Tensor) -> torch.Tensor:
        if node.opset >= 13:
            return fn(x, node.get("axis", -1))
        # before opset 13 the input is coerced to 2-D at ``axis``
        axis = node.get("axis", 1) % max(x.ndim, 1)
        shape = x.shape
        return fn(x.reshape(math.prod(shape[:axis]), -1), 1).reshape(shape)

    return run


register("Softmax")(_softmax_like(F.softmax))
register("LogSoftmax")(_softmax_like(F.log_softmax))


@register("Clip", static=(1, 2))
def _clip(node: OpNode, x: torch.Tensor, lo: torch.Tensor | None = None, hi: torch.Tensor | None = None
          ) -> torch.Tensor:
    if node.opset < 11:
        lo_v, hi_v = node.get("min"), node.get("max")
    else:
        lo_v = lo.item() if present(lo) else None
        hi_v = hi.item() if present(hi) else None
    if lo_v is None and hi_v is None:
        return x
    return torch.clamp(x, lo_v, hi_v)
