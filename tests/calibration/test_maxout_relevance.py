"""Maxout relevance and maxout pruning on networks from both PyTorch exporters.

Every form of maxout (``amax``, ``max(dim)[0]``, ``torch.max(...).values``, keepdim, max_pool over
channels, ``torch.maximum`` over slices; FC and conv) is recognised; relevance counts equal a NumPy
reference; removing the neurons that never win leaves the output unchanged; removing neurons per
unit and whole units gives valid models with rewritten reshapes.
"""

from __future__ import annotations

from pathlib import Path

import maxnets
import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import npcompile
from npcompile.channels.rewrite import apply_removal
from npcompile.errors import PassError, UserError
from npcompile.graph.model_io import load_model
from npcompile.graph.shapes import probe_shapes
from npcompile.passes.maxout import MaxoutRelevancePass, MaxoutSelectPass
from npcompile.passes.prune import PrunePass
from npcompile.passes.select import SelectPass
from npcompile.pipeline import Context, Pipeline
from npcompile.runtime.data import Dataset
from npcompile.runtime.verify import make_session

TOL = 1e-4
CASES = [("fc", m) for m in maxnets.FC_MODES] + [("conv", m) for m in maxnets.CONV_MODES]


def _ids(cases):
    return [f"{k}-{m}-{'dynamo' if d else 'legacy'}" for k, m, d in cases]


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return make_session(model, threads=1).run(None, {"input": x})[0]


