"""The masked model (one session, channel masks as inputs) gives the outputs of the really pruned
model for any removal, on real architectures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import zoo
from searchkit import random_removal

from npcompile.channels.masked import MaskedModel
from npcompile.channels.rewrite import apply_removal
from npcompile.graph.model_io import load_model
from npcompile.graph.shapes import probe_shapes
from npcompile.pipeline import Context
from npcompile.runtime.verify import make_session, probe_inputs

MODELS = ["resnet_basic", "mobilenet_v2", "densenet", "vgg", "se_block_net", "grouped_conv_net", "unet"]
CASES = [(n, False) for n in MODELS] + [("mobilenet_v2", True)]


def _export(name: str, tmp: Path, dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(0)
    builder, shape = zoo.ZOO[name]
    path = tmp / f"{name}.onnx"
    zoo.export(zoo.randomize_bn(builder(), 0), shape, str(path), dynamo=dynamo)
    return load_model(path)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b))) / max(float(np.max(np.abs(a))), 1e-12)


@pytest.mark.parametrize("name,dynamo", CASES, ids=[f"{n}-{'dynamo' if d else 'legacy'}" for n, d in CASES])
def test_masked_equals_deleted(name: str, dynamo: bool, tmp_path: Path) -> None:
    model = _export(name, tmp_path, dynamo)
    probe = probe_shapes(model)
    feeds = probe_inputs(model, probe, batch=3, seed=5)
    rng = np.random.default_rng(7)
    ctx = Context(model, probe)
    masked = MaskedModel.from_context(ctx)
    assert masked.masks, "no consumer was masked"
    # no removal: the masked model is the original
    plain = make_session(model).run(None, feeds)
    for a, b in zip(plain, masked.run(feeds, {}), strict=True):
        assert _rel(a, b) <= 1e-5
    for trial in range(3):
        ctx = Context(model, probe)
        removal = random_removal(ctx, rng)
        assert removal
        got = masked.run(feeds, removal)
        apply_removal(ctx.graph, ctx.analysis, removal)
        ctx.set_graph(ctx.graph)
        want = make_session(ctx.model).run(None, feeds)
        for a, b in zip(want, got, strict=True):
            assert a.shape == b.shape
            assert _rel(a, b) <= 1e-4, (name, trial)
        assert max(_rel(a, b) for a, b in zip(plain, got, strict=True)) > 1e-3  # the removal mattered
    # the built-in self-check agrees, and leaves the model alone
    assert masked.max_rel_diff(removal, feeds) <= 1e-4


def test_masks_only_requested_groups(tmp_path: Path) -> None:
    model = _export("vgg", tmp_path)
    ctx = Context(model, probe_shapes(model))
    groups = ctx.analysis.prunable_groups()
    one = MaskedModel.from_context(ctx, groups=[groups[0].id])
    full = MaskedModel.from_context(ctx)
    assert 0 < len(one.masks) < len(full.masks)
    with pytest.raises(ValueError, match="not masked"):
        one.feeds({groups[1].id: np.eye(1, groups[1].size, dtype=bool)[0]})
    frozen = [g for g in ctx.analysis.groups if not g.prunable]
    if frozen:
        with pytest.raises(ValueError, match="frozen"):
            MaskedModel.from_context(ctx, groups=[frozen[0].id])


class MaxoutMLP(torch.nn.Module):
    """Two maxout layers (``view(n, units, k).amax(-1)`` and ``.max(-1)[0]``)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = torch.nn.Linear(16, 24), torch.nn.Linear(8, 12), torch.nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        h = self.fc1(x).view(n, 8, 3).amax(-1)
        return self.fc3(self.fc2(h).view(n, 4, 3).max(-1)[0])


class MaxoutCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = torch.nn.Conv2d(3, 12, 3, padding=1), torch.nn.Conv2d(4, 8, 3)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        y = self.c2(self.c1(x).view(n, 4, 3, h, w).amax(2))
        return self.fc(y.mean((2, 3)))


@pytest.mark.parametrize("cls,shape", [(MaxoutMLP, (2, 16)), (MaxoutCNN, (2, 3, 8, 8))])
def test_maxout_neurons_masked_before_the_maximum(cls, shape, tmp_path: Path) -> None:
    """A neuron removed from a maxout unit must lose every maximum: the masked model adds a very
    negative number in front of the maximum (a Mul by 0 would not do)."""
    torch.manual_seed(0)
    path = tmp_path / "maxout.onnx"
    zoo.export(cls(), shape, str(path), dynamo=False)
    model = load_model(path)
    probe = probe_shapes(model)
    ctx = Context(model, probe)
    if not getattr(ctx.analysis, "links", None):
        pytest.skip("no maxout rule")
    masked = MaskedModel.from_context(ctx)
    assert any(m.additive for m in masked.masks)
    feeds = probe_inputs(model, probe, batch=3, seed=1)
    rng = np.random.default_rng(0)
    for _ in range(4):
        ctx = Context(model, probe)
        removal = random_removal(ctx, rng, share=0.8)
        got = masked.run(feeds, removal)
        apply_removal(ctx.graph, ctx.analysis, removal)
        ctx.set_graph(ctx.graph)
        for a, b in zip(make_session(ctx.model).run(None, feeds), got, strict=True):
            assert _rel(a, b) <= 1e-4
