"""Which precisions a TensorRT build uses: FP16, INT8 from explicit quantization (Q/DQ), strong typing.

TensorRT quantizes explicitly: an ONNX model with ``QuantizeLinear``/``DequantizeLinear`` pairs
says where INT8 runs (implicit calibration is deprecated since 10.1 and gone in 11). TensorRT's
quantization is symmetric: every zero point must be 0 and the quantized type signed (int8), so
an ONNX Runtime CPU model with uint8 activations is refused with what to change. Integer ops
(``QLinearConv``, ``ConvInteger``...) are not explicit quantization; TensorRT does not parse them.

- **TensorRT 10.x**, weakly typed (default): ``BuilderFlag.FP16`` lets non-quantized layers run
  in FP16, ``BuilderFlag.INT8`` enables the Q/DQ regions (both may be set: INT8 where the model
  says, FP16 elsewhere). ``strongly_typed=True`` builds a strongly typed network instead
  (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``; no precision flags allowed).
- **TensorRT 11.x**: strongly typed networks only; the precision flags are gone. INT8 comes from
  the Q/DQ nodes, FP16 from the model's own float16 tensors (``--quantize fp16``).

:func:`precision_plan` decides from the module's API surface (``trt.BuilderFlag``,
``trt.NetworkDefinitionCreationFlag``, ``trt.__version__``) and the model, without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import onnx

from npcompile.errors import UserError

__all__ = ["PrecisionPlan", "precision_plan", "qdq_summary"]

_QDQ = ("QuantizeLinear", "DequantizeLinear")
_INTEGER_OPS = ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm", "DynamicQuantizeLinear",
                "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "DynamicQuantizeLSTM", "QLinearAdd", "QLinearMul")
#: quantized types TensorRT's Q/DQ take
_TRT_TYPES = {onnx.TensorProto.INT8, onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.INT4}
_INT8_HINT = 'quantize with symmetric int8 activations (--quantize-activations int8, pass option activations = "int8")'


@dataclass
class PrecisionPlan:
    """Network creation flags, builder flags (names in ``trt.BuilderFlag``) and what they mean."""

    network_flags: int = 0
    builder_flags: list[str] = field(default_factory=list)
    strongly_typed: bool = False
    fp16: bool = False
    int8: bool = False
    qdq_nodes: int = 0
    notes: list[str] = field(default_factory=list)

    def info(self) -> dict[str, Any]:
        return {"fp16": self.fp16, "int8": self.int8, "strongly_typed": self.strongly_typed,
                "builder_flags": list(self.builder_flags), "qdq_nodes": self.qdq_nodes, "precision_notes": self.notes}


def _major(trt: Any) -> int:
    try:
        return int(str(trt.__version__).split(".")[0])
    except (AttributeError, ValueError):
        return 0


def qdq_summary(model: onnx.ModelProto) -> dict[str, Any]:
    """Q/DQ nodes of ``model`` and whether it holds float16 tensors; a quantization TensorRT cannot
    run (integer ops, a non-zero zero point, an unsigned type) is a :class:`UserError`."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    integer = sorted({n.op_type for n in g.node if n.op_type in _INTEGER_OPS})
    if integer:
        raise UserError(f"TensorRT does not parse integer ops ({', '.join(integer)}); quantize in the QDQ format "
                        f"(--quantize int8) and {_INT8_HINT}")
    count = 0
    for n in g.node:
        if n.op_type not in _QDQ:
            continue
        count += 1
        zp = inits.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if zp is None:
            if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2]:
                raise UserError(f"{n.op_type} {n.name}: TensorRT needs a constant zero point")
            continue
        if zp.data_type not in _TRT_TYPES:
            kind = onnx.helper.tensor_dtype_to_np_dtype(zp.data_type)
            what = "an int32 bias" if kind == "int32" else f"to {kind}"
            raise UserError(f"{n.op_type} {n.name} quantizes {what}; TensorRT runs signed int8 quantization with "
                            f"float biases: {_INT8_HINT}")
        if onnx.numpy_helper.to_array(zp).astype("float64").any():
            raise UserError(f"{n.op_type} {n.name} has a non-zero zero point; TensorRT's quantization is "
                            f"symmetric: {_INT8_HINT}")
    fp16 = any(t.data_type == onnx.TensorProto.FLOAT16 for t in g.initializer) or any(
        vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 for vi in (*g.input, *g.value_info, *g.output))
    return {"qdq_nodes": count, "float16": fp16}


def precision_plan(trt: Any, model: onnx.ModelProto, fp16: bool = True, int8: bool | None = None,
                   strongly_typed: bool | None = None) -> PrecisionPlan:
    """The precisions of a build of ``model`` with the TensorRT module ``trt``.

    ``int8``: ``None`` enables INT8 exactly when the model has Q/DQ nodes; ``True`` without them is
    a :class:`UserError` (TensorRT quantizes explicitly). ``strongly_typed``: ``None`` means what
    the TensorRT version supports best (weakly typed with precision flags on 10.x, strongly typed
    on 11.x, where it is the only kind).
    """
    major = _major(trt)
    q = qdq_summary(model)
    has_qdq = q["qdq_nodes"] > 0
    if int8 and not has_qdq:
        raise UserError("TensorRT INT8 needs an explicitly quantized model (QuantizeLinear/DequantizeLinear "
                        f"nodes): quantize it first (--quantize int8) and {_INT8_HINT}")
    use_int8 = has_qdq if int8 is None else bool(int8)
    if int8 is False and has_qdq:
        raise UserError("the model is quantized (QuantizeLinear/DequantizeLinear nodes): TensorRT runs its Q/DQ "
                        "regions in INT8; int8=False cannot build it in float")
    flags = trt.BuilderFlag
    typed_flag = getattr(getattr(trt, "NetworkDefinitionCreationFlag", None), "STRONGLY_TYPED", None)
    weak_ok = hasattr(flags, "FP16") or hasattr(flags, "INT8")
    if strongly_typed is None:
        strongly_typed = major >= 11 or not weak_ok
    if not strongly_typed and not weak_ok:
        raise UserError(f"TensorRT {trt.__version__} builds strongly typed networks only (strongly_typed=False "
                        "is not available)")
    plan = PrecisionPlan(strongly_typed=bool(strongly_typed), qdq_nodes=q["qdq_nodes"])
    if major < 10:
        explicit = getattr(getattr(trt, "NetworkDefinitionCreationFlag", None), "EXPLICIT_BATCH", None)
        if explicit is not None:
            plan.network_flags |= 1 << int(explicit)
    if strongly_typed:
        if typed_flag is not None:
            plan.network_flags |= 1 << int(typed_flag)
        elif major < 11:
            raise UserError(f"TensorRT {trt.__version__} has no strongly typed networks")
        plan.int8 = use_int8
        plan.fp16 = q["float16"]
        if fp16 and not q["float16"]:
            plan.notes.append("strongly typed network: layers run in the model's own precision; for FP16 convert "
                              "the model first (--quantize fp16)")
        return plan
    if fp16 and hasattr(flags, "FP16"):
        plan.builder_flags.append("FP16")
        plan.fp16 = True
    elif fp16:
        plan.notes.append(f"TensorRT {trt.__version__} has no BuilderFlag.FP16")
    if use_int8:
        if not hasattr(flags, "INT8"):  # pragma: no cover - 10.x has it
            raise UserError(f"TensorRT {trt.__version__} has no BuilderFlag.INT8; build strongly typed")
        plan.builder_flags.append("INT8")
        plan.int8 = True
    return plan
