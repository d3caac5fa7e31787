"""Channels that meet in slices and recurrent units (issue 12), on structures from the zoo exported by
both PyTorch exporters: YOLOv8 / YOLO11 (C2f, C3k2, SPPF, Detect with DFL), GLU, nn.LSTM / nn.GRU
(bidirectional, two layers, batch-first and time-major), an unrolled LSTM cell, grouped
ConvTranspose and a reflect-padded audio front end with a dynamic length.

For each: almost every hidden channel is prunable (groups pinned by graph outputs aside), planted
dead channels are removed with outputs unchanged at another batch size, ``--ratio 0.3`` gives a
valid smaller model, and the written model is never larger than the input.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import zoo
from onnx import numpy_helper

import npcompile
from npcompile.graph.model_io import load_model
from npcompile.graph.shapes import probe_shapes
from npcompile.pipeline import Context
from npcompile.runtime.verify import compare, probe_inputs
from npcompile.testing import plant_dead_channels

MODELS = ["yolov8", "yolo11", "glu_net", "lstm_net", "lstm_net_time_major", "gru_net", "gru_net_time_major",
          "unrolled_lstm", "grouped_deconv_net", "audio_front_end"]
CASES = [(n, d) for n in MODELS for d in (False, True)]
IDS = [f"{n}-{'dynamo' if d else 'legacy'}" for n, d in CASES]


def _export(name: str, dynamo: bool, tmp: Path) -> onnx.ModelProto:
    torch.manual_seed(0)
    builder, shape = zoo.ZOO[name]
    path = tmp / f"{name}.onnx"
    zoo.export(zoo.randomize_bn(builder(), 0), shape, str(path), dynamo=dynamo)
    return load_model(path)


def prunable_share(model: onnx.ModelProto) -> tuple[float, list[str]]:
    """Share of hidden channels (in groups not pinned by a graph output) that are prunable."""
    analysis = Context(model, probe_shapes(model)).analysis
    total = prunable = 0
    frozen: list[str] = []
    for g in analysis.groups:
        if any("reaches graph output" in r for r in g.frozen):
            continue
        total += g.size
        if g.prunable:
            prunable += g.size
        elif g.frozen:
            frozen.append(f"{g.name} ({g.size}): {g.frozen[0]}")
    return prunable / max(total, 1), frozen


def _zeros(model: onnx.ModelProto) -> int:
    return sum(int((numpy_helper.to_array(t) == 0).sum()) for t in model.graph.initializer
               if t.data_type == onnx.TensorProto.FLOAT)


@pytest.mark.parametrize("name,dynamo", CASES, ids=IDS)
def test_hidden_channels_prunable(name: str, dynamo: bool, tmp_path: Path) -> None:
    share, frozen = prunable_share(_export(name, dynamo, tmp_path))
    assert share >= 0.95, frozen


@pytest.mark.parametrize("name,dynamo", CASES, ids=IDS)
def test_planted_dead_channels_removed_exactly(name: str, dynamo: bool, tmp_path: Path) -> None:
    model = _export(name, dynamo, tmp_path)
    probe = probe_shapes(model)
    planted, _ = plant_dead_channels(model, probe, 0.25, seed=3)
    zeros_before = _zeros(planted) - _zeros(model)
    result = npcompile.compile(planted, criterion="magnitude", threshold=0.0, target="onnx")
    onnx.checker.check_model(result.model, full_check=True)
    feeds = probe_inputs(planted, probe, batch=3, seed=11)
    assert compare(planted, result.model, feeds).max_rel_diff <= 1e-4
    assert zeros_before > 0
    assert _zeros(result.model) - _zeros(model) <= 0.05 * zeros_before
    assert result.model.ByteSize() < planted.ByteSize()


@pytest.mark.parametrize("name,dynamo", CASES, ids=IDS)
def test_ratio_valid_and_never_larger(name: str, dynamo: bool, tmp_path: Path) -> None:
    model = _export(name, dynamo, tmp_path)
    result = npcompile.compile(model, criterion="magnitude", ratio=0.3, target="onnx")
    onnx.checker.check_model(result.model, full_check=True)
    assert result.report["summary"]["param_reduction"] > 0.2
    assert result.model.ByteSize() <= model.ByteSize()
    probe = probe_shapes(model)
    feeds = probe_inputs(model, probe, batch=3, seed=5)
    assert np.isfinite(compare(model, result.model, feeds).max_abs_diff)  # runs at another batch size


def test_c2f_shortcut_couples_the_second_half_only(tmp_path: Path) -> None:
    """In C2f the bottleneck's residual Add couples the second half of cv1's output with the
    bottleneck's conv; the first half is a group of its own."""
    model = _export("yolov8", False, tmp_path)
    analysis = Context(model, probe_shapes(model)).analysis
    cv1 = [g for g in analysis.groups if any(m.startswith("/b2/cv1/") for m in g.members)]
    assert len(cv1) == 2, [(g.name, g.members) for g in cv1]
    first, second = sorted(cv1, key=lambda g: g.name)
    assert first.prunable and second.prunable
    assert any(m.startswith("/b2/m.0/cv2/") for m in second.members)
    assert not any(m.startswith("/b2/m.0/cv2/") for m in first.members)


def test_glu_halves_couple_index_by_index(tmp_path: Path) -> None:
    """GLU: channel i of the gate half is removed with channel i of the value half."""
    model = _export("glu_net", False, tmp_path)
    result = npcompile.compile(model, criterion="magnitude", ratio=0.5, target="onnx", round_to=1)
    convs = {n.name: n for n in result.model.graph.node if n.op_type == "Conv"}
    inits = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    c1 = next(n for name, n in convs.items() if "c1" in name)
    c2 = next(n for name, n in convs.items() if "c2" in name)
    assert inits[c1.input[1]].shape[0] == 2 * inits[c2.input[1]].shape[1]


def test_shared_initializer_pruned_once(tmp_path: Path) -> None:
    """The unrolled cell reads the same weights at every step: they stay one initializer."""
    model = _export("unrolled_lstm", False, tmp_path)
    result = npcompile.compile(model, criterion="magnitude", ratio=0.3, target="onnx")
    uses: dict[str, int] = {}
    for n in result.model.graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    names = {t.name for t in result.model.graph.initializer}
    assert not any("_npc0" in n or "_npc1" in n for n in names), sorted(names)
    assert max(uses[n] for n in names if n in uses) >= 4


@pytest.mark.parametrize("cell", ["lstm_net", "gru_net"])
def test_recurrent_units_rewrite_hidden_size(cell: str, tmp_path: Path) -> None:
    model = _export(cell, False, tmp_path)
    result = npcompile.compile(model, criterion="magnitude", ratio=0.5, target="onnx", round_to=1)
    sizes = [a.i for n in result.model.graph.node if n.op_type in ("LSTM", "GRU") for a in n.attribute
             if a.name == "hidden_size"]
    assert sizes == [5, 5]
