"""Run (and train) an ONNX graph in PyTorch, one small torch function per ONNX op.

:class:`GraphModule` turns an ``onnx.ModelProto`` into a ``torch.nn.Module`` without the original
training code: every node is executed by the torch function registered for its op type (see
:func:`register`; registering an op twice fails at import time, like the channel rules).

What becomes what:

- **Trainable parameters** (``nn.Parameter``): floating-point initializers (and floating-point
  ``Constant`` node values) that feed computation: weights and biases of Conv, ConvTranspose,
  Gemm, MatMul, normalisation scales and shifts, PRelu slopes, embeddings, layer-scale factors,
  position embeddings. A floating-point *scalar* is a parameter only where it is a weight or a bias
  (a Gemm bias of one unit); elsewhere a scalar is an architecture constant (``x / 8`` in attention,
  the ``+ 3`` of a decomposed hard-swish, an epsilon) and stays fixed.
- **Constants** (buffers, never trained): integer and boolean tensors, values in *static* input
  slots (shapes, axes, pads, Resize scales, Clip bounds, Pow exponents) and the running mean and
  variance of BatchNormalization.
- **BatchNormalization** always has eval-mode semantics with the graph's running statistics
  unless ``freeze_bn_stats=False`` *and* the module is in training mode: then it normalises with
  batch statistics and updates the running statistics (momentum from the node, as in the ONNX
  spec), and :meth:`GraphModule.write_back` writes the updated statistics too. The default
  (frozen) is what fine-tuning after pruning wants: small data sets and batches give poor
  statistics, and frozen statistics keep the model the ONNX graph describes.
- ``Dropout`` is the identity (as in every exported inference graph).
- One initializer consumed in several places is one parameter: weights an exporter deduplicated
  (two LayerNorms both initialised to ones, say) stay tied, as the ONNX graph describes them.

Nodes whose inputs are all constants are evaluated once, when the module is built. A model with
ops that have no torch function raises :class:`~npcompile.errors.UserError` listing them all.
:meth:`GraphModule.write_back` returns a copy of the model with the trained values, in the
original dtypes and storage (``raw_data`` or typed fields), byte-identical otherwise.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import nn

from npcompile.errors import UserError

__all__ = ["GraphModule", "OpNode", "register", "registered_ops", "unsupported_ops", "torch_dtype"]

OpFn = Callable[..., Any]


@dataclass(frozen=True)
class OpSpec:
    """A registered torch function and how its input slots are used.

    ``static``: slots holding shapes, axes, indices, bounds: never trainable. ``weights``: slots
    holding weights or biases: trainable even when scalar. ``stats``: running statistics
    (buffers, updated only when batch statistics are enabled). ``check``: an optional function
    of the node returning why it cannot run (an unsupported attribute value) or ``None``.
    """

    fn: OpFn
    static: tuple[int, ...] = ()
    weights: tuple[int, ...] = ()
    stats: tuple[int, ...] = ()
    check: Callable[[OpNode], str | None] | None = None


_OPS: dict[tuple[str, str], OpSpec] = {}


def register(*ops: str, domain: str = "", static: Sequence[int] = (), weights: Sequence[int] = (),
             stats: Sequence[int] = (), check: Callable[[OpNode], str | None] | None = None
             ) -> Callable[[OpFn], OpFn]:
    """Register ``fn(node, *inputs)`` as the torch function of ``ops`` (twice is an error).

    The function receives the :class:`OpNode` (attributes, opset) and the input tensors (``None``
    for an omitted optional input) and returns a tensor or a tuple of tensors (one per output).
    """
    if not ops:
        raise ValueError("register() needs at least one op type")
    if domain == "ai.onnx":
        domain = ""

    def deco(fn: OpFn) -> OpFn:
        for op in ops:
            key = (domain, op)
            if key in _OPS:
                raise ValueError(f"a torch function for {domain or 'ai.onnx'}::{op} is already registered")
            _OPS[key] = OpSpec(fn, tuple(static), tuple(weights), tuple(stats), check)
        return fn

    return deco


def registered_ops() -> list[str]:
    """Op types that have a torch function (``domain::Op`` outside the default domain)."""
    return sorted(f"{d + '::' if d else ''}{op}" for d, op in _OPS)


def _op_key(node: onnx.NodeProto) -> tuple[str, str]:
    domain = node.domain if node.domain not in ("", "ai.onnx") else ""
    return domain, node.op_type


def _op_label(node: onnx.NodeProto) -> str:
    domain, op = _op_key(node)
    return f"{domain}::{op}" if domain else op


def unsupported_ops(model: onnx.ModelProto) -> list[str]:
    """Op types of ``model`` without a torch function, sorted."""
    return sorted({_op_label(n) for n in model.graph.node if _op_key(n) not in _OPS})


# --------------------------------------------------------------------------- #
# dtypes and tensors
# --------------------------------------------------------------------------- #

_TORCH_DTYPES: dict[int, torch.dtype] = {
    onnx.TensorProto.FLOAT: torch.float32,
    onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.FLOAT16: torch.float16,
    onnx.TensorProto.BFLOAT16: torch.bfloat16,
    onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.UINT8: torch.uint8,
    onnx.TensorProto.INT16: torch.int16,
    onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.BOOL: torch.bool,
}
for _name, _code in (("uint16", onnx.TensorProto.UINT16), ("uint32", onnx.TensorProto.UINT32),
                     ("uint64", onnx.TensorProto.UINT64)):
    if hasattr(torch, _name):
        _TORCH_DTYPES[_code] = getattr(torch, _name)

_FLOAT_CODES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                onnx.TensorProto.BFLOAT16)


def torch_dtype(elem_type: int) -> torch.dtype:
    """The torch dtype of an ONNX element type (``UserError`` if torch has none)."""
    try:
        return _TORCH_DTYPES[int(elem_type)]
    except KeyError:
        name = onnx.TensorProto.DataType.Name(int(elem_type)) if int(elem_type) in \
            onnx.TensorProto.DataType.values() else str(elem_type)
        raise UserError(f"cannot train: torch has no dtype for ONNX {name}") from None


def _tensor_from_proto(tp: onnx.TensorProto) -> torch.Tensor:
    if tp.data_type == onnx.TensorProto.STRING:
        raise UserError(f"cannot train: string tensor {tp.name!r}")
    dtype = torch_dtype(tp.data_type)
    arr = numpy_helper.to_array(tp)
    if tp.data_type == onnx.TensorProto.BFLOAT16:
        return torch.from_numpy(np.asarray(arr, dtype=np.float32).copy()).to(torch.bfloat16)
    return torch.from_numpy(np.array(arr, copy=True)).to(dtype)


def _ints(value: Any) -> list[int]:
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.reshape(-1).tolist()]
    return [int(v) for v in value]


def _floats(value: Any) -> list[float]:
    if isinstance(value, torch.Tensor):
        return [float(v) for v in value.reshape(-1).tolist()]
    return [float(v) for v in value]


def _present(t: torch.Tensor | None) -> bool:
    """An optional input is given and not empty."""
    return t is not None and t.numel() > 0


# --------------------------------------------------------------------------- #
# Nodes
# --------------------------------------------------------------------------- #


class _State:
    """Mutable state shared by the nodes of one module (BatchNorm mode)."""

    __slots__ = ("batch_stats",)

    def __init__(self) -> None:
        self.batch_stats = False


class OpNode:
    """What a torch function sees of its node: attributes (plain Python values), opset, outputs."""

    __slots__ = ("op", "name", "domain", "opset", "attrs", "inputs", "outputs", "used", "state", "cache")

    def __init__(self, node: onnx.NodeProto, opset: int, state: _State) -> None:
        self.op = node.op_type
        self.name = node.name or node.output[0]
        self.domain = node.domain
        self.opset = opset
        self.attrs = {a.name: _attr_value(a) for a in node.attribute}
        self.inputs = list(node.input)
        self.outputs = list(node.output)
        self.used: set[int] = set()
        self.state = state
        self.cache: dict[Any, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    def __repr__(self) -> str:
        return f"OpNode({self.op} {self.name!r})"


def _attr_value(a: onnx.AttributeProto) -> Any:
    if a.type == onnx.AttributeProto.TENSOR:
        return a.t
    if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
        return a  # no registered op takes subgraphs; kept for the unsupported-op message
    v = helper.get_attribute_value(a)
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, list) and v and isinstance(v[0], bytes):
        return [s.decode() for s in v]
    return v


# --------------------------------------------------------------------------- #
# Elementwise ops
# --------------------------------------------------------------------------- #


def _unary(fn: Callable[[torch.Tensor], torch.Tensor]) -> OpFn:
    def run(node: OpNode, x: torch.Tensor) -> torch.Tensor:
        return fn(x)

    return run


for _op, _fn in {
    "Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Exp": torch.exp, "Log": torch.log,
    "Sqrt": torch.sqrt, "Neg": torch.neg, "Abs": torch.abs, "Erf": torch.erf, "Reciprocal": torch.reciprocal,
    "Floor": torch.floor, "Ceil": torch.ceil, "Round": torch.round, "Sign": torch.sign, "Sin": torch.sin,
    "Cos": torch.cos, "Tan": torch.tan, "Softsign": F.softsign, "Not": torch.logical_not,
    "HardSwish": F.hardswish, "Mish": F.mish, "IsNaN": torch.isnan,
}.items():
    register(_op)(_unary(_fn))


@register("Identity")
def _identity(node: OpNode, x: torch.Tensor) -> torch.Tensor:
    return x


@register("Dropout", static=(1, 2))
def _dropout(node: OpNode, x: torch.Tensor, ratio: Any = None, training: Any = None) -> Any:
    if 1 in node.used:
        return x, torch.ones_like(x, dtype=torch.bool)
    return x


def _both_int(a: torch.Tensor, b: torch.Tensor) -> bool:
    return not (a.is_floating_point() or b.is_floating_point())


@register("Add")
def _add(node: OpNode, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a + b


@register("Sub")
def _sub(node: OpNode, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a - b


@register("Mul")
def _mul(node: OpNode, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a * b


@register("Div")
def _div(node: OpNode, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if _both_int(a, b):
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


@register("Pow", static=(1,))
def _pow(node: OpNode, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if y.numel() == 1 and not y.requires_grad:
        e = y.item()
        if e == 2:
            return x * x
        out = torch.pow(x, e)
    else:
        out = torch.pow(x, y)
    return out if out.dtype == x.dtype else out.to(x.dtype)


@register("Mod")
def _mod(node: OpNode, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.fmod(a, b) if node.get("fmod", 0) else torch.remainder(a, b)


def _binary(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> OpFn:
    def run(node: OpNode, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return fn(a, b)

    return run


for _op, _fn in {
    "Equal": torch.eq, "Less": torch.lt, "LessOrEqual": torch.le, "Greater": torch.gt,
    "GreaterOrEqual": torch.ge, "And": torch.logical_and, "Or": torch.logical_or, "Xor": torch.logical_xor,
}.items():
    register(_op)(_binary(_fn))


def _variadic(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> OpFn:
    def run(node: OpNode, *xs: torch.Tensor) -> torch.Tensor:
        return functools.reduce(fn, xs)

    return run


register("Max")(_variadic(torch.maximum))
register("Min")(_variadic(torch.minimum))
register("Sum")(_variadic(torch.add))


@register("Mean")
def _mean(node: OpNode, *xs: torch.Tensor) -> torch.Tensor:
    return functools.reduce(torch.add, xs) / len(xs)


@register("Where", static=(0,))
def _where(node: OpNode, c: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(c if c.dtype == torch.bool else c.bool(), a, b)


# --------------------------------------------------------------------------- #
# Activations
# --------------------------------------------------------------------------- #


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
        lo_v = lo.item() if _present(lo) else None
        hi_v = hi.item() if _present(hi) else None
    if lo_v is None and hi_v is None:
        return x
    return torch.clamp(x, lo_v, hi_v)


# --------------------------------------------------------------------------- #
# Convolutions and linear layers
# --------------------------------------------------------------------------- #

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _torch_pads(pads: Sequence[int]) -> list[int]:
    """ONNX ``[b1, b2, ..., e1, e2, ...]`` (first axis first) to F.pad's last-axis-first pairs."""
    nd = len(pads) // 2
    out: list[int] = []
    for i in reversed(range(nd)):
        out += [int(pads[i]), int(pads[i + nd])]
    return out


