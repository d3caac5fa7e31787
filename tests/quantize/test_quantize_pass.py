"""The quantize pass after pruning (prune -> quantize), through the Python Pipeline API and a TOML
pipeline: valid models within quantization error of the pruned float model, the report fields,
byte-identical reruns, int8-dynamic, fp16, exclude patterns, and the NaN-scale and collapse checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from quantkit import LENET, data, rel_l2, run, zoo_model

from npcompile.errors import UserError
from npcompile.graph.model_io import load_model
from npcompile.graph.shapes import probe_shapes
from npcompile.passes.magnitude import MagnitudePass
from npcompile.passes.prune import PrunePass
from npcompile.passes.quantize import QuantizePass
from npcompile.passes.select import SelectPass
from npcompile.pipeline import Context, Pipeline
from npcompile.quantize import QuantizeOptions, quantize_model
from npcompile.runtime.data import Dataset, load_data


def _prune_then(model: onnx.ModelProto, quantize: QuantizePass, ratio: float = 0.3) -> tuple[Context, Context]:
    """(pruned float context, pruned + quantized context) through the Pipeline API."""
    passes = [MagnitudePass(), SelectPass(ratio=ratio), PrunePass()]
    pruned = Context(model, probe_shapes(model))
    Pipeline(passes).run(pruned)
    both = Context(model, probe_shapes(model))
    Pipeline([MagnitudePass(), SelectPass(ratio=ratio), PrunePass(), quantize]).run(both)
    return pruned, both


@pytest.mark.parametrize("name", ["lenet", "resnet_basic", "mobilenet_v2", "densenet"])
def test_prune_then_int8_stays_within_quantization_error(name: str) -> None:
    model = zoo_model(name)
    calib = data(model, 64)
    pruned, both = _prune_then(model, QuantizePass(calib=calib))
    q = both.model
    onnx.checker.check_model(q)
    ops = {n.op_type for n in q.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    feeds = data(model, 16, seed=7).inputs
    err = rel_l2(run(pruned.model, feeds)[0], run(q, feeds)[0])
    assert err < 0.05, err
    rec = both.results["quantize"].data
    assert rec["nodes"]["quantized"] > 0 and rec["calibration"]["method"] == "minmax"
    # per-channel scales, zero points and int32 biases cost ~17 bytes per channel: tiny depthwise
    # nets (mobilenet_v2 here) gain little; nets with real weight matrices shrink ~4x
    assert rec["size"]["weights_ratio"] < (0.4 if name in ("lenet", "resnet_basic") else 0.8)
    assert both.report_extras["quantization"] is rec


def test_lenet_report_fields_and_determinism() -> None:
    model = load_model(LENET / "model.onnx")
    calib = load_data(LENET / "calib.npz", model)
    pruned, first = _prune_then(model, QuantizePass(calib=calib, method="percentile"))
    _, second = _prune_then(model, QuantizePass(calib=calib, method="percentile"))
    a, b = first.model.SerializeToString(deterministic=True), second.model.SerializeToString(deterministic=True)
    assert a == b
    rec = first.results["quantize"]
    assert rec.changed and "int8" in rec.summary
    d = rec.data
    assert d["scheme"] == "int8" and d["method"] == "percentile" and d["calibration"]["percentile"] == 99.999
    assert d["calibration"]["samples"] == 256 and d["calibration"]["batches"] == 8
    assert d["nodes"]["quantized"] == 12 and d["nodes"]["float"] == 0 and len(d["nodes"]["folded"]) == 4
    assert d["nodes"]["ops"]["Conv"] == {"quantized": 2, "float": 0}
    assert d["size"]["before"] == pruned.model.ByteSize() and d["size"]["ratio"] <= 0.3
    assert d["scales"]["checked"] > 0 and 0 < d["scales"]["min"] <= d["scales"]["max"]
    (out,) = d["fidelity"]["outputs"]
    assert out["top1_agreement"] > 0.95 and out["rel_l2"] < 0.05
    json.dumps(d)  # goes into report.json
    ev = np.load(LENET / "eval.npz")
    acc = [float((run(m, {"input": ev["input"]})[0].argmax(1) == ev["labels"]).mean()) for m in
           (pruned.model, first.model)]
    assert abs(acc[0] - acc[1]) <= 0.01


def test_exclude_keeps_nodes_in_float_with_the_reason() -> None:
    model = load_model(LENET / "model.onnx")
    calib = load_data(LENET / "calib.npz", model)
    result = quantize_model(model, QuantizeOptions.make(exclude="/classifier/classifier.5/*"), calib)
    rows = {r["name"]: r for r in result.data["nodes"]["float_nodes"]}
    assert rows["/classifier/classifier.5/Gemm"]["reason"] == "excluded by pattern '/classifier/classifier.5/*'"
    gemm = next(n for n in result.model.graph.node if n.name == "/classifier/classifier.5/Gemm")
    producers = {o: n.op_type for n in result.model.graph.node for o in n.output}
    assert producers.get(gemm.input[1]) != "DequantizeLinear"  # a float weight
    with pytest.raises(UserError, match="matches no node"):
        quantize_model(model, QuantizeOptions.make(exclude="nothing*"), calib)


def test_int8_dynamic_on_a_matmul_graph() -> None:
    model = zoo_model("transformer_block")
    result = quantize_model(model, QuantizeOptions.make(scheme="int8-dynamic"))
    d = result.data
    assert d["scheme"] == "int8-dynamic" and d["method"] is None and d["calibration"] is None
    assert d["nodes"]["ops"]["MatMul"]["quantized"] >= 4
    assert {n.op_type for n in result.model.graph.node} & {"DynamicQuantizeMatMul", "MatMulInteger"}
    feeds = data(model, 4, seed=3).inputs
    assert rel_l2(run(model, feeds)[0], run(result.model, feeds)[0]) < 0.05
    assert d["size"]["weights_after"] < 0.5 * d["size"]["weights_before"]


@pytest.mark.parametrize("keep_io_types", [True, False])
def test_fp16_keeps_io_types_unless_asked(keep_io_types: bool) -> None:
    model = zoo_model("resnet_basic")
    result = quantize_model(model, QuantizeOptions.make(scheme="fp16", keep_io_types=keep_io_types))
    want = TensorProto.FLOAT if keep_io_types else TensorProto.FLOAT16
    assert result.model.graph.input[0].type.tensor_type.elem_type == want
    assert result.model.graph.output[0].type.tensor_type.elem_type == want
    assert 0.45 < result.data["size"]["ratio"] < 0.6
    x = data(model, 4, seed=3).inputs["input"]
    got = run(result.model, {"input": x if keep_io_types else x.astype(np.float16)})[0]
    assert rel_l2(run(model, {"input": x})[0], got) < 0.01


def _exploding_model() -> onnx.ModelProto:
    """x -> Mul(1e30) -> Mul(1e30) -> Conv: the activation before the Conv is inf on any input."""
    w = np.ones((2, 1, 1, 1), np.float32)
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "big"], ["a"], name="m1"),
         helper.make_node("Mul", ["a", "big"], ["b"], name="m2"),
         helper.make_node("Conv", ["b", "w"], ["y"], name="conv")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 4, 4])],
        [numpy_helper.from_array(np.array(1e30, np.float32), "big"), numpy_helper.from_array(w, "w")])
    return load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))


def test_infinite_ranges_are_a_clear_error() -> None:
    model = _exploding_model()
    calib = Dataset({"x": np.ones((8, 1, 4, 4), np.float32)})
    with pytest.raises(UserError) as e:
        quantize_model(model, QuantizeOptions.make(), calib)
    assert ("scale" in str(e.value) or "NaN or infinite" in str(e.value)) and "\n" not in str(e.value)


def _collapsing_model() -> onnx.ModelProto:
    """Logits whose range is set by one very negative class: int8 cannot tell the others apart."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 10)).astype(np.float32) * 0.1
    b = np.zeros(10, np.float32)
    b[0] = -1e4
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))


