"""APoZ and mean |activation| scores equal NumPy references on what each group's consumers read;
dead channels score exactly 0, so threshold 0 removes exactly them; batch size does not matter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import zoo
from torch import nn

from npcompile.errors import PassError, UserError
from npcompile.graph.model_io import load_model
from npcompile.graph.shapes import probe_shapes
from npcompile.passes.activation import ActivationPass, ApozPass, MeanAbsPass
from npcompile.passes.prune import PrunePass
from npcompile.passes.select import SelectPass
from npcompile.pipeline import Context, Pipeline, get_pass
from npcompile.runtime.data import Dataset
from npcompile.runtime.verify import make_session


class Net(nn.Module):
    """conv1 is read by conv2 and conv3 (the same tensor); conv2 reaches fc1 through a MaxPool
    and a Flatten (C·H·W blocks); conv3 through a global pool; fc1 by fc2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 5, 1)
        self.fc1 = nn.Linear(6 * 3 * 3, 10)
        self.fc2 = nn.Linear(10, 4)
        self.fc3 = nn.Linear(5, 4)

    def reads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the consumers of each layer's channels read, channels on axis 1."""
        a = torch.relu(self.conv1(x))
        b = nn.functional.max_pool2d(torch.relu(self.conv2(a)), 2)
        c = torch.relu(self.conv3(a)).mean(dim=(2, 3))
        h = torch.relu(self.fc1(torch.flatten(b, 1)))
        return {"conv1": a, "conv2": b, "conv3": c, "fc1": h}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.reads(x)
        return self.fc2(r["fc1"]) + self.fc3(r["conv3"])


def _net() -> Net:
    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        net.conv1.weight[2] = 0  # dead: zero wherever it is read
        net.conv1.bias[2] = 0
        net.conv2.bias[1] = -100.0  # always zero after ReLU on this data, but not provably dead
    return net


def _model(net: Net, dynamo: bool, tmp: Path) -> onnx.ModelProto:
    path = tmp / f"net_{int(dynamo)}.onnx"
    zoo.export(net, (2, 3, 6, 6), path, dynamo=dynamo)
    return load_model(path)


def _data(n: int = 40) -> np.ndarray:
    return np.random.default_rng(3).standard_normal((n, 3, 6, 6)).astype(np.float32)


def _reference(net: Net, x: np.ndarray, criterion: str) -> dict[str, np.ndarray]:
    with torch.no_grad():
        reads = {k: v.numpy().astype(np.float64) for k, v in net.reads(torch.from_numpy(x)).items()}
    out = {}
    for name, a in reads.items():
        per = np.moveaxis(a, 1, 0).reshape(a.shape[1], -1)
        out[name] = 1.0 - (per == 0).mean(axis=1) if criterion == "apoz" else np.abs(per).mean(axis=1)
    return out


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
@pytest.mark.parametrize("criterion", ["apoz", "mean_abs"])
def test_scores_equal_numpy_reference(criterion: str, dynamo: bool, tmp_path: Path) -> None:
    net = _net()
    model = _model(net, dynamo, tmp_path)
    x = _data()
    ctx = Context(model, probe_shapes(model))
    Pipeline([ActivationPass(Dataset({"input": x}), criterion=criterion, batch_size=16)]).run(ctx)
    ref = _reference(net, x, criterion)
    assert len(ctx.scores) == 4  # conv1, conv2, conv3, fc1 (fc2 and fc3 reach the output)
    by_size = {ctx.analysis.group(gid).size: (ctx.analysis.group(gid), s) for gid, s in ctx.scores.items()}
    for name, size in (("conv1", 8), ("conv2", 6), ("conv3", 5), ("fc1", 10)):
        g, s = by_size[size]
        expect = np.where(g.dead, 0.0, np.maximum(ref[name], np.finfo(np.float64).tiny))
        tol = 0 if criterion == "apoz" else 1e-5  # ORT against torch activations
        np.testing.assert_allclose(s, expect, rtol=tol, atol=0, err_msg=name)
    conv1, conv2 = by_size[8][1], by_size[6][1]
    assert conv1[2] == 0.0 and (np.delete(conv1, 2) > 0).all()  # dead: exactly 0
    if criterion == "apoz":
        assert 0.0 < conv2[1] < 1e-300  # always zero here, but not provably: above 0


