"""Sparsity followed by fine-tuning: every zero stays zero, the 2:4 pattern holds, and the non-zero
weights do train."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from sparsekit import Builder, feeds, make, max_per_group, run, weights

from npcompile.graph.shapes import probe_shapes
from npcompile.passes.sparsity import SparsityPass
from npcompile.pipeline import Context, Pipeline
from npcompile.runtime.data import Dataset

pytest.importorskip("torch")
from npcompile.passes.finetune import FinetunePass  # noqa: E402

#: weight -> input-channel axis
AXES = {"c2.weight": 1, "fc1.weight": 1, "fc2.weight": 0, "fc3.weight": 0}


def classifier() -> onnx.ModelProto:
    """[N, 1, 8, 8] -> Conv 1->8 -> Conv 8->16 (stride 2) -> Gemm transB=1 256->32 -> Gemm transB=0
    32->16 -> MatMul 16->10 (+ bias): 10 class scores."""
    b = Builder(seed=7)
    x = b.conv("c1", "x", 1, 8)
    x = b.node("Relu", "r1", [x])
    x = b.node("Conv", "c2", [x, b.weight("c2.weight", 16, 8, 3, 3), b.weight("c2.bias", 16)], kernel_shape=[3, 3],
               pads=[1, 1, 1, 1], strides=[2, 2])
    x = b.node("Relu", "r2", [x])
    x = b.node("Flatten", "flat", [x])
    x = b.node("Gemm", "fc1", [x, b.weight("fc1.weight", 32, 256), b.weight("fc1.bias", 32)], transB=1, alpha=0.1)
    x = b.node("Relu", "r3", [x])
    x = b.node("Gemm", "fc2", [x, b.weight("fc2.weight", 32, 16), b.weight("fc2.bias", 16)])
    x = b.node("Relu", "r4", [x])
    x = b.node("MatMul", "fc3", [x, b.weight("fc3.weight", 16, 10)])
    x = b.node("Add", "fc3_bias", [x, b.weight("fc3.bias", 10)])
    graph = helper.make_graph(b.nodes, "clf", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", 10])], b.inits)
    return make(graph)


def data(n: int = 256) -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 1, 8, 8)).astype(np.float32)
    labels = (x.reshape(n, -1) @ rng.standard_normal((64, 10))).argmax(axis=1).astype(np.int64)
    return Dataset({"x": x}, labels, "synthetic")


@pytest.mark.parametrize("level", ["2:4", 0.7])
def test_finetune_keeps_zeros_and_pattern(level):
    model = classifier()
    ctx = Context(model, probe_shapes(model), seed=0)
    Pipeline([SparsityPass(sparsity=level)]).run(ctx)
    sparse = weights(ctx.model)
    Pipeline([FinetunePass(train=data(), steps=12, batch_size=32, lr=1e-2)]).run(ctx)
    tuned = weights(ctx.model)
    assert ctx.results["finetune"].data["kept_zeros"] > 0
    for name in AXES:
        zeros = sparse[name] == 0
        assert zeros.any() and (tuned[name][zeros] == 0).all(), name  # every zero kept
        assert not np.array_equal(tuned[name][~zeros], sparse[name][~zeros]), name  # the rest trained
        if level == "2:4":
            assert max_per_group(tuned[name], AXES[name]) <= 2, name
        else:
            assert abs(np.mean(tuned[name] == 0) - 0.7) <= 0.01, name
    # the first conv has 1 input channel: 2:4 skips it, and training changes it freely
    assert not np.array_equal(tuned["c1.weight"], sparse["c1.weight"])
    out = run(ctx.model, feeds(model))
    assert np.isfinite(next(iter(out.values()))).all()


def test_gradual_sparsity_steps_rise_to_the_level_with_finetuning_between(tmp_path):
    """--sparsity 0.875 --sparsity-steps 3: three sparsity passes keeping 1/2, 1/4, 1/8 of the
    weights (the same share of the remaining ones each step), each followed by fine-tuning; the
    final model holds the requested level and every earlier zero."""
    import npcompile
    from npcompile.api import CompileOptions, pipeline_specs

    opts = CompileOptions(sparsity="0.875", sparsity_steps=3, train="t.npz")
    specs = pipeline_specs(opts, 1)
    names = [s.name for s in specs]
    assert names == ["dead-channels", "prune"] + ["sparsity", "dead-channels", "prune", "finetune"] * 3 + ["cleanup"]
    levels = [float(s.options["sparsity"]) for s in specs if s.name == "sparsity"]
    assert levels == pytest.approx([0.5, 0.75, 0.875])
    # without --train: the same rising levels, nothing trained
    plain = [s.name for s in pipeline_specs(CompileOptions(sparsity=0.875, sparsity_steps=3), 1)]
    assert plain.count("sparsity") == 3 and "finetune" not in plain

    model = classifier()
    train = data()
    np.savez(tmp_path / "train.npz", x=train.inputs["x"], labels=train.labels)
    result = npcompile.compile(model, tmp_path / "out", sparsity="0.875", sparsity_steps=3,
                               sparsity_scope="layer", train=str(tmp_path / "train.npz"), epochs=1,
                               benchmark=False, plots=False)
    passes = [p["name"] for p in result.report["passes"]]
    assert passes.count("sparsity") == 3 and passes.count("finetune") == 3
    final = weights(result.model)
    for name in AXES:
        assert abs(np.mean(final[name] == 0) - 0.875) <= 0.01, name


@pytest.mark.parametrize("bad", [{"sparsity": "2:4", "sparsity_steps": 2}, {"sparsity": 0.5, "sparsity_steps": 0}])
def test_bad_sparsity_steps(bad):
    from npcompile.api import CompileOptions
    from npcompile.errors import UserError

    with pytest.raises(UserError):
        CompileOptions(**bad).validate()
