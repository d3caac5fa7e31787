"""Every zoo model exports to ONNX and runs in onnxruntime with PyTorch's numerics."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn
from zoo import ZOO, export, randomize_bn, resnet50

# resnet50 is full size (25.6M params) and only used by benchmarks.
SMALL = sorted(name for name in ZOO if name != "resnet50")
DYNAMO_SUBSET = [
    "mlp",
    "lenet",
    "resnet_basic",
    "mobilenet_v2",
    "densenet",
    "unet",
    "transformer_block",
]

RTOL = 1e-3
ATOL = 1e-4


def _build(name: str, seed: int = 0) -> nn.Module:
    builder, _ = ZOO[name]
    torch.manual_seed(seed)
    model = builder()
    randomize_bn(model, seed)
    return model.eval()


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _check_export(name: str, dynamo: bool, tmp_path: Path) -> None:
    model = _build(name)
    _, shape = ZOO[name]
    assert shape[0] == 2
    path = export(model, shape, tmp_path / f"{name}.onnx", dynamo=dynamo)

    # A single self-contained file: no external-data side files.
    assert sorted(os.listdir(tmp_path)) == [f"{name}.onnx"]
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["output"]
    for value in (proto.graph.input[0], proto.graph.output[0]):
        dim0 = value.type.tensor_type.shape.dim[0]
        assert dim0.dim_param and not dim0.HasField("dim_value"), (
            "batch dim not dynamic"
        )
    default_opset = 18 if dynamo else 13
    opsets = {o.domain: o.version for o in proto.opset_import}
    assert opsets.get("", opsets.get("ai.onnx")) == default_opset

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(1234)
    for batch in (2, 3):
        x = torch.randn(batch, *shape[1:], generator=gen)
        with torch.no_grad():
            expected = model(x).numpy()
        (got,) = session.run(None, {"input": x.numpy()})
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", SMALL)
def test_legacy_export_matches_torch(name: str, tmp_path: Path) -> None:
    _check_export(name, dynamo=False, tmp_path=tmp_path)


@pytest.mark.parametrize("name", DYNAMO_SUBSET)
def test_dynamo_export_matches_torch(name: str, tmp_path: Path) -> None:
    _check_export(name, dynamo=True, tmp_path=tmp_path)


@pytest.mark.parametrize("dynamo", [False, True])
def test_export_honours_opset(dynamo: bool, tmp_path: Path) -> None:
    path = export(
        _build("mlp"), ZOO["mlp"][1], tmp_path / "m.onnx", dynamo=dynamo, opset=17
    )
    opsets = {o.domain: o.version for o in onnx.load(path).opset_import}
    assert opsets.get("", opsets.get("ai.onnx")) == 17


@pytest.mark.parametrize("name", SMALL)
def test_small_and_deterministic(name: str) -> None:
    a, b = _build(name), _build(name)
    assert 0 < _n_params(a) < 2_000_000
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_randomize_bn_is_deterministic_and_not_identity() -> None:
    model = _build("resnet_basic", seed=0)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns
    for bn in bns:
        assert bn.running_var is not None and bn.running_mean is not None
        assert (bn.running_var > 0).all()
        assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
        assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
        assert not torch.allclose(bn.weight, torch.ones_like(bn.weight))
        assert not torch.allclose(bn.bias, torch.zeros_like(bn.bias))
    other = _build("resnet_basic", seed=0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, other.state_dict()[k]), k
    reseeded = randomize_bn(_build("resnet_basic", seed=0), seed=1)
    assert not torch.equal(reseeded.bn1.running_var, model.bn1.running_var)


def test_resnet50_matches_torchvision_shape() -> None:
    torch.manual_seed(0)
    model = resnet50().eval()
    # torchvision.models.resnet50() has exactly this many parameters.
    assert _n_params(model) == 25_557_032
    assert ZOO["resnet50"][1] == (2, 3, 224, 224)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 1000)
