"""GraphModule reproduces ONNX Runtime on every zoo architecture (legacy exporter, and a subset
through the dynamo exporter) and on onnx's shipped light models (with random weights)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from zoo import ZOO, export, randomize_bn

from npcompile.finetune.graph_module import GraphModule
from npcompile.graph.model_io import load_model
from npcompile.graph.shapes import input_specs

TOL = 1e-4
SMALL = sorted(name for name in ZOO if name != "resnet50")
DYNAMO = ["lenet", "resnet_basic", "transformer_block", "shufflenet_v2"]
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
LIGHT_MODELS = ["squeezenet", "shufflenet", "densenet121", "resnet50"]


def _compare(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> None:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = sess.run(None, feeds)
    gm = GraphModule(model).eval()
    with torch.no_grad():
        got = gm(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    got = got if isinstance(got, tuple) else (got,)
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape
        scale = max(1.0, float(np.abs(e).max()))
        assert float(np.abs(g.numpy() - e).max()) <= TOL * scale


def _zoo_model(name: str, dynamo: bool, tmp_path: Path) -> tuple[onnx.ModelProto, tuple[int, ...]]:
    builder, shape = ZOO[name]
    torch.manual_seed(0)
    module = randomize_bn(builder()).eval()
    return onnx.load(export(module, shape, tmp_path / f"{name}.onnx", dynamo=dynamo)), shape


@pytest.mark.parametrize("name", SMALL)
def test_zoo_legacy_export(name: str, tmp_path: Path) -> None:
    model, shape = _zoo_model(name, False, tmp_path)
    from npcompile.finetune.graph_module import registered_ops

    missing = {n.op_type for n in model.graph.node} & {"LSTM", "GRU", "RNN"} - set(registered_ops())
    if missing:  # recurrent ops in the graph fine-tuner are being added on another branch
        pytest.skip(f"no torch function for {sorted(missing)} yet")
    x = np.random.default_rng(1).standard_normal((3, *shape[1:])).astype(np.float32)  # batch 3: dynamic
    _compare(model, {"input": x})


@pytest.mark.parametrize("name", DYNAMO)
def test_zoo_dynamo_export(name: str, tmp_path: Path) -> None:
    model, shape = _zoo_model(name, True, tmp_path)
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    _compare(model, {"input": x})


def _logits_and_random_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """The light models have constant weights and end in Softmax: compare the logits (the Softmax
    input) of a model with He-initialised random weights (vectors: biases and BN parameters scaled
    by a random factor in [0.5, 1.5), so variances stay positive)."""
    rng = np.random.default_rng(0)
    for t in model.graph.initializer:
        a = numpy_helper.to_array(t)
        if a.dtype != np.float32 or a.size <= 1:
            continue
        if a.ndim >= 2:
            b = rng.standard_normal(a.shape) * np.sqrt(2.0 / np.prod(a.shape[1:]))
        else:
            b = a * rng.uniform(0.5, 1.5, a.shape)
        t.CopyFrom(numpy_helper.from_array(b.astype(np.float32), t.name))
    softmax = [n for n in model.graph.node if n.op_type == "Softmax"]
    if softmax:
        out = model.graph.output[0]
        out.name = softmax[-1].input[0]
        out.type.tensor_type.ClearField("shape")
    return model


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_onnx_light_models(name: str) -> None:
    model = _logits_and_random_weights(load_model(LIGHT / f"light_{name}.onnx"))
    spec = input_specs(model)[0]
    shape = [d.dim_value or 1 for d in spec.type.tensor_type.shape.dim]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    _compare(model, {spec.name: x})
