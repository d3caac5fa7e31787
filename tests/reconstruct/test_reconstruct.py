"""Training-free recovery: least-squares reconstruction equals NumPy lstsq references (Gemm, Conv
with padding and stride, MatMul on rank-3 inputs, grouped Conv) and reduces the layer error;
streamed normal equations do not depend on the batch size and never hold the activations; bias
compensation is exact for constant channels; BatchNorm re-estimation equals NumPy statistics;
reconstruction-aware selection finds a redundant channel that magnitude misses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from nets import context, conv, gemm, group_of, model, run
from onnx import helper

from npcompile.errors import UserError
from npcompile.passes.prune import PrunePass
from npcompile.passes.reconstruct import (
    BatchNormRecalibratePass,
    BiasCompensatePass,
    ReconstructPass,
    ReconstructSelectPass,
)
from npcompile.pipeline import Pipeline
from npcompile.recovery.reconstruction import LayerStats, removal_layers, sample_positions, stream
from npcompile.runtime.calibrate import Calibrator
from npcompile.runtime.data import Dataset

RNG = np.random.default_rng(0)


def _weights(m: onnx.ModelProto, node: str) -> list[np.ndarray]:
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}
    n = next(n for n in m.graph.node if n.name == node)
    return [inits[i] for i in n.input[1:] if i in inits]


def _lstsq(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sol = np.linalg.lstsq(np.c_[x, np.ones(len(x))], y, rcond=None)[0]
    return sol[:-1], sol[-1]


def _im2col(x: np.ndarray, k: int, stride: int, pad: int) -> np.ndarray:
    """Plain-loop im2col: rows (n, oi, oj), columns (c, ki, kj)."""
    n, c, h, w = x.shape
    xp = np.pad(x, [(0, 0), (0, 0), (pad, pad), (pad, pad)])
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    rows = []
    for b in range(n):
        for i in range(ho):
            for j in range(wo):
                rows.append(xp[b, :, i * stride:i * stride + k, j * stride:j * stride + k].ravel())
    return np.asarray(rows)


# -- networks ------------------------------------------------------------------------------------

def _gemm_net():
    inits = {"g1.w": RNG.normal(size=(6, 8)), "g1.b": RNG.normal(size=8), "g2.w": RNG.normal(size=(8, 5)),
             "g2.b": RNG.normal(size=5)}
    nodes = [gemm("g1", "x", "h"), helper.make_node("Relu", ["h"], ["r"]), gemm("g2", "r", "y")]
    return model(nodes, inits, (2, 6)), inits


def _conv_net(k2: int = 3, pad2: int = 1, stride2: int = 2, group2: int = 1, c1: int = 6):
    inits = {"c1.w": RNG.normal(size=(c1, 3, 3, 3)), "c1.b": RNG.normal(size=c1) * 0.3,
             "c2.w": RNG.normal(size=(5 * group2 if group2 > 1 else 5, c1 // group2, k2, k2)),
             "c2.b": RNG.normal(size=5 * group2 if group2 > 1 else 5)}
    nodes = [conv("c1", "x", "h", pads=[1, 1, 1, 1]), helper.make_node("Relu", ["h"], ["r"]),
             conv("c2", "r", "y", pads=[pad2] * 4, strides=[stride2] * 2, group=group2)]
    return model(nodes, inits, (2, 3, 9, 9)), inits


# -- least squares -------------------------------------------------------------------------------

def test_gemm_refit_equals_lstsq_and_reduces_error() -> None:
    m, w = _gemm_net()
    x = RNG.normal(size=(300, 6)).astype(np.float32)
    ctx = context(m)
    mask = np.zeros(8, bool)
    mask[[1, 4, 6]] = True
    ctx.removal = {group_of(ctx, "g1"): mask}
    Pipeline([ReconstructPass(Dataset({"x": x}), ridge=0.0, batch_size=64)]).run(ctx)
    r = np.maximum(x.astype(np.float64) @ w["g1.w"] + w["g1.b"], 0)
    ref_w, ref_b = _lstsq(r[:, ~mask], r @ w["g2.w"])
    new_w, new_b = _weights(ctx.model, "g2")
    np.testing.assert_allclose(new_w, ref_w, atol=2e-5)
    np.testing.assert_allclose(new_b, ref_b + w["g2.b"], atol=2e-5)
    row = ctx.report_extras["reconstruction"]["layers"][0]
    assert row["applied"] == "refit" and row["error_after"] < row["error_bias_only"] < row["error_before"]
    # the reported errors are those of the models: plain pruning against the refit one
    y_ref = run(m, x)[0]
    y_new = run(ctx.model, x)[0]
    yb = (r @ w["g2.w"] + w["g2.b"])
    assert np.isclose(((y_new - y_ref) ** 2).sum() / (yb ** 2).sum(), row["error_after"], rtol=1e-3)
    plain = context(m)
    plain.removal = {group_of(plain, "g1"): mask}
    PrunePass().run(plain)
    assert np.isclose(((run(plain.model, x)[0] - y_ref) ** 2).sum() / (yb ** 2).sum(), row["error_before"], rtol=1e-3)


def test_conv_refit_equals_lstsq_on_im2col() -> None:
    m, w = _conv_net(k2=3, pad2=1, stride2=2)
    x = RNG.normal(size=(40, 3, 9, 9)).astype(np.float32)
    ctx = context(m)
    mask = np.zeros(6, bool)
    mask[[0, 3]] = True
    ctx.removal = {group_of(ctx, "c1"): mask}
    ReconstructPass(Dataset({"x": x}), ridge=0.0, positions=0, batch_size=16).run(ctx)
    r = run(m, x, ["r"])[0].astype(np.float64)
    cols = _im2col(r, 3, 2, 1)  # [rows, 6*9]
    y = cols @ w["c2.w"].reshape(5, -1).T
    keep_cols = np.repeat(~mask, 9)
    ref_w, ref_b = _lstsq(cols[:, keep_cols], y)
    new_w, new_b = _weights(ctx.model, "c2")
    np.testing.assert_allclose(new_w.reshape(5, -1).T, ref_w, atol=1e-4)
    np.testing.assert_allclose(new_b, ref_b + w["c2.b"], atol=1e-4)


def test_grouped_conv_refit_per_group() -> None:
    m, w = _conv_net(k2=3, pad2=1, stride2=1, group2=2, c1=8)
    x = RNG.normal(size=(20, 3, 9, 9)).astype(np.float32)
    ctx = context(m)
    mask = np.zeros(8, bool)
    mask[[1, 6]] = True  # one channel in each of the two blocks
    ctx.removal = {group_of(ctx, "c1"): mask}
    ReconstructPass(Dataset({"x": x}), ridge=0.0, positions=0, batch_size=8).run(ctx)
    r = run(m, x, ["r"])[0].astype(np.float64)
    new_w, new_b = _weights(ctx.model, "c2")
    assert new_w.shape == (10, 3, 3, 3)
    for b in range(2):
        cols = _im2col(r[:, 4 * b:4 * b + 4], 3, 1, 1)
        y = cols @ w["c2.w"][5 * b:5 * b + 5].reshape(5, -1).T
        keep = np.repeat(~mask[4 * b:4 * b + 4], 9)
        ref_w, ref_b = _lstsq(cols[:, keep], y)
        np.testing.assert_allclose(new_w[5 * b:5 * b + 5].reshape(5, -1).T, ref_w, atol=1e-4)
        np.testing.assert_allclose(new_b[5 * b:5 * b + 5], ref_b + w["c2.b"][5 * b:5 * b + 5], atol=1e-4)


def test_matmul_rank3_refit_adds_a_bias() -> None:
    w1, w2 = RNG.normal(size=(6, 8)), RNG.normal(size=(8, 5))
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="m1"), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="m2")]
    m = model(nodes, {"w1": w1, "w2": w2}, (2, 4, 6))
    x = RNG.normal(size=(50, 4, 6)).astype(np.float32)
    ctx = context(m)
    mask = np.zeros(8, bool)
    mask[[2, 5]] = True
    ctx.removal = {group_of(ctx, "m1"): mask}
    ReconstructPass(Dataset({"x": x}), ridge=0.0, positions=0).run(ctx)
    r = np.maximum(x.astype(np.float64) @ w1, 0).reshape(-1, 8)
    ref_w, ref_b = _lstsq(r[:, ~mask], r @ w2)
    assert "Add" in [n.op_type for n in ctx.model.graph.node]
    np.testing.assert_allclose(_weights(ctx.model, "m2")[0], ref_w, atol=2e-5)
    y = run(ctx.model, x)[0].reshape(-1, 5)
    np.testing.assert_allclose(y, r[:, ~mask] @ ref_w + ref_b, atol=1e-4)


def test_ridge_and_sampling_still_reduce_the_error() -> None:
    m, _ = _conv_net()
    x = RNG.normal(size=(60, 3, 9, 9)).astype(np.float32)
    ctx = context(m)
    mask = np.zeros(6, bool)
    mask[[1, 2, 5]] = True
    ctx.removal = {group_of(ctx, "c1"): mask}
    Pipeline([ReconstructPass(Dataset({"x": x}), ridge=1e-2, positions=4)]).run(ctx)
    row = ctx.report_extras["reconstruction"]["layers"][0]
    assert row["rows"] == 60 * 4
    assert row["error_after"] < 0.7 * row["error_before"]
    held = RNG.normal(size=(30, 3, 9, 9)).astype(np.float32)  # on data it did not see, too
    plain = context(m)
    plain.removal = {group_of(plain, "c1"): mask}
    PrunePass().run(plain)
    ref = run(m, held)[0]
    assert ((run(ctx.model, held)[0] - ref) ** 2).sum() < ((run(plain.model, held)[0] - ref) ** 2).sum()


# -- streaming -----------------------------------------------------------------------------------

def _stats(m: onnx.ModelProto, x: np.ndarray, batch: int, positions: int) -> LayerStats:
    ctx = context(m)
    mask = np.zeros(6, bool)
    mask[[0, 4]] = True
    layer = removal_layers(ctx.analysis, {group_of(ctx, "c1"): mask})[0]
    layer.in_keep = np.arange(6)  # read the unpruned input
    layer.kept_blocks = np.zeros(1, np.int64)
    acc = LayerStats(layer, "r", "y", positions)
    cal = Calibrator(m, ["r", "y"], batch)

    def fold(first, values):
        acc.update(first, values[0]["r"], values[0]["y"], values[0]["y"].shape)

    stream(Dataset({"x": x}), batch, [(cal, ["r", "y"])], fold)
    return acc


def test_streamed_normal_equations_do_not_depend_on_batch_size_and_stay_small() -> None:
    m, _ = _conv_net()
    x = RNG.normal(size=(150, 3, 9, 9)).astype(np.float32)
    a, b = _stats(m, x, 7, 5), _stats(m, x, 64, 5)
    assert a.n == b.n == 150 * 5
    for k, v in a.arrays().items():
        np.testing.assert_allclose(v, b.arrays()[k], rtol=1e-10, atol=1e-9, err_msg=k)
    # memory: sums only, d = 6*9 columns and 5 outputs, whatever the number of samples
    d, o = 54, 5
    shapes = {k: v.shape for k, v in a.arrays().items()}
    assert shapes == {"sx": (1, d), "sxx": (1, d, d), "sy": (1, o), "sxy": (1, d, o), "syy": (1,)}
    held = [v for v in vars(a).values() if isinstance(v, np.ndarray)]
    assert sum(v.size for v in held) == d + d * d + o + d * o + 1


def test_sampled_positions_are_a_function_of_the_sample() -> None:
    n_a, p_a = sample_positions(0, 10, 49, 6, salt=3)
    parts = [sample_positions(s, 3 if s < 9 else 1, 49, 6, salt=3) for s in (0, 3, 6, 9)]
    p_b = np.concatenate([p for _, p in parts])
    np.testing.assert_array_equal(p_a, p_b)
    assert all(len(set(p_a[i * 6:(i + 1) * 6])) == 6 for i in range(10))  # without replacement


# -- bias compensation ---------------------------------------------------------------------------

@pytest.mark.parametrize("consumer", ["conv1x1", "conv3x3_valid", "gemm"])
def test_bias_compensation_is_exact_for_a_constant_channel(consumer: str) -> None:
    w1, b1 = RNG.normal(size=(4, 3, 3, 3)), RNG.normal(size=4)
    w1[2], b1[2] = 0.0, 0.7  # channel 2: relu(0.7) everywhere
    inits = {"c1.w": w1, "c1.b": b1}
    nodes = [conv("c1", "x", "h", pads=[1, 1, 1, 1]), helper.make_node("Relu", ["h"], ["r"])]
    if consumer == "gemm":
        nodes += [helper.make_node("Flatten", ["r"], ["f"]), gemm("c2", "f", "y", transB=1)]
        inits |= {"c2.w": RNG.normal(size=(5, 4 * 8 * 8)), "c2.b": RNG.normal(size=5)}
    else:
        k = 1 if consumer == "conv1x1" else 3
        nodes.append(conv("c2", "r", "y", bias=False))  # no bias: one is created
        inits["c2.w"] = RNG.normal(size=(5, 4, k, k))
    m = model(nodes, inits, (2, 3, 8, 8))
    x = RNG.normal(size=(20, 3, 8, 8)).astype(np.float32)
    mask = np.array([False, False, True, False])
    ctx = context(m)
    assert not ctx.analysis.group(group_of(ctx, "c1")).dead.any()  # constant, not dead
    ctx.removal = {group_of(ctx, "c1"): mask}
    BiasCompensatePass(Dataset({"x": x[:7]})).run(ctx)
    ref = run(m, x)[0]
    np.testing.assert_allclose(run(ctx.model, x)[0], ref, atol=1e-4 * np.abs(ref).max())
    plain = context(m)
    plain.removal = {group_of(plain, "c1"): mask}
    PrunePass().run(plain)
    assert np.abs(run(plain.model, x)[0] - ref).max() > 0.1  # without it the output moves


def test_bias_compensation_with_padding_keeps_the_mean_output() -> None:
    m, _ = _conv_net(k2=3, pad2=1, stride2=1)
    x = RNG.normal(size=(30, 3, 9, 9)).astype(np.float32)
    mask = np.zeros(6, bool)
    mask[[2, 3]] = True
    ctx = context(m)
    ctx.removal = {group_of(ctx, "c1"): mask}
    BiasCompensatePass(Dataset({"x": x}), batch_size=8).run(ctx)
    ref, new = run(m, x)[0], run(ctx.model, x)[0]
    np.testing.assert_allclose(new.mean(axis=(0, 2, 3)), ref.mean(axis=(0, 2, 3)), atol=1e-4)


# -- BatchNorm re-estimation ---------------------------------------------------------------------

def test_bn_recalibration_equals_numpy_statistics_of_the_pruned_network() -> None:
    c = 6
    inits = {"c1.w": RNG.normal(size=(c, 3, 3, 3)), "c1.b": RNG.normal(size=c),
             "bn1.s": RNG.uniform(0.5, 1.5, c), "bn1.b": RNG.normal(size=c), "bn1.m": RNG.normal(size=c),
             "bn1.v": RNG.uniform(0.5, 2, c), "c2.w": RNG.normal(size=(4, c, 3, 3)),
             "bn2.s": RNG.uniform(0.5, 1.5, 4), "bn2.b": RNG.normal(size=4), "bn2.m": RNG.normal(size=4),
             "bn2.v": RNG.uniform(0.5, 2, 4)}
    nodes = [conv("c1", "x", "h"), helper.make_node("BatchNormalization", ["h", "bn1.s", "bn1.b", "bn1.m", "bn1.v"],
                                                    ["hb"], name="bn1"),
             helper.make_node("Relu", ["hb"], ["r"]), conv("c2", "r", "z", bias=False),
             helper.make_node("BatchNormalization", ["z", "bn2.s", "bn2.b", "bn2.m", "bn2.v"], ["y"], name="bn2")]
    m = model(nodes, inits, (2, 3, 10, 10))
    x = (RNG.normal(size=(45, 3, 10, 10)) * 2 + 1).astype(np.float32)
    ctx = context(m)
    mask = np.zeros(c, bool)
    mask[[1, 4]] = True
    ctx.removal = {group_of(ctx, "c1"): mask}
    Pipeline([PrunePass(), BatchNormRecalibratePass(Dataset({"x": x}), batch_size=7)]).run(ctx)
    # every BatchNorm now holds the statistics of its input in the returned network (bn2's input
    # depends on bn1's new statistics: they are re-estimated in that order)
    h, z = run(ctx.model, x, ["h", "z"])
    for node, t in (("bn1", h), ("bn2", z)):
        _, _, mean, var = _weights(ctx.model, node)
        np.testing.assert_allclose(mean, t.astype(np.float64).mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(var, t.astype(np.float64).var(axis=(0, 2, 3)), rtol=1e-5, atol=1e-5)
    assert _weights(ctx.model, "bn1")[2].shape == (c - 2,)
    rows = ctx.report_extras["reconstruction"]["bn_recalibration"][0]
    assert rows["samples"] == 45 and len(rows["nodes"]) == 2 and rows["calibration_passes"] == 2


# -- reconstruction-aware selection --------------------------------------------------------------

def test_reconstruct_select_removes_the_redundant_channel() -> None:
    """fc1 channel 3 repeats channel 0 (the consumer can take it over exactly); channel 5 has the
    smallest weights but matters. Magnitude removes 5; reconstruction-aware selection removes
    0 or 3, and reconstruction then restores the output."""
    w1, b1 = RNG.normal(size=(6, 8)), RNG.normal(size=8) * 0.1
    w1[:, 3], b1[3] = w1[:, 0], b1[0]
    w1[:, 5] *= 0.1
    w2 = RNG.normal(size=(8, 4))
    w2[5] *= 50.0
    inits = {"g1.w": w1, "g1.b": b1, "g2.w": w2, "g2.b": RNG.normal(size=4)}
    nodes = [gemm("g1", "x", "h"), helper.make_node("Relu", ["h"], ["r"]), gemm("g2", "r", "y")]
    m = model(nodes, inits, (2, 6))
    x = RNG.normal(size=(200, 6)).astype(np.float32)
    data = Dataset({"x": x})
    ctx = context(m)
    ReconstructSelectPass(data, ratio=0.15).run(ctx)  # floor(0.15 * 8) = 1 channel
    (mask,) = ctx.removal.values()
    assert mask.sum() == 1 and (mask[0] or mask[3])
    ReconstructPass(data).run(ctx)
    ref = run(m, x)[0]
    np.testing.assert_allclose(run(ctx.model, x)[0], ref, atol=1e-2 * np.abs(ref).max())


def test_reconstruct_select_keeps_the_counts_of_the_selection_before_it() -> None:
    m, _ = _conv_net()
    x = RNG.normal(size=(40, 3, 9, 9)).astype(np.float32)
    ctx = context(m)
    gid = group_of(ctx, "c1")
    before = np.zeros(6, bool)
    before[[0, 1, 2]] = True
    ctx.removal = {gid: before}
    Pipeline([ReconstructSelectPass(Dataset({"x": x}))]).run(ctx)
    assert ctx.removal[gid].sum() == 3
    sel = ctx.report_extras["reconstruction"]["selection"][0]
    assert sel["removed"] == 3 and sel["consumers"] == 1 and sel["predicted_error"] >= 0


# -- pipeline ------------------------------------------------------------------------------------

def test_pipeline_file_runs_the_passes(tmp_path: Path) -> None:
    import npcompile

    m, _ = _conv_net()
    x = RNG.normal(size=(40, 3, 9, 9)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    (tmp_path / "p.toml").write_text(
        '[[passes]]\nname = "magnitude"\n\n[[passes]]\nname = "select"\nratio = 0.5\n\n'
        '[[passes]]\nname = "reconstruct-select"\ncalib = "calib.npz"\n\n'
        '[[passes]]\nname = "reconstruct"\ncalib = "calib.npz"\nscope = "consumers"\n\n'
        '[[passes]]\nname = "prune"\n\n[[passes]]\nname = "bn-recalibrate"\ncalib = "calib.npz"\n')
    res = npcompile.compile(m, None, pipeline=str(tmp_path / "p.toml"), benchmark=False, plots=False)
    rec = res.report["reconstruction"]
    assert rec["layers"][0]["applied"] == "refit" and rec["runs"][0]["waves"] == 1
    assert _weights(res.model, "c2")[0].shape == (5, 3, 3, 3)


def test_calibration_data_is_required() -> None:
    m, _ = _gemm_net()
    ctx = context(m)
    ctx.removal = {group_of(ctx, "g1"): np.eye(8, dtype=bool)[0]}
    for p in (ReconstructPass(), BiasCompensatePass(), BatchNormRecalibratePass(), ReconstructSelectPass(ratio=0.5)):
        with pytest.raises(UserError, match="calibration data"):
            p.run(ctx)
    with pytest.raises(UserError):
        ReconstructPass(Dataset({"x": np.zeros((2, 6), np.float32)}), scope="everything")


def test_downstream_scope_refits_later_layers_including_depthwise() -> None:
    c = 6
    inits = {"c1.w": RNG.normal(size=(c, 3, 3, 3)), "c1.b": RNG.normal(size=c) * 0.3,
             "c2.w": RNG.normal(size=(8, c, 3, 3)), "c2.b": RNG.normal(size=8) * 0.3,
             "dw.w": RNG.normal(size=(8, 1, 3, 3)), "dw.b": RNG.normal(size=8) * 0.3,
             "c4.w": RNG.normal(size=(4, 8, 1, 1)), "c4.b": RNG.normal(size=4)}
    nodes = [conv("c1", "x", "h1", pads=[1] * 4), helper.make_node("Relu", ["h1"], ["r1"]),
             conv("c2", "r1", "h2", pads=[1] * 4), helper.make_node("Relu", ["h2"], ["r2"]),
             conv("dw", "r2", "h3", pads=[1] * 4, group=8), helper.make_node("Relu", ["h3"], ["r3"]),
             conv("c4", "r3", "y")]
    m = model(nodes, inits, (2, 3, 8, 8))
    x = RNG.normal(size=(80, 3, 8, 8)).astype(np.float32)
    held = RNG.normal(size=(40, 3, 8, 8)).astype(np.float32)
    mask = np.zeros(c, bool)
    mask[[0, 2, 3]] = True
    out = {}
    for scope in ("consumers", "downstream"):
        ctx = context(m)
        ctx.removal = {group_of(ctx, "c1"): mask}
        Pipeline([ReconstructPass(Dataset({"x": x}), scope=scope, positions=0)]).run(ctx)
        rows = {r["layer"]: r for r in ctx.report_extras["reconstruction"]["layers"]}
        out[scope] = (run(ctx.model, held)[0], rows, ctx.report_extras["reconstruction"]["runs"][0]["waves"])
    assert set(out["consumers"][1]) == {"c2"} and out["consumers"][2] == 1
    rows = out["downstream"][1]
    assert set(rows) == {"c2", "dw", "c4"} and out["downstream"][2] == 3
    assert rows["dw"]["blocks"] == 8 and rows["dw"]["columns"] == 9 and rows["dw"]["applied"] == "refit"
    assert rows["dw"]["error_after"] <= rows["dw"]["error_before"]
    ref = run(m, held)[0]
    assert ((out["downstream"][0] - ref) ** 2).sum() < ((out["consumers"][0] - ref) ** 2).sum()


def test_greedy_error_bookkeeping_matches_direct_least_squares() -> None:
    """The block-deletion updates give the same error as refitting from scratch on the kept columns."""
    from npcompile.recovery.reconstruction import consumer_state, greedy_removal, regularised

    d_ch, k, o = 7, 3, 4
    x = RNG.normal(size=(500, d_ch * k)) @ RNG.normal(size=(d_ch * k, d_ch * k))
    cxx = np.cov(x, rowvar=False, bias=True)
    w = RNG.normal(size=(d_ch * k, o))
    cols = {c: np.arange(c * k, (c + 1) * k) for c in range(d_ch)}
    ridge = 1e-3

    def err(keep: np.ndarray) -> float:  # optimal ridge error with the columns of ``keep``
        kc = np.concatenate([cols[c] for c in np.flatnonzero(keep)])
        a = regularised(cxx, ridge)[np.ix_(kc, kc)]
        b = (cxx @ w)[kc]
        return float(np.trace(w.T @ cxx @ w) - np.trace(b.T @ np.linalg.solve(a, b)))

    norm = float(np.trace(w.T @ cxx @ w))
    mask, total = greedy_removal(d_ch, 1, 3, [consumer_state(cxx, w, ridge, cols)])
    assert mask.sum() == 3
    assert np.isclose(total, (err(~mask) - err(np.ones(d_ch, bool))) / norm, rtol=1e-6, atol=1e-9)
    singles = [err(np.arange(d_ch) != c) for c in range(d_ch)]
    first, _ = greedy_removal(d_ch, 1, 1, [consumer_state(cxx, w, ridge, cols)])
    assert np.flatnonzero(first)[0] == int(np.argmin(singles))