def _weights(model: onnx.ModelProto, op: str) -> list[np.ndarray]:
    """Weights (input 1) of the ``op`` nodes, in graph order."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return [inits[n.input[1]] for n in model.graph.node if n.op_type == op and n.input[1] in inits]


def _context(model: onnx.ModelProto) -> Context:
    return Context(model, probe_shapes(model))


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12))


FULL = [(k, m, d) for k, m in CASES for d in (False, True)]


@pytest.mark.parametrize("kind,mode,dynamo", FULL, ids=_ids(FULL))
def test_never_winning_neurons_removed_output_unchanged(kind, mode, dynamo, tmp_path: Path) -> None:
    net = maxnets.build(kind, mode)
    planted = maxnets.plant_losers(net)
    model = maxnets.export(net, dynamo, tmp_path)
    x = maxnets.data(net, 64)
    ctx = _context(model)
    analysis = ctx.analysis
    assert len(analysis.links) == len(net.producers), [g.frozen for g in analysis.groups]
    Pipeline([MaxoutRelevancePass(Dataset({"input": x}), batch_size=16),
              MaxoutSelectPass(per_unit=1)]).run(ctx)
    # exactly the planted losers are selected (they never win: relevance 0)
    for lk, mask in zip(analysis.links, planted, strict=True):
        gid = analysis.find(lk.neurons)
        assert ctx.scores[gid][mask].max() == 0 and ctx.scores[gid][~mask].min() > 0
        np.testing.assert_array_equal(ctx.removal[gid], mask)
    apply_removal(ctx.graph, analysis, ctx.removal)
    ctx.set_graph(ctx.graph)
    onnx.checker.check_model(ctx.model)
    assert _rel(_run(model, x), _run(ctx.model, x)) <= TOL
    # the producers lost one neuron per unit; the consumers are unchanged (units stay)
    op = "Gemm" if kind == "fc" else "Conv"
    rows = [w.shape[0] for w in _weights(ctx.model, op)[: len(net.producers)]]
    assert rows == [u * (k - 1) for u, k in zip(net.units, net.k, strict=True)]
    # a new batch size still runs (dynamic batch kept through the rewritten reshapes)
    assert _run(ctx.model, x[:3]).shape[0] == 3


def _reference_counts(pre: np.ndarray, k: int) -> np.ndarray:
    """Per neuron: how often it is the maximum of its unit, ties to the lowest index."""
    c = pre.shape[1]
    v = np.moveaxis(pre, 1, -1).reshape(-1, c // k, k)  # (positions, units, k)
    counts = np.zeros((c // k, k), np.int64)
    best = v.max(axis=2, keepdims=True)
    first = np.argmax(v == best, axis=2)  # first index reaching the maximum
    for u in range(c // k):
        counts[u] = np.bincount(first[:, u], minlength=k)
    return counts.ravel()


REF = [("fc", "amax", False), ("fc", "pool", True), ("conv", "max0", False), ("conv", "amax", True)]


@pytest.mark.parametrize("kind,mode,dynamo", REF, ids=_ids(REF))
def test_relevance_counts_equal_numpy_reference(kind, mode, dynamo, tmp_path: Path) -> None:
    net = maxnets.build(kind, mode, seed=5)
    model = maxnets.export(net, dynamo, tmp_path)
    x = maxnets.data(net, 150, seed=7)
    with torch.no_grad():
        pres = [p.numpy() for p in net.pre(torch.from_numpy(x))]
    ctx = _context(model)
    Pipeline([MaxoutRelevancePass(Dataset({"input": x}), batch_size=32)]).run(ctx)
    for lk, pre, k in zip(ctx.analysis.links, pres, net.k, strict=True):
        ref = _reference_counts(pre, k)
        got = ctx.scores[ctx.analysis.find(lk.neurons)]
        np.testing.assert_array_equal(got, ref)
        positions = pre.size // pre.shape[1]
        assert got.reshape(-1, k).sum(axis=1).tolist() == [positions] * (pre.shape[1] // k)


def test_ties_go_to_the_lowest_index() -> None:
    from npcompile.runtime.calibrate import WinCounts

    acc = WinCounts("t", 1, 3)
    acc.update({"t": np.array([[1.0, 1.0, 0.0, 2.0, 5.0, 5.0]], np.float32)})
    assert acc.counts.tolist() == [1, 0, 0, 0, 1, 0]


BOTH = [("fc", "amax", False), ("fc", "maximum", True), ("fc", "pool", False), ("conv", "values", True),
        ("conv", "pool_last", False), ("conv", "pool", True)]


@pytest.mark.parametrize("kind,mode,dynamo", BOTH, ids=_ids(BOTH))
def test_per_unit_and_whole_units(kind, mode, dynamo, tmp_path: Path) -> None:
    """One neuron per unit and one whole unit per layer go; the unit that goes is the one the next
    layer ignores, so the output is unchanged; reshapes / pool kernels follow."""
    net = maxnets.build(kind, mode)
    maxnets.plant_losers(net)
    for layer in range(len(net.producers)):
        maxnets.silence_unit(net, layer, unit=1)
    model = maxnets.export(net, dynamo, tmp_path)
    x = maxnets.data(net, 48)
    ctx = _context(model)
    Pipeline([MaxoutRelevancePass(Dataset({"input": x}), batch_size=16, units=True),
              MaxoutSelectPass(per_unit=1, units=1), PrunePass()]).run(ctx)
    pruned = ctx.model
    onnx.checker.check_model(pruned)
    assert _rel(_run(model, x), _run(pruned, x)) <= TOL
    op = "Gemm" if kind == "fc" else "Conv"
    w = _weights(pruned, op)
    for i, (u, k) in enumerate(zip(net.units, net.k, strict=True)):
        assert w[i].shape[0] == (u - 1) * (k - 1)  # producer: units-1 units of k-1 neurons
        assert w[i + 1].shape[1] == u - 1  # consumer: units-1 inputs
    # the maxout shapes follow: reshape targets hold (units-1, k-1), or pool kernels k-1
    ks = [int(a.ints[0]) for n in pruned.graph.node if n.op_type == "MaxPool"
          for a in n.attribute if a.name == "kernel_shape"]
    if "pool" in mode:
        assert ks == [k - 1 for k in net.k]
    # whole units alone (no per-unit removal) also give a valid, faithful model
    ctx = _context(model)
    Pipeline([MaxoutRelevancePass(Dataset({"input": x}), units=True), MaxoutSelectPass(per_unit=0, units=1),
              PrunePass()]).run(ctx)
    assert _rel(_run(model, x), _run(ctx.model, x)) <= TOL
    assert _weights(ctx.model, op)[0].shape[0] == (net.units[0] - 1) * net.k[0]


def test_down_to_one_neuron_per_unit(tmp_path: Path) -> None:
    """k - 1 steps at most: with k=3, two steps leave one neuron per unit (still valid)."""
    net = maxnets.build("conv", "amax")
    maxnets.plant_losers(net, per_unit=2)
    model = maxnets.export(net, False, tmp_path)
    x = maxnets.data(net, 32)
    ctx = _context(model)
    Pipeline([MaxoutRelevancePass(Dataset({"input": x})), MaxoutSelectPass(per_unit=5), PrunePass()]).run(ctx)
    assert _weights(ctx.model, "Conv")[0].shape[0] == net.units[0]
    assert _rel(_run(model, x), _run(ctx.model, x)) <= TOL


def test_threshold_zero_removes_never_winners_equally_per_unit(tmp_path: Path) -> None:
    """``select`` works on relevance: threshold 0 removes the never-winning neurons (the same
    number per unit); a ratio removes the same number from every unit."""
    net = maxnets.build("fc", "amax")
    planted = maxnets.plant_losers(net)
    model = maxnets.export(net, True, tmp_path)
    x = maxnets.data(net, 64)
    calib = Dataset({"input": x})
    ctx = _context(model)
    Pipeline([MaxoutRelevancePass(calib), SelectPass(threshold=0.0)]).run(ctx)
    got = [ctx.removal[ctx.analysis.find(lk.neurons)] for lk in ctx.analysis.links]
    for g, p in zip(got, planted, strict=True):
        np.testing.assert_array_equal(g, p)
    ctx = _context(model)
    Pipeline([MaxoutRelevancePass(calib), SelectPass(ratio=0.4), PrunePass()]).run(ctx)
    w = _weights(ctx.model, "Gemm")
    assert w[0].shape[0] == 4 * 2 and w[1].shape == (3 * 2, 4)  # k=3 loses floor(1.2), k=2 floor(0.8)


def test_dead_unit_removed_losslessly_but_zero_neuron_kept(tmp_path: Path) -> None:
    """A unit whose neurons are all zero is dead: the lossless default removes it with its
    neurons. A single zero neuron in a live unit still takes part in the maximum: it stays."""
    net = maxnets.build("fc", "values")
    with torch.no_grad():
        net.fc1.weight[3:6] = 0  # unit 1 of layer 1: all three neurons zero
        net.fc1.bias[3:6] = 0
        net.fc1.weight[0] = 0  # one zero neuron in unit 0
        net.fc1.bias[0] = 0
    model = maxnets.export(net, False, tmp_path)
    result = npcompile.compile(model, target="onnx")
    out = result.model
    x = maxnets.data(net, 20)
    assert _rel(_run(model, x), _run(out, x)) <= TOL
    w = _weights(out, "Gemm")
    assert w[0].shape[0] == 9 and w[1].shape[1] == 3
    # magnitude with threshold 0 agrees
    out = npcompile.compile(model, criterion="magnitude", threshold=0.0, target="onnx").model
    assert _weights(out, "Gemm")[0].shape[0] == 9


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_magnitude_ratio_prunes_maxout_per_unit_and_units(dynamo: bool, tmp_path: Path) -> None:
    net = maxnets.build("conv", "amax")
    model = maxnets.export(net, dynamo, tmp_path)
    out = npcompile.compile(model, criterion="magnitude", ratio=0.34, round_to=1, target="onnx").model
    onnx.checker.check_model(out)
    x = maxnets.data(net, 4)
    assert _run(out, x).shape == _run(model, x).shape
    assert _weights(out, "Conv")[0].shape[0] == 3 * 2  # 3 of 4 units, 2 of 3 neurons each


def test_batch_size_does_not_change_relevance(tmp_path: Path) -> None:
    net = maxnets.build("conv", "pool_last")
    model = maxnets.export(net, False, tmp_path)
    calib = Dataset({"input": maxnets.data(net, 130)})
    scores = []
    for bs in (7, 64):
        ctx = _context(model)
        Pipeline([MaxoutRelevancePass(calib, batch_size=bs, units=True)]).run(ctx)
        scores.append(ctx.scores)
    assert scores[0].keys() == scores[1].keys() and len(scores[0]) == 2
    links = ctx.analysis.links
    neurons, units = ctx.analysis.find(links[0].neurons), ctx.analysis.find(links[0].units)
    np.testing.assert_array_equal(scores[0][neurons], scores[1][neurons])  # win counts: identical
    np.testing.assert_allclose(scores[0][units], scores[1][units], rtol=1e-6, atol=0)  # mean |unit output|


def test_needs_calibration_data_and_unit_scores(tmp_path: Path) -> None:
    net = maxnets.build("fc", "amax")
    model = maxnets.export(net, False, tmp_path)
    with pytest.raises(PassError, match="needs calibration data"):
        Pipeline([MaxoutRelevancePass()]).run(_context(model))
    ctx = _context(model)
    calib = Dataset({"input": maxnets.data(net, 8)})
    with pytest.raises(PassError, match="units=True"):
        Pipeline([MaxoutRelevancePass(calib), MaxoutSelectPass(units=1)]).run(ctx)
    with pytest.raises(UserError):
        MaxoutSelectPass(per_unit=-1)


def test_no_maxout_scores_nothing(tmp_path: Path) -> None:
    import zoo

    path = tmp_path / "mlp.onnx"
    zoo.export(zoo.mlp(), zoo.ZOO["mlp"][1], path, dynamo=False)
    model = load_model(path)
    ctx = _context(model)
    calib = Dataset({"input": np.zeros((2, *zoo.ZOO["mlp"][1][1:]), np.float32)})
    Pipeline([MaxoutRelevancePass(calib)]).run(ctx)
    assert ctx.scores == {} and "no prunable maxout" in ctx.results["maxout"].summary
