"""Pruning models that arrive quantized (by ONNX Runtime's own tooling): QDQ, QOperator, dynamic.

The lossless default removes exactly the dead channels a float model has, found through
``DequantizeLinear`` (an int8 0 with zero point 0 is exactly 0), and leaves the outputs
bit-identical; ratio pruning sees the same groups and picks the same channels as on the float
model, and stays within quantization error of it."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
from quantkit import LENET, data, ort_quantize, rel_l2, run, with_dead_channels, zoo_model

import npcompile
from npcompile.graph.model_io import load_model
from npcompile.graph.shapes import probe_shapes
from npcompile.graph.stats import model_stats


@functools.cache
def _qdq(name: str) -> onnx.ModelProto:
    model = zoo_model(name)
    return ort_quantize(model, data(model))


def _dead(info: dict) -> int:
    return sum(g["dead"] for g in info["groups"])


@pytest.mark.parametrize("name", ["lenet", "resnet_basic", "mobilenet_v2", "se_block_net", "transformer_block"])
def test_lossless_default_on_qdq_is_bit_identical(name: str) -> None:
    planted = with_dead_channels(zoo_model(name))
    q = ort_quantize(planted, data(planted))
    float_info, q_info = npcompile.inspect(planted), npcompile.inspect(q)
    assert [g["prunable"] for g in q_info["groups"]] == [g["prunable"] for g in float_info["groups"]]
    assert _dead(q_info) == _dead(float_info) > 0
    result = npcompile.compile(q)
    assert result.report["summary"]["channels_removed"] == _dead(q_info)
    onnx.checker.check_model(result.model)
    feeds = data(planted, 8, seed=5).inputs
    for a, b in zip(run(q, feeds), run(result.model, feeds), strict=True):
        assert a.shape == b.shape and np.array_equal(a, b)
    assert result.model.ByteSize() < q.ByteSize()


@pytest.mark.parametrize("fmt", ["qop", "dynamic"])
def test_lossless_on_integer_ops_is_bit_identical(fmt: str) -> None:
    """QOperator (QLinearConv, QGemm) and dynamic (ConvInteger, MatMulInteger with the rescaling Muls)."""
    planted = with_dead_channels(load_model(LENET / "model.onnx"))
    q = ort_quantize(planted, data(planted), fmt=fmt)
    ops = {n.op_type for n in q.graph.node}
    assert ops & ({"QLinearConv", "QGemm"} if fmt == "qop" else {"ConvInteger", "MatMulInteger"})
    info = npcompile.inspect(q)
    assert sum(g["prunable"] for g in info["groups"]) == 4 and _dead(info) > 0
    result = npcompile.compile(q)
    assert result.report["summary"]["channels_removed"] == _dead(info)
    x = np.load(LENET / "eval.npz")["input"][:64]
    assert np.array_equal(run(q, {"input": x})[0], run(result.model, {"input": x})[0])


@pytest.mark.parametrize("name", ["lenet", "resnet_basic", "se_block_net", "densenet"])
def test_ratio_on_qdq_picks_the_float_channels(name: str) -> None:
    model, q = zoo_model(name), _qdq(name)
    by_float = npcompile.compile(model, ratio=0.3)
    by_qdq = npcompile.compile(q, ratio=0.3)
    assert by_qdq.report["plan"] == by_float.report["plan"] and by_qdq.report["summary"]["channels_removed"] > 0
    onnx.checker.check_model(by_qdq.model)
    feeds = data(model, 8, seed=5).inputs
    err = rel_l2(run(by_float.model, feeds)[0], run(by_qdq.model, feeds)[0])
    assert err < 0.05, err  # int8 quantization error, not a wrong slice
    assert {n.op_type for n in by_qdq.model.graph.node} >= {"QuantizeLinear", "DequantizeLinear"}


def test_quantized_weights_count_as_parameters() -> None:
    model, q = zoo_model("lenet"), _qdq("lenet")
    a, b = model_stats(model, probe_shapes(model)), model_stats(q, probe_shapes(q))
    assert b.params == a.params and b.flops == a.flops
    assert [layer.params for layer in b.layers] == [layer.params for layer in a.layers]


def test_search_and_budget_run_on_qdq() -> None:
    """Masked evaluation masks the Conv/Gemm reading a quantized weight; budgets count its FLOPs."""
    q = _qdq("lenet")
    eval_path = LENET / "eval.npz"
    budget = npcompile.compile(q, target_flops=0.5)
    float_budget = npcompile.compile(zoo_model("lenet"), target_flops=0.5)
    assert budget.report["summary"]["flops_reduction"] == pytest.approx(
        float_budget.report["summary"]["flops_reduction"])
    lenet_q = ort_quantize(load_model(LENET / "model.onnx"), data(load_model(LENET / "model.onnx")))
    searched = npcompile.compile(lenet_q, search="binary", tolerance=2.0, eval=str(eval_path))
    acc = searched.report["accuracy"]
    assert searched.report["summary"]["channels_removed"] > 0 and acc["before"] - acc["after"] <= 2.0 + 1e-9
