"""TensorRT INT8 (explicit quantization): the precision plan for TensorRT 10 and 11 API surfaces and
the checks on QDQ models (always run), and real INT8 engines (``-m tensorrt``, needs TensorRT + GPU)."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_tensorrt import HAS_TRT_GPU, needs_trt

from npcompile.errors import UserError
from npcompile.quantize import QuantizeOptions, quantize_model
from npcompile.runtime.data import Dataset
from npcompile.targets.tensorrt_precision import precision_plan, qdq_summary


def _conv_net() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((16, 3, 3, 3)) * 0.3).astype(np.float32)
    w2 = (rng.standard_normal((8, 16, 3, 3)) * 0.2).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
         helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
         helper.make_node("Conv", ["r1", "w2"], ["y"], pads=[1, 1, 1, 1], name="conv2")],
        "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 16, 16])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b1"),
         numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _calib(n: int = 64) -> Dataset:
    return Dataset({"x": np.random.default_rng(1).standard_normal((n, 3, 16, 16)).astype(np.float32)})


def _qdq(activations: str) -> onnx.ModelProto:
    return quantize_model(_conv_net(), QuantizeOptions.make(activations=activations), _calib()).model


def _trt(version: str, flags: tuple[str, ...], typed: bool = True) -> types.SimpleNamespace:
    """The parts of the ``tensorrt`` module a precision plan reads (a TensorRT 10 or 11 surface)."""
    creation = {"STRONGLY_TYPED": 1} if typed else {}
    return types.SimpleNamespace(__version__=version, BuilderFlag=types.SimpleNamespace(**dict.fromkeys(flags, 0)),
                                 NetworkDefinitionCreationFlag=types.SimpleNamespace(**creation))


TRT10 = _trt("10.13.0", ("FP16", "INT8", "SPARSE_WEIGHTS"))
TRT11 = _trt("11.4.0", ("SPARSE_WEIGHTS",))


def test_qdq_summary_counts_and_accepts_symmetric_int8() -> None:
    q = qdq_summary(_qdq("int8"))
    assert q["qdq_nodes"] >= 6 and q["float16"] is False
    assert qdq_summary(_conv_net()) == {"qdq_nodes": 0, "float16": False}


def test_uint8_activations_are_refused_with_the_fix() -> None:
    with pytest.raises(UserError, match="activations int8") as e:
        qdq_summary(_qdq("uint8"))
    assert "\n" not in str(e.value)


def test_integer_ops_are_refused() -> None:
    dyn = quantize_model(_conv_net(), QuantizeOptions.make(scheme="int8-dynamic", op_types="Conv")).model
    with pytest.raises(UserError, match="integer ops"):
        qdq_summary(dyn)


def test_trt10_weakly_typed_sets_int8_and_fp16_for_qdq() -> None:
    plan = precision_plan(TRT10, _qdq("int8"), fp16=True)
    assert plan.builder_flags == ["FP16", "INT8"] and plan.int8 and plan.fp16 and not plan.strongly_typed
    assert plan.network_flags == 0
    plain = precision_plan(TRT10, _conv_net(), fp16=True)
    assert plain.builder_flags == ["FP16"] and not plain.int8
    assert precision_plan(TRT10, _conv_net(), fp16=False).builder_flags == []


def test_trt10_strongly_typed_sets_no_precision_flags() -> None:
    plan = precision_plan(TRT10, _qdq("int8"), fp16=True, strongly_typed=True)
    assert plan.strongly_typed and plan.builder_flags == [] and plan.network_flags == 1 << 1 and plan.int8
    assert plan.fp16 is False and "--quantize fp16" in plan.notes[0]


def test_trt11_is_strongly_typed_and_takes_fp16_from_the_model() -> None:
    plan = precision_plan(TRT11, _qdq("int8"))
    assert plan.strongly_typed and plan.builder_flags == [] and plan.int8
    fp16 = quantize_model(_conv_net(), QuantizeOptions.make(scheme="fp16")).model
    assert precision_plan(TRT11, fp16).fp16 is True
    with pytest.raises(UserError, match="strongly typed networks only"):
        precision_plan(TRT11, _conv_net(), strongly_typed=False)


def test_int8_without_qdq_is_a_user_error() -> None:
    with pytest.raises(UserError, match="explicitly quantized"):
        precision_plan(TRT10, _conv_net(), int8=True)
    with pytest.raises(UserError, match="int8=False"):
        precision_plan(TRT10, _qdq("int8"), int8=False)


# ---------------------------------------------------------------- GPU (TensorRT + CUDA)


@pytest.mark.tensorrt
@needs_trt
@pytest.mark.parametrize("sparse", [False, True])
def test_int8_engine_matches_onnxruntime(tmp_path: Path, sparse: bool) -> None:
    import onnxruntime as ort

    from npcompile.targets.tensorrt import TensorRTTarget

    assert HAS_TRT_GPU
    model = _qdq("int8")
    artifact = TensorRTTarget(fp16=True, sparse=sparse, min_batch=1, opt_batch=4, max_batch=8).build(model, tmp_path)
    assert artifact.info["int8"] is True and artifact.info["qdq_nodes"] > 0
    x = _calib(4).inputs["x"]
    (got,) = TensorRTTarget.infer(artifact, {"x": x})
    (ref,) = ort.InferenceSession(_conv_net().SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})
    rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert got.shape == ref.shape and rel < 0.05, rel  # int8 quantization error, not a wrong engine
