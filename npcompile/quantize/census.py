"""What a quantization did: nodes quantized or left in float (and why), scales, sizes.

- :func:`node_census` compares the float model given to the tool with the tool's result, node by
  node (by name): a node of a static QDQ model is *quantized* when its data input (and its weight,
  for Conv/Gemm/MatMul...) arrives through a ``DequantizeLinear``; of a dynamically quantized model
  when the tool replaced it by integer ops; of a float16 model when it computes in float16. Nodes
  that touch no floating-point tensor (shape arithmetic) are not counted.
- :func:`check_scales` reads every scale and zero point of the quantized graph: a scale that is not
  finite and positive (calibration on data with infinite or NaN activations, a weight with inf) is
  a :class:`~npcompile.errors.UserError` naming the tensor.
- :func:`sizes` gives the serialized size and the weight bytes before and after.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from npcompile.errors import UserError
from npcompile.graph.names import first_match
from npcompile.graph.weighted_ops import WEIGHTED_OPS

__all__ = ["node_census", "check_scales", "sizes", "excluded_nodes", "QUANT_OPS"]

_FLOAT = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
#: ops that take a weight as input 1 (quantized only when that weight is too)
_WEIGHTED = set(WEIGHTED_OPS)
#: integer and quantization ops the tools insert
QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
             "ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "DynamicQuantizeLSTM",
             "QGemm", "QLinearAdd", "QLinearMul", "QAttention", "QLinearConcat", "QLinearSigmoid",
             "QLinearLeakyRelu", "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearSoftmax",
             "QLinearWhere", "QEmbedLayerNormalization", "QGather"}
#: (scale input, zero point input) pairs of the integer ops, by op type
_SCALE_INPUTS = {"QuantizeLinear": ((1, 2),), "DequantizeLinear": ((1, 2),),
                 "QLinearConv": ((1, 2), (4, 5), (6, 7)), "QLinearMatMul": ((1, 2), (4, 5), (6, 7)),
                 "QGemm": ((1, 2), (4, 5), (7, 8)), "DynamicQuantizeMatMul": ((2, 3),),
                 "MatMulIntegerToFloat": ((2, 4), (3, 5))}


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    g = model.graph
    types = {t.name: t.data_type for t in g.initializer}
    for vi in (*g.input, *g.value_info, *g.output):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    types[n.output[0]] = a.t.data_type
    return types


def _typed(model: onnx.ModelProto) -> dict[str, int]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # a model shape inference cannot take: use what it already declares
        inferred = model
    return _elem_types(inferred)


def excluded_nodes(model: onnx.ModelProto, patterns: list[str] | tuple[str, ...]) -> dict[str, str]:
    """Node name -> the first pattern (fnmatch, case-sensitive) it matches."""
    out: dict[str, str] = {}
    for n in model.graph.node:
        p = first_match(n.name, patterns)
        if p is not None:
            out[n.name] = p
    return out


def _is_numeric(node: onnx.NodeProto, types: dict[str, int]) -> bool:
    """Whether the node reads or writes a floating-point tensor (else it is shape arithmetic)."""
    names = [*node.input, *node.output]
    return any(types.get(t) in _FLOAT for t in names if t)


def node_census(before: onnx.ModelProto, after: onnx.ModelProto, scheme: str, excluded: dict[str, str],
                supported: set[str], blocked: set[str] | None = None,
                op_types: set[str] | None = None) -> dict[str, Any]:
    """Per node of ``before`` (the model the tool got): quantized or float, with the reason
    (``op_types``: the op types a dynamic quantization was asked for)."""
    op_types = op_types or supported
    types = _typed(before)
    by_name = {n.name: n for n in after.graph.node if n.name}
    producer = {o: n for n in after.graph.node for o in n.output if o}
    after_types = _typed(after) if scheme == "fp16" else {}
    rows: list[dict[str, Any]] = []
    for node in before.graph.node:
        if node.op_type in ("Constant",) or not _is_numeric(node, types):
            continue
        name = node.name or node.output[0]
        quantized = False
        reason = note = ""
        if scheme == "int8":
            new = by_name.get(node.name)
            if new is None:  # a Relu/Clip folded into the range of the QuantizeLinear after it
                quantized, note = True, "folded into the quantization range of its output"
            else:
                ins = [i for i in new.input[:2 if new.op_type in _WEIGHTED else 1] if i]
                quantized = bool(ins) and all(producer.get(i) is not None and
                                              producer[i].op_type == "DequantizeLinear" for i in ins)
        elif scheme == "int8-dynamic":
            quantized = node.name not in by_name  # replaced by integer ops
        else:
            new = by_name.get(node.name)
            outs = [o for o in (new.output if new is not None else []) if o]
            quantized = bool(outs) and any(after_types.get(o) == onnx.TensorProto.FLOAT16 for o in outs)
        if not quantized:
            if node.name in excluded:
                reason = f"excluded by pattern {excluded[node.name]!r}"
            elif scheme == "fp16" and blocked is not None and node.op_type in blocked:
                reason = f"{node.op_type} is on the float16 converter's float32 list"
            elif scheme == "int8-dynamic" and node.op_type not in op_types and node.op_type != "Gemm":
                reason = (f"{node.op_type} is not among the op types quantized dynamically "
                          f"({', '.join(sorted(op_types))})")
            elif scheme != "fp16" and node.op_type not in supported and node.op_type != "Gemm":
                reason = f"{node.op_type} has no int8 form in ONNX Runtime's quantizer"
            elif scheme == "int8-dynamic":
                reason = (f"{node.op_type} is quantized dynamically only with a constant weight"
                          if node.op_type in ("MatMul", "Gemm", "Conv") else
                          f"{node.op_type} is left in float by ONNX Runtime's dynamic quantizer")
            elif scheme == "int8":
                reason = "ONNX Runtime's quantizer left it in float (an input or its weight is not quantized)"
            else:
                reason = "kept in float32 by the float16 converter"
        rows.append({"name": name, "op": node.op_type, "quantized": quantized, **({"reason": reason} if reason else {}),
                     **({"note": note} if note else {})})
    per_op: dict[str, dict[str, int]] = {}
    for r in rows:
        d = per_op.setdefault(r["op"], {"quantized": 0, "float": 0})
        d["quantized" if r["quantized"] else "float"] += 1
    reasons = Counter(r["reason"] for r in rows if not r["quantized"])
    return {"quantized": sum(r["quantized"] for r in rows), "float": sum(not r["quantized"] for r in rows),
            "reasons": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
            "ops": dict(sorted(per_op.items())),
            "float_nodes": [r for r in rows if not r["quantized"]],
            "folded": [r["name"] for r in rows if r.get("note")]}


def check_scales(model: onnx.ModelProto) -> dict[str, Any]:
    """Every constant scale of the quantized graph must be finite and > 0 (UserError otherwise)."""
    inits = {t.name: t for t in model.graph.initializer}
    checked: set[str] = set()
    lo, hi = np.inf, 0.0
    for node in model.graph.node:
        for s_idx, z_idx in _SCALE_INPUTS.get(node.op_type, ()):
            if s_idx >= len(node.input) or node.input[s_idx] not in inits:
                continue
            name = node.input[s_idx]
            if name in checked:
                continue
            checked.add(name)
            scale = numpy_helper.to_array(inits[name]).astype(np.float64)
            if scale.size and not (np.isfinite(scale).all() and (scale > 0).all()):
                bad = scale[~(np.isfinite(scale) & (scale > 0))].ravel()[0]
                raise UserError(f"quantization produced an invalid scale {bad} for {name} (node {node.name}): the "
                                "calibrated range is not finite; check the calibration data, or keep the node in "
                                "float with an exclude pattern")
            if scale.size:
                lo, hi = min(lo, float(scale.min())), max(hi, float(scale.max()))
            if z_idx < len(node.input) and node.input[z_idx] in inits:
                zp = numpy_helper.to_array(inits[node.input[z_idx]])
                if np.issubdtype(zp.dtype, np.floating) and not np.isfinite(zp).all():
                    raise UserError(f"quantization produced an invalid zero point for {node.input[z_idx]} "
                                    f"(node {node.name})")
    return {"checked": len(checked), "min": None if not checked else lo, "max": None if not checked else hi}


def _init_bytes(model: onnx.ModelProto) -> int:
    total = 0
    for t in model.graph.initializer:
        n = int(np.prod(t.dims)) if t.dims else 1
        total += n * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    return total


def sizes(before: onnx.ModelProto, after: onnx.ModelProto) -> dict[str, Any]:
    """Serialized size and weight (initializer) bytes before and after, with their ratios."""
    b, a = before.ByteSize(), after.ByteSize()
    wb, wa = _init_bytes(before), _init_bytes(after)
    return {"before": b, "after": a, "ratio": a / b if b else None,
            "weights_before": wb, "weights_after": wa, "weights_ratio": wa / wb if wb else None}