def test_collapse_to_chance_is_an_error() -> None:
    model = _collapsing_model()
    calib = Dataset({"x": np.random.default_rng(1).standard_normal((200, 8)).astype(np.float32)})
    with pytest.raises(UserError, match="collapsed"):
        quantize_model(model, QuantizeOptions.make(), calib)
    unchecked = quantize_model(model, QuantizeOptions.make(), calib, check=False)
    assert unchecked.data["fidelity"] is None


def test_already_quantized_is_refused() -> None:
    model = load_model(LENET / "model.onnx")
    once = quantize_model(model, QuantizeOptions.make(scheme="int8-dynamic")).model
    with pytest.raises(UserError, match="already quantized"):
        quantize_model(once, QuantizeOptions.make(scheme="int8-dynamic"))


def test_toml_pipeline_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "out"
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(f'''
[[passes]]
name = "magnitude"

[[passes]]
name = "select"
ratio = 0.3

[[passes]]
name = "prune"

[[passes]]
name = "quantize"
scheme = "int8"
calib = "{LENET / 'calib.npz'}"
exclude = ["/classifier/classifier.5/Gemm"]

[[passes]]
name = "cleanup"
''')
    r = subprocess.run([sys.executable, "-m", "npcompile", str(LENET / "model.onnx"), "--pipeline", str(pipeline),
                        "--eval", str(LENET / "eval.npz"), "-o", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    q = report["quantization"]
    assert q["excluded_nodes"] == ["/classifier/classifier.5/Gemm"] and q["nodes"]["float"] == 1
    assert report["summary"]["params_after"] < report["summary"]["params_before"]
    assert report["accuracy"]["after"] > 80
    assert "## Quantization" in (out / "report.md").read_text()
    onnx.checker.check_model(onnx.load(out / "model.onnx"))


def test_shipped_lenet_pipeline(tmp_path: Path) -> None:
    """examples/lenet_mnist/prune_int8.toml as its README runs it: 0.3x the pruned float file."""
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "npcompile", str(LENET / "model.onnx"), "--pipeline",
                        str(LENET / "prune_int8.toml"), "--eval", str(LENET / "eval.npz"), "-o", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    q = report["quantization"]
    assert q["size"]["ratio"] <= 0.3 and q["nodes"]["float"] == 0
    assert report["accuracy"]["before"] - report["accuracy"]["after"] < 2.0
    assert [p["name"] for p in report["passes"]] == ["magnitude", "select", "reconstruct", "quantize", "cleanup"]