@pytest.mark.parametrize("name", ["apoz", "mean-abs"])
def test_threshold_zero_removes_exactly_the_dead(name: str, tmp_path: Path) -> None:
    net = _net()
    model = _model(net, False, tmp_path)
    x = _data()
    ctx = Context(model, probe_shapes(model))
    Pipeline([get_pass(name)(Dataset({"input": x})), SelectPass(threshold=0.0)]).run(ctx)
    assert {ctx.analysis.group(g).size: m.nonzero()[0].tolist() for g, m in ctx.removal.items()} == {8: [2]}
    Pipeline([PrunePass()]).run(ctx)
    before = make_session(model).run(None, {"input": x})[0]
    after = make_session(ctx.model).run(None, {"input": x})[0]
    assert np.abs(before - after).max() <= 1e-4 * np.abs(before).max()


def test_ratio_gives_a_valid_model(tmp_path: Path) -> None:
    model = _model(_net(), True, tmp_path)
    x = _data()
    ctx = Context(model, probe_shapes(model))
    Pipeline([MeanAbsPass(Dataset({"input": x})), SelectPass(ratio=0.5), PrunePass()]).run(ctx)
    onnx.checker.check_model(ctx.model)
    assert make_session(ctx.model).run(None, {"input": x[:3]})[0].shape == (3, 4)


def test_batch_size_does_not_change_statistics(tmp_path: Path) -> None:
    model = _model(_net(), False, tmp_path)
    calib = Dataset({"input": _data(130)})
    runs = []
    for bs in (7, 64):
        for cls in (ApozPass, MeanAbsPass):
            ctx = Context(model, probe_shapes(model))
            Pipeline([cls(calib, batch_size=bs)]).run(ctx)
            runs.append(ctx.scores)
    apoz, mean_abs = (runs[0], runs[2]), (runs[1], runs[3])
    for a, b in (apoz, mean_abs):
        assert a.keys() == b.keys() and len(a) == 4
    for gid in apoz[0]:  # zero counts: identical
        np.testing.assert_array_equal(apoz[0][gid], apoz[1][gid])
    for gid in mean_abs[0]:  # |x| sums: the same up to float32 rounding of per-row sums
        np.testing.assert_allclose(mean_abs[0][gid], mean_abs[1][gid], rtol=1e-6, atol=0)


def test_needs_calibration_data_and_a_known_criterion(tmp_path: Path) -> None:
    model = _model(_net(), False, tmp_path)
    with pytest.raises(PassError, match="needs calibration data"):
        Pipeline([ApozPass()]).run(Context(model, probe_shapes(model)))
    with pytest.raises(UserError, match="criterion"):
        ActivationPass(criterion="median")
    assert ActivationPass(criterion="mean-abs").criterion == "mean_abs"


def test_data_shape_must_match_the_analysis(tmp_path: Path) -> None:
    model = _model(_net(), False, tmp_path)
    ctx = Context(model, probe_shapes(model))
    bad = Dataset({"input": np.zeros((4, 3, 8, 8), np.float32)})
    with pytest.raises(PassError, match="input_shapes input:1x3x8x8") as e:
        Pipeline([ApozPass(bad)]).run(ctx)
    assert e.value.exit_code == 2


def test_nonnegative_tensors_are_recognised(tmp_path: Path) -> None:
    from npcompile.runtime.calibrate import group_inputs, nonnegative

    model = _model(_net(), False, tmp_path)
    analysis = Context(model, probe_shapes(model)).analysis
    reads = {name for g in analysis.prunable_groups() for name, _ in group_inputs(analysis, g)}
    assert reads and all(nonnegative(analysis, name) for name in reads)  # ReLU outputs, pooled, flattened
    convs = [n.outputs[0].name for n in analysis.graph.nodes if n.op == "Conv"]
    assert not any(nonnegative(analysis, name) for name in convs)
