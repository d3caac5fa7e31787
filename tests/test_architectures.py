"""Real architectures from both PyTorch exporters: planted dead channels are removed with unchanged
outputs, and ratio pruning gives valid, smaller models with the original output shape."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import zoo

import npcompile
from npcompile.graph.model_io import load_model
from npcompile.graph.shapes import probe_shapes
from npcompile.runtime.verify import compare, probe_inputs
from npcompile.testing import plant_dead_channels

DEAD = ["mlp", "lenet", "vgg", "resnet_basic", "resnet_bottleneck", "mobilenet_v2", "mobilenet_v3",
        "efficientnet", "densenet", "squeezenet", "googlenet", "mnasnet", "unet", "conv1d_net", "conv3d_net",
        "se_block_net", "grouped_conv_net", "resnext", "regnet"]
RATIO_ONLY = ["shufflenet_v2", "convnext", "vit", "transformer_block"]
DYNAMO = ["mlp", "lenet", "resnet_basic", "mobilenet_v2", "densenet", "unet", "efficientnet", "googlenet",
          "transformer_block", "convnext"]


def _export(name: str, dynamo: bool, tmp: Path) -> onnx.ModelProto:
    torch.manual_seed(0)
    builder, shape = zoo.ZOO[name]
    model = zoo.randomize_bn(builder(), 0)
    path = tmp / f"{name}_{'dynamo' if dynamo else 'legacy'}.onnx"
    zoo.export(model, shape, str(path), dynamo=dynamo)
    return load_model(path)


def _zeros(model: onnx.ModelProto) -> int:
    from onnx import numpy_helper

    return sum(int((numpy_helper.to_array(t) == 0).sum()) for t in model.graph.initializer
               if t.data_type == onnx.TensorProto.FLOAT)


def _params(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)


CASES = [(n, False) for n in DEAD] + [(n, True) for n in DYNAMO if n in DEAD]


@pytest.mark.parametrize("name,dynamo", CASES, ids=[f"{n}-{'dynamo' if d else 'legacy'}" for n, d in CASES])
def test_dead_channels_removed_outputs_unchanged(name: str, dynamo: bool, tmp_path: Path) -> None:
    model = _export(name, dynamo, tmp_path)
    probe = probe_shapes(model)
    planted, _ = plant_dead_channels(model, probe, 0.25, seed=3)
    zeros_before = _zeros(planted) - _zeros(model)
    result = npcompile.compile(planted, criterion="magnitude", threshold=0.0, target="onnx")
    out = result.model
    onnx.checker.check_model(out)
    assert result.report["summary"]["max_rel_diff"] <= 1e-4
    # an independent run on other inputs, batch 3 (dynamic batch kept)
    feeds = probe_inputs(planted, probe, batch=3, seed=11)
    v = compare(planted, out, feeds)
    assert v.max_rel_diff <= 1e-4
    zeros_after = _zeros(out) - _zeros(model)
    assert zeros_before > 0
    assert zeros_after <= 0.05 * zeros_before, (zeros_before, zeros_after)
    assert _params(out) < _params(planted)


RATIO = [(n, False) for n in DEAD + RATIO_ONLY] + [(n, True) for n in RATIO_ONLY if n in DYNAMO]


@pytest.mark.parametrize("name,dynamo", RATIO, ids=[f"{n}-{'dynamo' if d else 'legacy'}" for n, d in RATIO])
def test_ratio_gives_valid_smaller_model(name: str, dynamo: bool, tmp_path: Path) -> None:
    model = _export(name, dynamo, tmp_path)
    probe = probe_shapes(model)
    result = npcompile.compile(model, criterion="magnitude", ratio=0.3, target="onnx")
    out = result.model
    onnx.checker.check_model(out)
    feeds = probe_inputs(model, probe, batch=2, seed=5)
    v = compare(model, out, feeds)  # raises on a shape change or a model ORT cannot run
    assert np.isfinite(v.max_abs_diff)
    assert _params(out) < _params(model)
    frozen = result.report["frozen"]
    assert all(f["reasons"] for f in frozen)
