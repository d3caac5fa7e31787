"""The weight-sparsity pass: 2:4 patterns, unstructured levels, what it leaves alone, determinism,
dead-channel removal after it, and the figures it reports."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from sparsekit import (
    NM_LAYERS,
    NM_SKIPPED,
    UNSTRUCTURED_SKIPPED,
    Builder,
    context,
    feeds,
    make,
    max_per_group,
    mixed_model,
    run,
    weights,
)

from npcompile.errors import UserError
from npcompile.graph.shapes import probe_shapes
from npcompile.graph.stats import model_stats
from npcompile.graph.weights import nm_keep, weight_slots
from npcompile.passes.prune import PrunePass
from npcompile.passes.select import DeadChannelsPass
from npcompile.passes.sparsity import SparsityPass, parse_sparsity
from npcompile.pipeline import Pipeline, get_pass
from npcompile.runtime.verify import compare
from npcompile.testing import plant_dead_channels

WEIGHT_OF = {f"{name}": f"{name}.weight" for name in
             ("conv1", "conv_dw", "conv_grouped", "conv_1x1", "conv_odd", "deconv", "gemm_t1", "gemm_t0", "matmul",
              "gemm_tiny", "matmul_3d")}


def sparsify(model: onnx.ModelProto, **options):
    ctx = context(model)
    result = SparsityPass(**options).run(ctx)
    return ctx, result


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return mixed_model()


# --------------------------------------------------------------------------------------------
# 2:4


def test_two_four_pattern_on_every_eligible_layer(model):
    ctx, result = sparsify(model, sparsity="2:4")
    before, after = weights(model), weights(ctx.model)
    done = {rec["name"]: rec for rec in result.data["layers"]}
    assert set(done) == set(NM_LAYERS)
    for name, (_op, axis) in NM_LAYERS.items():
        w0, w = before[WEIGHT_OF[name]], after[WEIGHT_OF[name]]
        assert max_per_group(w, axis) <= 2, name
        # random weights have no zeros: exactly half stay, and they are the 2 largest of each group
        assert np.count_nonzero(w) == w.size // 2, name
        g0 = np.moveaxis(np.abs(w0), axis, -1).reshape(-1, 4)
        g = np.moveaxis(w, axis, -1).reshape(-1, 4) != 0
        assert (np.where(g, g0, np.inf).min(axis=1) >= np.where(g, -np.inf, g0).max(axis=1)).all(), name
        np.testing.assert_array_equal(w[w != 0], w0[w != 0])
        assert done[name]["sparsity"] == 0.5 and done[name]["nonzero"] == w.size // 2
    skipped = {rec["name"]: rec["reason"] for rec in result.data["skipped"]}
    assert set(skipped) == set(NM_SKIPPED)
    for name, word in NM_SKIPPED.items():
        assert word in skipped[name], (name, skipped[name])
        if name != "matmul_dyn":
            np.testing.assert_array_equal(after[WEIGHT_OF[name]], before[WEIGHT_OF[name]])
    out = run(ctx.model, feeds(model))
    assert all(np.isfinite(v).all() for v in out.values())


def test_two_four_gemm_axes_are_the_input_channels():
    """transB=1 weight [N, K] groups along axis 1, transB=0 weight [K, N] along axis 0: the same
    numbers laid out transposed give transposed masks."""
    w = np.random.default_rng(1).standard_normal((12, 16)).astype(np.float32)
    b = Builder()
    b.const("wt", w)
    b.const("w", np.ascontiguousarray(w.T))
    y1 = b.node("Gemm", "t1", ["x", "wt"], transB=1)
    y0 = b.node("Gemm", "t0", ["x", "w"])
    mm = b.node("MatMul", "mm", ["x", "w"])
    graph = helper.make_graph(b.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
                              [helper.make_tensor_value_info(y, TensorProto.FLOAT, [2, 12]) for y in (y1, y0, mm)],
                              b.inits)
    m = make(graph)
    ctx, result = sparsify(m, sparsity="2:4")
    after = weights(ctx.model)
    assert max_per_group(after["wt"], 1) <= 2 and max_per_group(after["w"], 0) <= 2
    np.testing.assert_array_equal(after["wt"], after["w"].T)
    assert [rec["shared_by"] for rec in result.data["layers"] if rec["weight"] == "w"] == [["t0", "mm"]]


def test_grouped_conv_groups_stay_within_a_group():
    w = np.random.default_rng(2).standard_normal((6, 8, 3, 3)).astype(np.float32)
    keep = nm_keep(w, 2, 4, axis=1)
    assert (keep.reshape(6, 2, 4, 3, 3).sum(axis=2) == 2).all()


def test_layers_that_cannot_take_two_four_are_listed():
    b = Builder()
    x = b.conv("first", "x", 3, 8)  # 3 input channels
    w = b.node("Mul", "scale", [b.weight("raw", 8, 8, 1, 1), b.const("s", np.float32(2.0))])
    x = b.node("Conv", "computed", [x, w])
    x = b.node("Conv", "shared", [x, b.weight("tied", 8, 8, 1, 1)])
    x = b.node("Add", "add_tied", [x, "tied"])
    graph = helper.make_graph(b.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 5])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [8, 8, 5, 5])], b.inits)
    m = make(graph)
    ctx, result = sparsify(m, sparsity="2:4", min_size=0)
    reasons = {rec["name"]: rec["reason"] for rec in result.data["skipped"]}
    assert "3 input channels, not a multiple of 4" in reasons["first"]
    assert "computed by a Mul node" in reasons["computed"]
    assert "also read by a Add node" in reasons["shared"]
    assert not result.changed and ctx.model is m


def test_constant_node_weights_are_sparsified():
    w = np.random.default_rng(3).standard_normal((8, 8)).astype(np.float32)
    nodes = [helper.make_node("Constant", [], ["w"], name="const_w", value=numpy_helper.from_array(w, "w")),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])])
    m = make(graph)
    ctx, result = sparsify(m, sparsity="2:4")
    got = numpy_helper.to_array(ctx.model.graph.node[0].attribute[0].t)
    assert max_per_group(got, 0) == 2 and np.count_nonzero(got) == 32
    x = feeds(m)
    np.testing.assert_allclose(run(ctx.model, x)["y"], x["x"] @ got, rtol=1e-5, atol=1e-6)


def test_fp16_weights_keep_their_type():
    w = np.random.default_rng(4).standard_normal((16, 8)).astype(np.float16)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2, 8])],
                              [numpy_helper.from_array(w, "w")])
    m = make(graph)
    for level in ("2:4", 0.75):
        ctx, _ = sparsify(m, sparsity=level)
        got = weights(ctx.model)["w"]
        assert got.dtype == np.float16 and np.count_nonzero(got) == (64 if level == "2:4" else 32)


# --------------------------------------------------------------------------------------------
# unstructured


@pytest.mark.parametrize("level", [0.3, 0.8, 0.93])
def test_unstructured_per_layer_level(model, level):
    ctx, result = sparsify(model, sparsity=level)
    before, after = weights(model), weights(ctx.model)
    names = {rec["name"] for rec in result.data["layers"]}
    assert names == set(WEIGHT_OF) - set(UNSTRUCTURED_SKIPPED)  # ConvTranspose, depthwise and odd widths too
    for name in names:
        w0, w = before[WEIGHT_OF[name]], after[WEIGHT_OF[name]]
        assert abs((1 - np.count_nonzero(w) / w.size) - level) <= 0.01, name
        kept = w != 0
        assert np.abs(w0[~kept]).max() <= np.abs(w0[kept]).min(), name  # the smallest went
        np.testing.assert_array_equal(w[kept], w0[kept])
    assert abs(result.data["sparsity"] - level) <= 0.01


def test_unstructured_global_level(model):
    ctx, result = sparsify(model, sparsity=0.8, scope="global")
    before, after = weights(model), weights(ctx.model)
    names = [rec["name"] for rec in result.data["layers"]]
    w0 = np.concatenate([before[WEIGHT_OF[n]].ravel() for n in names])
    w = np.concatenate([after[WEIGHT_OF[n]].ravel() for n in names])
    assert abs((1 - np.count_nonzero(w) / w.size) - 0.8) <= 0.01
    assert np.abs(w0[w == 0]).max() <= np.abs(w0[w != 0]).min()  # one threshold over all layers
    per_layer = [rec["sparsity"] for rec in result.data["layers"]]
    assert max(per_layer) - min(per_layer) > 0.02  # not the same level everywhere


def test_only_weights_change(model):
    """Biases, normalisation parameters and skipped weights keep their bytes."""
    ctx, _ = sparsify(model, sparsity=0.9)
    weight_names = {WEIGHT_OF[n] for n in WEIGHT_OF if n not in UNSTRUCTURED_SKIPPED}
    before = {t.name: t.SerializeToString() for t in model.graph.initializer}
    after = {t.name: t.SerializeToString() for t in ctx.model.graph.initializer}
    assert before.keys() == after.keys()
    assert {n for n in before if before[n] != after[n]} == weight_names
    assert [n.SerializeToString() for n in model.graph.node] == [n.SerializeToString() for n in ctx.model.graph.node]


def test_include_exclude_leave_earlier_layers_exact():
    """Sparsifying only conv_1x1 leaves every tensor before it bit-identical; excluding conv1
    keeps its output exact while everything else changes."""
    probes = ("conv1_out", "conv_grouped_out", "conv_1x1_out")
    m = mixed_model(extra_outputs=probes)
    x = feeds(m)
    ref = run(m, x)
    ctx, result = sparsify(m, sparsity=0.7, include="conv_1x1")
    assert [rec["name"] for rec in result.data["layers"]] == ["conv_1x1"]
    assert {rec["reason"] for rec in result.data["skipped"] if rec["name"] not in UNSTRUCTURED_SKIPPED} == {
        "not included (include patterns)"}
    got = run(ctx.model, x)
    np.testing.assert_array_equal(got["conv1_out"], ref["conv1_out"])
    np.testing.assert_array_equal(got["conv_grouped_out"], ref["conv_grouped_out"])
    assert not np.array_equal(got["conv_1x1_out"], ref["conv_1x1_out"])

    ctx, result = sparsify(m, sparsity="2:4", exclude=["conv1", "gemm_*"])
    skipped = {rec["name"]: rec["reason"] for rec in result.data["skipped"]}
    assert skipped["conv1"] == skipped["gemm_t1"] == "excluded (exclude patterns)"
    got = run(ctx.model, x)
    np.testing.assert_array_equal(got["conv1_out"], ref["conv1_out"])
    assert not np.array_equal(got["conv_grouped_out"], ref["conv_grouped_out"])
    # patterns match weight tensor names too
    _, result = sparsify(m, sparsity=0.5, include="*.weight", exclude="matmul*.weight")
    assert "matmul" not in {rec["name"] for rec in result.data["layers"]}


# --------------------------------------------------------------------------------------------
# determinism, idempotence, options


@pytest.mark.parametrize("options", [{"sparsity": "2:4"}, {"sparsity": 0.6}, {"sparsity": 0.6, "scope": "global"}])
def test_deterministic_and_idempotent(options):
    """Byte-identical models from the same input, ties by position (weights of equal magnitude),
    and a second run changes nothing."""
    b = Builder()
    w = np.sign(np.random.default_rng(5).standard_normal((8, 16))).astype(np.float32)  # all |w| = 1
    b.const("w", w)
    y = b.node("MatMul", "mm", ["x", "w"])
    graph = helper.make_graph(b.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info(y, TensorProto.FLOAT, [2, 16])], b.inits)
    tied = make(graph)
    for m in (mixed_model(), tied):
        a, ra = sparsify(m, **options)
        b2, _ = sparsify(mixed_model() if m is not tied else tied, **options)
        assert a.model.SerializeToString(deterministic=True) == b2.model.SerializeToString(deterministic=True)
        again, r2 = sparsify(a.model, **options)
        assert ra.changed and not r2.changed
        assert again.model.SerializeToString() == a.model.SerializeToString()
    got = weights(sparsify(tied, **options)[0].model)["w"]
    if options["sparsity"] == "2:4":  # equal magnitudes: the lower positions of each group go
        assert (got[[0, 1, 4, 5]] == 0).all() and (got[[2, 3, 6, 7]] == w[[2, 3, 6, 7]]).all()
    else:  # the first round(0.6 * 128) = 77 positions go
        assert (got.ravel()[:77] == 0).all() and (got.ravel()[77:] != 0).all()


def test_zero_level_changes_nothing(model):
    ctx, result = sparsify(model, sparsity=0.0)
    assert not result.changed and ctx.model is model


@pytest.mark.parametrize("value, expected", [(0.5, 0.5), ("0.8", 0.8), ("80%", 0.8), ("2:4", (2, 4)),
                                             (" 1:8 ", (1, 8))])
def test_parse_sparsity(value, expected):
    assert parse_sparsity(value) == expected


@pytest.mark.parametrize("options", [{"sparsity": 1.0}, {"sparsity": -0.1}, {"sparsity": "4:4"},
                                     {"sparsity": "2:x"}, {"sparsity": "dense"}, {"sparsity": True},
                                     {"sparsity": "2:4", "scope": "global"}, {"sparsity": 0.5, "scope": "model"},
                                     {"sparsity": 0.5, "min_size": -1}, {"sparsity": 0.5, "zlib_level": 10}])
def test_bad_options(options):
    with pytest.raises(UserError):
        SparsityPass(**options)


def test_registered():
    assert get_pass("sparsity") is SparsityPass and SparsityPass.kind == "rewrite"


# --------------------------------------------------------------------------------------------
# figures, metrics and the rest of the pipeline


def test_reported_figures_and_metrics(model):
    ctx, result = sparsify(model, sparsity="2:4")
    data = result.data
    assert result.report is data and data["summary"] == result.summary
    assert data["mode"] == "2:4" and data["layers_sparsified"] == 7 and data["layers_skipped"] == 5
    assert data["params"] == sum(r["params"] for r in data["layers"])
    assert data["nonzero"] == data["params"] // 2 and data["sparsity"] == 0.5
    w = data["weights"]
    assert w["nonzero_before"] - w["nonzero"] == data["params"] // 2
    assert w["zlib_bytes"] < w["zlib_bytes_before"] and w["bitmask_bytes"] < w["bytes"]
    for rec in data["layers"]:
        assert rec["zlib_bytes"] < rec["zlib_bytes_before"]
        assert rec["bitmask_bytes"] == rec["nonzero"] * 4 + (rec["params"] + 7) // 8
    # metrics count the zeros: non-zero parameters drop by exactly the weights zeroed
    probe = probe_shapes(model)
    s0, s1 = model_stats(model, probe), model_stats(ctx.model, probe)
    assert s1.params == s0.params and s0.nonzero_params == s0.params
    assert s0.nonzero_params - s1.nonzero_params == data["params"] - data["nonzero"]
    _, off = sparsify(model, sparsity=0.5, zlib_level=None)
    assert "zlib_bytes" not in off.data["weights"]


def test_weight_slots_axes(model):
    axes = {s.name: s.in_axis for s in weight_slots(model)}
    assert axes == {"conv1": 1, "conv_dw": 1, "conv_grouped": 1, "conv_1x1": 1, "conv_odd": 1, "deconv": 0,
                    "gemm_t1": 1, "gemm_t0": 0, "matmul": 0, "matmul_dyn": None, "gemm_tiny": 1, "matmul_3d": 1}


def test_dead_channel_removal_after_sparsity():
    """Dead channels planted before sparsity are still found and removed after it, losslessly."""
    base = mixed_model()
    probe = probe_shapes(base)
    planted, _ = plant_dead_channels(base, probe, fraction=0.25, seed=1)
    for level in ("2:4", 0.6):
        ctx = context(planted)
        dead_before = sum(int(g.dead.sum()) for g in ctx.analysis.prunable_groups() if g.dead is not None)
        assert dead_before > 0
        Pipeline([SparsityPass(sparsity=level)]).run(ctx)
        sparse = ctx.model
        dead_after = sum(int(g.dead.sum()) for g in ctx.analysis.prunable_groups() if g.dead is not None)
        assert dead_after >= dead_before
        Pipeline([DeadChannelsPass(), PrunePass()]).run(ctx)
        assert ctx.results["prune"].data["channels"] >= dead_before
        assert model_stats(ctx.model, probe).params < model_stats(sparse, probe).params
        v = compare(sparse, ctx.model, feeds(sparse))
        assert v.max_rel_diff <= 1e-4, (level, v.max_rel_diff)


def test_compile_with_a_pipeline_file(tmp_path):
    """The pass runs inside compile(): its section lands in the report, which counts the zeros."""
    import npcompile

    m = mixed_model()
    (tmp_path / "p.toml").write_text('[[passes]]\nname = "sparsity"\nsparsity = "2:4"\n\n'
                                     '[[passes]]\nname = "dead-channels"\n\n[[passes]]\nname = "prune"\n')
    result = npcompile.compile(m, None, pipeline=str(tmp_path / "p.toml"), benchmark=False, plots=False)
    report = result.report
    assert report["sparsity"]["mode"] == "2:4"
    s = report["summary"]
    assert s["nonzero_params_before"] - s["nonzero_params_after"] == report["sparsity"]["params"] // 2
    for name, (_op, axis) in NM_LAYERS.items():
        assert max_per_group(weights(result.model)[WEIGHT_OF[name]], axis) <= 2


def test_global_caps_layers_of_small_weights():
    """A layer of tiny weights would lose everything to a global threshold: it is held at
    max_layer_sparsity and the other layers take up the rest of the budget."""
    rng = np.random.default_rng(6)
    b = Builder()
    b.const("small", (rng.standard_normal((32, 32)) * 1e-3).astype(np.float32))
    b.const("large", rng.standard_normal((32, 32)).astype(np.float32))
    y = b.node("MatMul", "mm_large", [b.node("MatMul", "mm_small", ["x", "small"]), "large"])
    graph = helper.make_graph(b.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 32])],
                              [helper.make_tensor_value_info(y, TensorProto.FLOAT, [2, 32])], b.inits)
    m = make(graph)
    ctx, result = sparsify(m, sparsity=0.6, scope="global")
    w = weights(ctx.model)
    assert np.count_nonzero(w["small"]) == 1024 - 1013  # floor(0.99 * 1024) zeros
    assert abs(1 - (np.count_nonzero(w["small"]) + np.count_nonzero(w["large"])) / 2048 - 0.6) <= 0.01
    assert result.data["capped"] == ["mm_small"] and "max_layer_sparsity" in result.data["notes"][0]
    ctx, result = sparsify(m, sparsity=0.6, scope="global", max_layer_sparsity=None)
    assert np.count_nonzero(weights(ctx.model)["small"]) == 0
    assert result.data["notes"] == ["layer mm_small lost every weight"]
