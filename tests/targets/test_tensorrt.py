"""The tensorrt target: always-run checks (import without TensorRT, availability, pure helpers) and
GPU tests (``-m tensorrt``) that build and run a real engine when TensorRT and CUDA are present."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from npcompile.errors import UserError
from npcompile.targets import get_target
from npcompile.targets.base import BenchmarkOptions
from npcompile.targets.tensorrt import (
    TensorRTTarget,
    parser_error_message,
    profile_shapes,
    sparse_report,
)


def _has_trt_gpu() -> bool:
    if importlib.util.find_spec("tensorrt") is None:
        return False
    try:
        import tensorrt  # noqa: F401
        import torch
    except Exception:
        return False
    return bool(torch.cuda.is_available())


HAS_TRT_GPU = _has_trt_gpu()
needs_trt = pytest.mark.skipif(not HAS_TRT_GPU, reason="needs TensorRT and a CUDA GPU")


# ---------------------------------------------------------------- always run


def test_module_imports_without_tensorrt() -> None:
    """In a fresh interpreter where ``import tensorrt`` fails, the module imports, the target is
    found by name and reports itself unavailable; nothing imports tensorrt at module level."""
    code = (
        "import sys; sys.modules['tensorrt'] = None\n"
        "import npcompile.targets.tensorrt as m\n"
        "from npcompile.targets import get_target\n"
        "assert get_target('tensorrt') is m.TensorRTTarget\n"
        "ok, why = m.TensorRTTarget.available()\n"
        "assert ok is False and 'TensorRT' in why, why\n"
        "assert m.TensorRTTarget().default_round_to() == 8\n"
        "print('OK')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "OK", proc.stderr


def test_get_target_returns_class() -> None:
    cls = get_target("tensorrt")
    assert cls is TensorRTTarget
    assert cls.name == "tensorrt"
    assert cls.install_hint == "pip install 'npcompile[tensorrt]'  (TensorRT 10 and an NVIDIA GPU)"


@pytest.mark.skipif(HAS_TRT_GPU, reason="TensorRT and a GPU are present here")
def test_unavailable_here() -> None:
    ok, why = TensorRTTarget.available()
    assert ok is False
    assert isinstance(why, str) and why.strip()


def test_unavailable_without_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """tensorrt importing is not enough: without a visible GPU, available() says so."""
    torch = pytest.importorskip("torch")
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ok, why = TensorRTTarget.available()
    assert ok is False and "GPU" in why


def test_options_and_round_to() -> None:
    assert TensorRTTarget().default_round_to() == 8
    assert TensorRTTarget(fp16=False).default_round_to() == 4
    t = TensorRTTarget(threads=4, workspace_mb=256, timing_cache="x.cache")
    assert t.batch_profile == (1, 8, 32) and t.workspace_mb == 256 and t.timing_cache == Path("x.cache")
    with pytest.raises(UserError):
        TensorRTTarget(min_batch=4, opt_batch=2, max_batch=8)
    with pytest.raises(UserError):
        TensorRTTarget(workspace_mb=0)


def test_profile_shapes() -> None:
    assert profile_shapes("x", (1, 3, 8, 8), (1, 8, 32)) is None
    assert profile_shapes("x", (-1, 3, 8, 8), (1, 8, 32)) == ((1, 3, 8, 8), (8, 3, 8, 8), (32, 3, 8, 8))
    with pytest.raises(UserError, match="dynamic dimension"):
        profile_shapes("x", (-1, 3, -1, -1), (1, 8, 32))


def test_parser_error_message_is_one_line() -> None:
    class Err:
        def __str__(self) -> str:
            return "In node 0 with name: conv and operator: Conv (parse):\n UNSUPPORTED_NODE: bad\tattr"

    class Parser:
        num_errors = 2

        def get_error(self, i: int) -> Err:
            return Err()

    msg = parser_error_message(Parser())
    assert "\n" not in msg and "UNSUPPORTED_NODE: bad attr" in msg and "1 more" in msg


def test_sparse_report() -> None:
    picked = "(Sparsity) TRT inference plan picked sparse implementation for layers: conv1, conv2 + relu"
    none_picked = "(Sparsity) TRT inference plan picked sparse implementation for layers:"
    assert sparse_report(None, [picked]) == (True, ["conv1", "conv2 + relu"])
    assert sparse_report(None, [none_picked]) == (False, [])
    assert sparse_report(None, []) == ("unknown", [])
    detailed = json.dumps({"Layers": [
        {"Name": "conv1", "TacticName": "sm80_xmma_fprop_sparse_conv_f16f16_f32"},
        {"Name": "sparse_named_but_dense", "TacticName": "sm80_xmma_fprop_implicit_gemm_f16f16"},
    ]})
    assert sparse_report(detailed, []) == (True, ["conv1"])
    dense = json.dumps({"Layers": [{"Name": "sparse_head", "Metadata": "[ONNX Layer: sparse_head]",
                                    "TacticName": "sm80_xmma_fprop_implicit_gemm"}]})
    assert sparse_report(dense, []) == ("unknown", [])
    assert sparse_report(json.dumps({"Layers": ["conv1", "relu1"]}), []) == ("unknown", [])
    assert sparse_report("not json", []) == ("unknown", [])


# ---------------------------------------------------------------- GPU (TensorRT + CUDA)


def _conv_relu_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 3, 3, 3)).astype(np.float32) * 0.2
    b = rng.standard_normal(16).astype(np.float32) * 0.1
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["y"])],
        "conv_relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16, 16, 16])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.mark.tensorrt
@needs_trt
def test_available_with_gpu() -> None:
    assert TensorRTTarget.available() == (True, "")


@pytest.mark.tensorrt
@needs_trt
@pytest.mark.parametrize("fp16", [True, False])
def test_build_benchmark_and_match_onnxruntime(tmp_path: Path, fp16: bool) -> None:
    import onnxruntime as ort

    model = _conv_relu_model()
    cache = tmp_path / "trt.cache"
    target = TensorRTTarget(fp16=fp16, min_batch=1, opt_batch=4, max_batch=8, timing_cache=cache)
    artifact = target.build(model, tmp_path, name="model")

    engine = tmp_path / "model.engine"
    assert artifact.files["engine"] == engine and engine.is_file() and engine.stat().st_size > 0
    assert cache.is_file() and cache.stat().st_size > 0
    assert artifact.info["fp16"] is fp16 and artifact.info["profiles"]["x"][2] == [8, 3, 16, 16]
    assert not list(tmp_path.glob(".*.tmp"))

    x = np.random.default_rng(1).standard_normal((4, 3, 16, 16)).astype(np.float32)
    (got,) = TensorRTTarget.infer(artifact, {"x": x})
    (want,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})
    assert got.shape == want.shape == (4, 16, 16, 16)
    tol = 2e-2 if fp16 else 1e-3
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)

    stats = target.benchmark(artifact, {"x": x}, BenchmarkOptions(warmup=3, runs=20))
    assert stats.runs == 20 and stats.batch == 4 and stats.p50_ms > 0

    with pytest.raises(UserError, match="outside the engine's profile"):
        TensorRTTarget.infer(artifact, {"x": np.zeros((16, 3, 16, 16), np.float32)})

    rebuilt = TensorRTTarget(fp16=fp16, min_batch=1, opt_batch=4, max_batch=8, timing_cache=cache)
    again = rebuilt.build(model, tmp_path / "again", name="model")  # loads the saved timing cache
    assert (tmp_path / "again" / "model.engine").stat().st_size > 0 and again.handle is not None


@pytest.mark.tensorrt
@needs_trt
def test_sparse_build_reports_honestly(tmp_path: Path) -> None:
    artifact = TensorRTTarget(sparse=True).build(_conv_relu_model(), tmp_path)
    assert artifact.info["sparse"] is True
    assert artifact.info["sparse_kernels"] in (True, False, "unknown")
    json.dumps(artifact.info)  # goes into report.json


@pytest.mark.tensorrt
@needs_trt
def test_parse_error_is_user_error(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("NoSuchOp", ["x"], ["y"], domain="com.example")], "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.example", 1)])
    with pytest.raises(UserError, match="cannot parse") as exc:
        TensorRTTarget().build(model, tmp_path)
    assert "\n" not in str(exc.value)


@pytest.mark.tensorrt
@needs_trt
def test_target_latency_measures_layers_as_engines(tmp_path: Path) -> None:
    """``--target tensorrt --target-latency``: the latency model times every layer as an engine the
    target builds (not an ONNX Runtime session), at the GPU's channel granularity."""
    lenet = Path(__file__).resolve().parents[2] / "examples" / "lenet_mnist" / "model.onnx"
    out = tmp_path / "o"
    r = subprocess.run([sys.executable, "-m", "npcompile", str(lenet), "--target", "tensorrt", "--target-latency",
                        "0.8", "--latency-cache", str(tmp_path / "cache"), "--latency-max-seconds", "2",
                        "--no-plots", "-o", str(out)], capture_output=True, text=True, timeout=1200)
    assert r.returncode in (0, 1), r.stderr  # 1: LeNet's latency on a GPU is mostly launch overhead
    rep = json.loads((out / "report.json").read_text())
    lm, lb = rep["latency-model"], rep["latency-budget"]
    assert lm["engine"] == "tensorrt" and lm["step"] == 8 and lm["timed_subgraphs"] > 0
    assert lb["attempts"] and lb["verified"]["fraction"] > 0