def _auto_pads(node: OpNode, in_shape: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
               dilations: Sequence[int]) -> list[int]:
    nd = len(kernel)
    auto = node.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        return list(node.get("pads") or [0] * (2 * nd))
    if auto == "VALID":
        return [0] * (2 * nd)
    begin, end = [], []
    for i in range(nd):
        out = -(-int(in_shape[i]) // strides[i])
        total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - int(in_shape[i]))
        lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
        begin.append(lo)
        end.append(total - lo)
    return begin + end


def _nd_check(node: OpNode) -> str | None:
    k = node.get("kernel_shape")
    if k is not None and len(k) not in (1, 2, 3):
        return f"{node.op} over {len(k)} spatial dimensions"
    return None


@register("Conv", weights=(1, 2), check=_nd_check)
def _conv(node: OpNode, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    key = tuple(x.shape[2:])
    cached = node.cache.get(key)
    if cached is None:
        nd = w.ndim - 2
        if nd not in _CONV:
            raise UserError(f"Conv over {nd} spatial dimensions")
        strides = list(node.get("strides") or [1] * nd)
        dil = list(node.get("dilations") or [1] * nd)
        pads = _auto_pads(node, key, list(w.shape[2:]), strides, dil)
        sym = pads[:nd] == pads[nd:]
        cached = (_CONV[nd], strides, dil, node.get("group", 1), pads[:nd] if sym else 0,
                  None if sym else _torch_pads(pads))
        node.cache[key] = cached
    fn, strides, dil, group, padding, explicit = cached
    if explicit is not None:
        x = F.pad(x, explicit)
    return fn(x, w, b if _present(b) else None, strides, padding, dil, group)


@register("ConvTranspose", weights=(1, 2), check=_nd_check)
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
    bias = b if _present(b) else None
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


@register("Gemm", weights=(1, 2))
def _gemm(node: OpNode, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
    alpha, beta = node.get("alpha", 1.0), node.get("beta", 1.0)
    if node.get("transA", 0):
        a = a.t()
    trans_b = node.get("transB", 0)
    if c is None or c.numel() == 0:
        y = F.linear(a, b) if trans_b else a.matmul(b)
        return y if alpha == 1.0 else y * alpha
    if trans_b and alpha == 1.0 and beta == 1.0 and c.ndim == 1 and c.shape[0] == b.shape[0]:
        return F.linear(a, b, c)
    return torch.addmm(c, a, b.t() if trans_b else b, beta=beta, alpha=alpha)


@register("MatMul")
def _matmul(node: OpNode, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.matmul(a, b)


# --------------------------------------------------------------------------- #
# Normalisation
# --------------------------------------------------------------------------- #


def _extra_outputs_check(node: OpNode) -> str | None:
    extra = sorted(i for i in node.used if i > 0)
    if extra:
        return f"{node.op} with its training/statistics output(s) {extra} in use"
    return None


@register("BatchNormalization", weights=(1, 2), stats=(3, 4), check=_extra_outputs_check)
def _batch_norm(node: OpNode, x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor,
                var: torch.Tensor) -> torch.Tensor:
    eps = node.get("epsilon", 1e-5)
    batch = node.state.batch_stats
    # ONNX: running = running * momentum + batch * (1 - momentum); torch uses the complement
    return F.batch_norm(x, mean, var, scale, bias, training=batch, momentum=1.0 - node.get("momentum", 0.9),
                        eps=eps)


@register("InstanceNormalization", weights=(1, 2))
def _instance_norm(node: OpNode, x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.instance_norm(x, weight=scale, bias=bias, eps=node.get("epsilon", 1e-5))


@register("LayerNormalization", weights=(1, 2), check=_extra_outputs_check)
def _layer_norm(node: OpNode, x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
                ) -> torch.Tensor:
    axis = node.get("axis", -1) % x.ndim
    shape = tuple(x.shape[axis:])
    eps = node.get("epsilon", 1e-5)
    bias = bias if _present(bias) else None
    if tuple(scale.shape) == shape and (bias is None or tuple(bias.shape) == shape):
        return F.layer_norm(x, shape, scale, bias, eps)
    y = F.layer_norm(x, shape, None, None, eps) * scale
    return y if bias is None else y + bias


@register("GroupNormalization", weights=(1, 2))
def _group_norm(node: OpNode, x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    groups = node.get("num_groups")
    c = x.shape[1]
    if scale.numel() != c:  # opset 18: one scale per group
        scale = scale.repeat_interleave(c // groups)
        bias = bias.repeat_interleave(c // groups)
    return F.group_norm(x, groups, scale, bias, node.get("epsilon", 1e-5))


@register("LRN")
def _lrn(node: OpNode, x: torch.Tensor) -> torch.Tensor:
    size = node.get("size")
    alpha, beta, bias = node.get("alpha", 1e-4), node.get("beta", 0.75), node.get("bias", 1.0)
    before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
    sq = x * x
    pad = [0, 0] * (x.ndim - 2) + [before, after]
    sq = F.pad(sq, pad)
    c = x.shape[1]
    acc = sum(sq.narrow(1, i, c) for i in range(size))
    return x / (bias + (alpha / size) * acc) ** beta


# --------------------------------------------------------------------------- #
# Pooling
# --------------------------------------------------------------------------- #

_MAXPOOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVGPOOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _pool_setup(node: OpNode, x: torch.Tensor) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    kernel = list(node.get("kernel_shape"))
    nd = len(kernel)
    strides = list(node.get("strides") or [1] * nd)
    dil = list(node.get("dilations") or [1] * nd)
    in_shape = [int(s) for s in x.shape[2:]]
    pads = _auto_pads(node, in_shape, kernel, strides, dil)
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
                  None if direct else _torch_pads(pads), out)
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
    tp = _torch_pads(pads)
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


# --------------------------------------------------------------------------- #
# Shape and layout ops
# --------------------------------------------------------------------------- #


@register("Flatten")
def _flatten(node: OpNode, x: torch.Tensor) -> torch.Tensor:
    axis = node.get("axis", 1)
    if axis < 0:
        axis += x.ndim
    lead = math.prod(x.shape[:axis])
    return x.reshape(lead, math.prod(x.shape[axis:]))


@register("Reshape", static=(1,))
def _reshape(node: OpNode, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    dims = _ints(shape)
    if not node.get("allowzero", 0):
        dims = [int(x.shape[i]) if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


@register("Transpose")
def _transpose(node: OpNode, x: torch.Tensor) -> torch.Tensor:
    perm = node.get("perm")
    return x.permute(*(perm if perm is not None else reversed(range(x.ndim))))


def _axes(node: OpNode, axes: torch.Tensor | None) -> list[int] | None:
    if _present(axes):
        return _ints(axes)
    a = node.get("axes")
    return list(a) if a is not None else None


@register("Squeeze", static=(1,))
def _squeeze(node: OpNode, x: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
    ax = _axes(node, axes)
    if not ax:
        return x.squeeze()
    return x.squeeze(tuple(a % x.ndim for a in ax))


@register("Unsqueeze", static=(1,))
def _unsqueeze(node: OpNode, x: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
    ax = _axes(node, axes) or []
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
    sizes = _ints(split) if _present(split) else node.get("split")
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
        st, en = _ints(starts), _ints(ends)
        ax = _ints(axes) if _present(axes) else list(range(len(st)))
        sp = _ints(steps) if _present(steps) else [1] * len(st)
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


def _norm_index(idx: torch.Tensor, dim: int) -> torch.Tensor:
    if idx.dtype not in (torch.int64, torch.int32):
        idx = idx.long()
    if idx.numel() and bool((idx < 0).any()):
        idx = torch.where(idx < 0, idx + dim, idx)
    return idx


@register("Gather")
def _gather(node: OpNode, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    axis = node.get("axis", 0) % x.ndim
    idx = _norm_index(idx, int(x.shape[axis]))
    if idx.ndim == 0:
        return x.select(axis, int(idx))
    out = x.index_select(axis, idx.reshape(-1))
    if idx.ndim == 1:
        return out
    return out.reshape(*x.shape[:axis], *idx.shape, *x.shape[axis + 1:])


@register("GatherElements")
def _gather_elements(node: OpNode, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    axis = node.get("axis", 0) % x.ndim
    return torch.gather(x, axis, _norm_index(idx, int(x.shape[axis])).long())


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
def _constant(node: OpNode) -> torch.Tensor:
    a = node.attrs
    if "value" in a:
        return _tensor_from_proto(a["value"])
    for key, dtype in (("value_float", torch.float32), ("value_int", torch.int64),
                       ("value_floats", torch.float32), ("value_ints", torch.int64)):
        if key in a:
            return torch.tensor(a[key], dtype=dtype)
    raise UserError(f"Constant {node.name} holds a value torch cannot take ({', '.join(a)})")


@register("ConstantOfShape", static=(0,))
def _constant_of_shape(node: OpNode, shape: torch.Tensor) -> torch.Tensor:
    value = node.get("value")
    fill = _tensor_from_proto(value).reshape(-1) if value is not None else torch.zeros(1)
    return torch.full(_ints(shape), fill[0].item(), dtype=fill.dtype)


@register("Cast")
def _cast(node: OpNode, x: torch.Tensor) -> torch.Tensor:
    return x.to(torch_dtype(node.get("to")))


@register("CastLike")
def _cast_like(node: OpNode, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return x.to(like.dtype)


@register("Expand", static=(1,))
def _expand(node: OpNode, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(_ints(shape))))


@register("Tile", static=(1,))
def _tile(node: OpNode, x: torch.Tensor, repeats: torch.Tensor) -> torch.Tensor:
    return x.repeat(*_ints(repeats))


@register("Range", static=(0, 1, 2))
def _range(node: OpNode, start: torch.Tensor, limit: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)


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


@register("Trilu", static=(1,))
def _trilu(node: OpNode, x: torch.Tensor, k: torch.Tensor | None = None) -> torch.Tensor:
    diag = int(k.item()) if _present(k) else 0
    return torch.triu(x, diag) if node.get("upper", 1) else torch.tril(x, diag)


@register("CumSum", static=(1,))
def _cumsum(node: OpNode, x: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
    a = int(axis.item()) % x.ndim
    if node.get("reverse", 0):
        x = x.flip(a)
    y = torch.cumsum(x, a)
    if node.get("exclusive", 0):
        y = y - x
    return y.flip(a) if node.get("reverse", 0) else y


# --------------------------------------------------------------------------- #
# Reductions
# --------------------------------------------------------------------------- #


def _reduce(fn: Callable[[torch.Tensor, tuple[int, ...], bool], torch.Tensor],
            noop: Callable[[torch.Tensor], torch.Tensor] | None = None) -> OpFn:
    def run(node: OpNode, x: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
        ax = _axes(node, axes)
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


# --------------------------------------------------------------------------- #
# Pad, Resize
# --------------------------------------------------------------------------- #


def _pad_indices(n: int, before: int, after: int, mode: str) -> torch.Tensor:
    i = torch.arange(-before, n + after)
    if mode == "edge":
        return i.clamp(0, n - 1)
    if mode == "wrap":
        return i.remainder(n)
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    j = i.remainder(period)
    return torch.where(j >= n, period - j, j)


def _pad_check(node: OpNode) -> str | None:
    mode = node.get("mode", "constant")
    return None if mode in ("constant", "reflect", "edge", "wrap") else f"Pad mode {mode!r}"


@register("Pad", static=(1, 2, 3), check=_pad_check)
def _pad(node: OpNode, x: torch.Tensor, pads: torch.Tensor | None = None, value: torch.Tensor | None = None,
         axes: torch.Tensor | None = None) -> torch.Tensor:
    mode = node.get("mode", "constant")
    if node.opset < 11:
        p, cv = list(node.get("pads")), float(node.get("value", 0.0))
    else:
        p = _ints(pads)
        cv = value.item() if _present(value) else 0
    if _present(axes):
        ax = [a % x.ndim for a in _ints(axes)]
        full = [0] * (2 * x.ndim)
        for i, a in enumerate(ax):
            full[a], full[a + x.ndim] = p[i], p[i + len(ax)]
        p = full
    nd = x.ndim
    if mode == "constant":
        return F.pad(x, _torch_pads(p), value=cv)
    for a in range(nd):
        b, e = p[a], p[a + nd]
        if b < 0:
            x = x.narrow(a, -b, x.shape[a] + b)
            b = 0
        if e < 0:
            x = x.narrow(a, 0, x.shape[a] + e)
            e = 0
        if b or e:
            x = x.index_select(a, _pad_indices(int(x.shape[a]), b, e, mode))
    return x


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


def _resize_axes(node: OpNode, x: torch.Tensor, scales: list[float] | None, sizes: list[int] | None
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
    return _resize_axes(node, x, _floats(scales) if _present(scales) else None,
                        _ints(sizes) if _present(sizes) else None)


@register("Upsample", static=(1,), check=_resize_check)
def _upsample(node: OpNode, x: torch.Tensor, scales: torch.Tensor | None = None) -> torch.Tensor:
    s = _floats(scales) if _present(scales) else list(node.get("scales"))
    return _resize_axes(node, x, s, None)


# --------------------------------------------------------------------------- #
# The module
# --------------------------------------------------------------------------- #


@dataclass
class _Step:
    fn: OpFn
    node: OpNode
    inputs: list[str]
    outputs: list[str]
    single: bool
    release: list[str]


class GraphModule(nn.Module):
    """An ONNX graph as a trainable ``torch.nn.Module`` (see the module docstring).

    ``model``: the ONNX model (not modified). ``freeze_bn_stats``: keep BatchNormalization in
    eval mode with the graph's running statistics even when training (default); ``False`` uses
    and updates batch statistics in training mode. ``trainable``: names of the initializers to
    train (default: every floating-point weight, see the module docstring); any other float
    initializer becomes a constant.

    ``forward(*inputs, **named)`` takes the graph inputs in order or by name (tensors or NumPy
    arrays) and returns the single output, or a tuple of outputs in graph order.
    """

    def __init__(self, model: onnx.ModelProto, freeze_bn_stats: bool = True,
                 trainable: Collection[str] | None = None) -> None:
        super().__init__()
        self.model = model
        self.freeze_bn_stats = freeze_bn_stats
        missing = unsupported_ops(model)
        if missing:
            raise UserError(f"cannot train: no torch function for op(s) {', '.join(missing)}")
        graph = model.graph
        opset = next((int(i.version) for i in model.opset_import if i.domain in ("", "ai.onnx")), 0)
        self._state = _State()

        inits = {t.name: t for t in graph.initializer}
        self.input_names = [i.name for i in graph.input if i.name not in inits]
        self.output_names = [o.name for o in graph.output]
        nodes = [OpNode(n, opset, self._state) for n in graph.node]
        specs = [_OPS[_op_key(n)] for n in graph.node]

        # how each value is consumed
        consumers: dict[str, list[tuple[int, int]]] = {}
        for k, n in enumerate(nodes):
            for slot, name in enumerate(n.inputs):
                if name:
                    consumers.setdefault(name, []).append((k, slot))
        graph_outputs = set(self.output_names)
        for n in nodes:
            n.used = {i for i, o in enumerate(n.outputs) if o and (o in consumers or o in graph_outputs)}
        problems = sorted({f"{n.op} ({why})" for n, s in zip(nodes, specs, strict=True)
                           if s.check is not None and (why := s.check(n)) is not None})
        if problems:
            raise UserError(f"cannot train: unsupported {'; '.join(problems)}")

        # constant values: initializers and Constant nodes
        values: dict[str, torch.Tensor] = {}
        sources: dict[str, tuple[str, int]] = {}
        for i, t in enumerate(graph.initializer):
            values[t.name] = _tensor_from_proto(t)
            sources[t.name] = ("init", i)
        for k, (n, proto) in enumerate(zip(nodes, graph.node, strict=True)):
            if n.op == "Constant" and _op_key(proto) == ("", "Constant") and "value" in n.attrs:
                values[n.outputs[0]] = _constant(n)
                sources[n.outputs[0]] = ("node", k)

        def role(name: str) -> str:
            uses = consumers.get(name, [])
            if any(slot in specs[k].stats for k, slot in uses):
                return "stat"
            data = [(k, slot) for k, slot in uses if slot not in specs[k].static]
            if not data:
                return "const"
            t = values[name]
            if not t.is_floating_point():
                return "const"
            if trainable is not None:
                return "param" if name in trainable else "const"
            if t.numel() > 1 or any(slot in specs[k].weights for k, slot in data):
                return "param"
            return "const"

        self.param_names: list[str] = []
        self.stat_names: list[str] = []
        self.params = nn.ParameterList()
        self._consts = nn.Module()
        self._sources = sources
        const_env: dict[str, torch.Tensor] = {}
        self._const_keys: dict[str, str] = {}
        for name, t in values.items():
            r = role(name) if name in consumers or name in graph_outputs else "const"
            if r == "param":
                self.param_names.append(name)
                self.params.append(nn.Parameter(t))
            else:
                if r == "stat":
                    self.stat_names.append(name)
                key = f"c{len(self._const_keys)}"
                self._consts.register_buffer(key, t)
                self._const_keys[name] = key
                const_env[name] = t
        if trainable is not None:
            unknown = sorted(set(trainable) - set(values))
            if unknown:
                raise ValueError(f"trainable names no initializer: {unknown[:5]}")

        # fold nodes whose inputs are all constants (not parameters)
        param_set = set(self.param_names)
        steps: list[_Step] = []
        with torch.no_grad():
            for n, spec in zip(nodes, specs, strict=True):
                ins = [x for x in n.inputs if x]
                if n.op == "Constant" and n.outputs[0] in values:
                    continue
                if all(x in const_env and x not in param_set for x in ins) and not spec.stats:
                    out = self._call(spec.fn, n, [const_env[x] if x else None for x in n.inputs])
                    outs = out if isinstance(out, tuple) else (out,)
                    for name, v in zip(n.outputs, outs, strict=False):
                        if name:
                            key = f"c{len(self._const_keys)}"
                            self._consts.register_buffer(key, v, persistent=False)
                            self._const_keys[name] = key
                            const_env[name] = v
                    continue
                steps.append(_Step(spec.fn, n, list(n.inputs), list(n.outputs), len(n.outputs) == 1, []))
        # free intermediate values after their last use
        last: dict[str, int] = {}
        for s_idx, s in enumerate(steps):
            for x in s.inputs:
                if x:
                    last[x] = s_idx
        keep = graph_outputs | set(values) | set(const_env)
        for name, s_idx in last.items():
            if name not in keep:
                steps[s_idx].release.append(name)
        self._steps = steps
        self._env: dict[str, torch.Tensor] = {}
        self._refresh_env()

    # -- parameters and buffers -------------------------------------------------

    def _refresh_env(self) -> None:
        env = {name: getattr(self._consts, key) for name, key in self._const_keys.items()}
        for name, p in zip(self.param_names, self.params, strict=True):
            env[name] = p
        self._env = env

    def _apply(self, fn: Any, recurse: bool = True) -> GraphModule:  # .to(), .double(), ...
        super()._apply(fn, recurse)
        self._refresh_env()
        return self

    def named_onnx_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(initializer name, parameter) pairs, in model order."""
        return list(zip(self.param_names, self.params, strict=True))

    def onnx_tensor(self, name: str) -> torch.Tensor:
        """The current value of an initializer (parameter or constant) by its ONNX name."""
        return self._env[name]

    # -- running ------------------------------------------------------------------

    @staticmethod
    def _call(fn: OpFn, node: OpNode, args: list[Any]) -> Any:
        while args and args[-1] is None:
            args.pop()
        try:
            return fn(node, *args)
        except Exception as e:
            raise _node_error(node, e) from e

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) > len(self.input_names):
            raise TypeError(f"the graph takes {len(self.input_names)} input(s), got {len(args)}")
        env = dict(self._env)
        for name, v in zip(self.input_names, args, strict=False):
            env[name] = v if isinstance(v, torch.Tensor) else torch.as_tensor(v)
        for name, v in kwargs.items():
            if name not in self.input_names:
                raise TypeError(f"unknown graph input {name!r}; inputs are {self.input_names}")
            env[name] = v if isinstance(v, torch.Tensor) else torch.as_tensor(v)
        missing = [n for n in self.input_names if n not in env]
        if missing:
            raise TypeError(f"missing graph input(s) {missing}")
        self._state.batch_stats = self.training and not self.freeze_bn_stats
        for step in self._steps:
            args_ = [env[x] if x else None for x in step.inputs]
            try:
                out = step.fn(step.node, *args_)
            except Exception as e:
                raise _node_error(step.node, e) from e
            if step.single or isinstance(out, torch.Tensor):
                env[step.outputs[0]] = out
            else:
                for name, v in zip(step.outputs, out, strict=False):
                    if name:
                        env[name] = v
            for name in step.release:
                del env[name]
        outs = tuple(env[n] for n in self.output_names)
        return outs[0] if len(outs) == 1 else outs

    # -- back to ONNX -----------------------------------------------------------

    def write_back(self, model: onnx.ModelProto | None = None) -> onnx.ModelProto:
        """A copy of ``model`` (default: the model this module was built from) with the current
        parameter values (and running statistics, when they were updated) in the original dtypes
        and storage; everything else is byte-identical."""
        src = self.model if model is None else model
        out = onnx.ModelProto()
        out.CopyFrom(src)
        inits = {t.name: t for t in out.graph.initializer}
        names = list(self.param_names) + ([] if self.freeze_bn_stats else list(self.stat_names))
        for name in names:
            value = self._env[name].detach()
            kind, idx = self._sources[name]
            if kind == "init":
                tp = inits.get(name)
                if tp is None:
                    raise ValueError(f"the model has no initializer {name!r} to write back")
            else:
                node = out.graph.node[idx] if model is None else next(
                    (n for n in out.graph.node if n.op_type == "Constant" and n.output and n.output[0] == name),
                    None)
                if node is None:
                    raise ValueError(f"the model has no Constant {name!r} to write back")
                tp = next(a.t for a in node.attribute if a.name == "value")
            if list(tp.dims) != list(value.shape):
                raise ValueError(f"{name}: the model's shape {list(tp.dims)} differs from the trained "
                                 f"{list(value.shape)}")
            _store(tp, value)
        return out


def _node_error(node: OpNode, e: Exception) -> Exception:
    """``e`` with the node that raised it named: a UserError stays one, anything else is a
    RuntimeError."""
    if isinstance(e, UserError):
        return UserError(f"cannot run node {node.name} ({node.op}) in torch: {e}")
    return RuntimeError(f"torch execution of node {node.name} ({node.op}) failed: {type(e).__name__}: {e}")


def _store(tp: onnx.TensorProto, value: torch.Tensor) -> None:
    """Set ``tp``'s values, keeping its dtype and the field it stores them in."""
    value = value.detach().cpu().contiguous()
    code = tp.data_type
    if code == onnx.TensorProto.BFLOAT16:
        bits = value.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    elif code == onnx.TensorProto.FLOAT16:
        bits = value.to(torch.float16).numpy().view(np.uint16)
    else:
        bits = None
    arr = value.numpy().astype(helper.tensor_dtype_to_np_dtype(code)) if bits is None else bits
    if tp.HasField("raw_data") or code not in _FLOAT_CODES:
        tp.raw_data = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
        return
    if code == onnx.TensorProto.FLOAT:
        del tp.float_data[:]
        tp.float_data.extend(arr.reshape(-1).tolist())
    elif code == onnx.TensorProto.DOUBLE:
        del tp.double_data[:]
        tp.double_data.extend(arr.reshape(-1).tolist())
    else:  # float16 / bfloat16 bits in int32_data
        del tp.int32_data[:]
        tp.int32_data.extend(int(b) for b in arr.reshape(-1))
