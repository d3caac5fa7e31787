"""The finetune pass: lowers the training loss, changes the ONNX model accordingly (ONNX Runtime
on the written-back model = the trained torch graph), keeps zeros, is deterministic, and fails
cleanly on what it cannot train."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from finetune_kit import digits_cnn, export, ort_outputs
from onnx import helper, numpy_helper

from npcompile.errors import PassError, UserError
from npcompile.finetune.graph_module import GraphModule
from npcompile.passes.finetune import FinetunePass
from npcompile.passes.magnitude import MagnitudePass
from npcompile.passes.prune import PrunePass
from npcompile.passes.select import SelectPass
from npcompile.pipeline import Context, Pipeline, get_pass
from npcompile.runtime.data import Dataset
from npcompile.testing import plant_dead_channels

PROBE = {"input": (1, 1, 8, 8)}



def _ce(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)))


def test_finetune_lowers_the_loss_and_changes_the_onnx_model(digits: Dataset, digits_model: onnx.ModelProto) -> None:
    ctx = Context(digits_model, PROBE)
    x, y = digits.inputs["input"], digits.labels
    before = _ce(ort_outputs(digits_model, x), y)
    # an untrained model: learn from the labels alone (distillation from it would pull back)
    result = FinetunePass(digits, epochs=2, lr=3e-3, batch_size=64, distill=0.0).run(ctx)
    assert result.changed
    epochs = result.data["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert epochs[1]["loss"] < epochs[0]["loss"]
    assert all(e["samples_per_s"] > 0 and e["samples"] == len(digits) for e in epochs)
    assert result.data["steps"] == 2 * int(np.ceil(len(digits) / 64))
    after = _ce(ort_outputs(ctx.model, x), y)
    assert after < 0.5 * before
    assert result.data["ort_max_abs_diff"] <= 1e-4
    assert ctx.model is not digits_model
    assert [t.name for t in ctx.model.graph.initializer] == [t.name for t in digits_model.graph.initializer]
    assert result.report["loss_per_epoch"] == [e["loss"] for e in epochs]


def test_written_back_model_equals_the_trained_graph_module(digits: Dataset, digits_model: onnx.ModelProto) -> None:
    gm = GraphModule(digits_model)
    opt = torch.optim.Adam(gm.parameters(), lr=1e-2)
    x, y = torch.from_numpy(digits.inputs["input"][:256]), torch.from_numpy(digits.labels[:256])
    for i in range(0, 256, 32):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(gm(x[i:i + 32]), y[i:i + 32]).backward()
        opt.step()
    trained = gm.write_back()
    with torch.no_grad():
        expected = gm.eval()(x).numpy()
    np.testing.assert_allclose(ort_outputs(trained, x.numpy()), expected, rtol=1e-4, atol=1e-5)
    assert np.abs(ort_outputs(digits_model, x.numpy()) - expected).max() > 1e-2


def test_same_seed_same_bytes_other_seed_other_model(digits: Dataset, digits_model: onnx.ModelProto) -> None:
    small = digits.take(300)

    def tuned(seed: int) -> bytes:
        ctx = Context(digits_model, PROBE)
        FinetunePass(small, epochs=1, batch_size=32, seed=seed).run(ctx)
        return ctx.model.SerializeToString()

    assert tuned(7) == tuned(7)
    assert tuned(7) != tuned(8)
    ctx = Context(digits_model, PROBE, seed=7)  # default: the compilation's seed
    FinetunePass(small, epochs=1, batch_size=32).run(ctx)
    assert ctx.model.SerializeToString() == tuned(7)


def test_keep_zeros(digits: Dataset, digits_model: onnx.ModelProto) -> None:
    model = onnx.ModelProto()
    model.CopyFrom(digits_model)
    rng = np.random.default_rng(0)
    for t in model.graph.initializer:
        a = numpy_helper.to_array(t).copy()
        a[rng.random(a.shape) < 0.5] = 0.0
        t.CopyFrom(numpy_helper.from_array(a, t.name))
    zeros = {t.name: numpy_helper.to_array(t) == 0 for t in model.graph.initializer}
    small = digits.take(300)

    ctx = Context(model, PROBE)
    result = FinetunePass(small, epochs=1, batch_size=32, lr=1e-2).run(ctx)
    assert result.data["kept_zeros"] == sum(int(z.sum()) for z in zeros.values())
    for t in ctx.model.graph.initializer:
        a = numpy_helper.to_array(t)
        assert (a[zeros[t.name]] == 0).all()
        assert (a[~zeros[t.name]] != numpy_helper.to_array(
            next(i for i in model.graph.initializer if i.name == t.name))[~zeros[t.name]]).any()

    ctx = Context(model, PROBE)
    FinetunePass(small, epochs=1, batch_size=32, lr=1e-2, keep_zeros=False).run(ctx)
    revived = sum(int((numpy_helper.to_array(t)[zeros[t.name]] != 0).sum()) for t in ctx.model.graph.initializer)
    assert revived > 0


def test_dead_channels_stay_dead_through_finetuning(digits: Dataset, digits_model: onnx.ModelProto) -> None:
    planted, _ = plant_dead_channels(digits_model, PROBE, fraction=0.25)

    def dead_removed(model: onnx.ModelProto) -> int:
        ctx = Context(model, PROBE)
        Pipeline([MagnitudePass(), SelectPass(threshold=0.0), PrunePass()]).run(ctx)
        return ctx.results["prune"].data.get("channels", 0)

    ctx = Context(planted, PROBE)
    records = Pipeline([FinetunePass(digits.take(300), epochs=1, lr=1e-2)]).run(ctx)
    assert records[0]["name"] == "finetune" and records[0]["changed"]
    assert dead_removed(ctx.model) == dead_removed(planted) > 0
    assert ctx.analysis is not None  # the context rebuilds graph and analysis from the new model


def test_steps_and_sgd(digits: Dataset, digits_model: onnx.ModelProto) -> None:
    ctx = Context(digits_model, PROBE)
    result = FinetunePass(digits, steps=5, batch_size=16, optimizer="sgd", lr=0.05, momentum=0.9).run(ctx)
    assert result.data["steps"] == 5
    assert len(result.data["epochs"]) == 1
    assert result.data["epochs"][0]["samples"] == 80


def test_softmax_output_trains_on_probabilities(digits: Dataset) -> None:
    torch.manual_seed(0)
    model = export(torch.nn.Sequential(digits_cnn(), torch.nn.Softmax(dim=1)), (1, 1, 8, 8))
    ctx = Context(model, PROBE)
    result = FinetunePass(digits, epochs=2, lr=3e-3).run(ctx)
    losses = [e["loss"] for e in result.data["epochs"]]
    assert np.isfinite(losses).all() and losses[1] < losses[0] and losses[0] < 2.5


def test_unsupported_ops_are_listed(digits: Dataset) -> None:
    nodes = [helper.make_node("Flatten", ["input"], ["f"]),
             helper.make_node("Det", ["f"], ["e"]),
             helper.make_node("TopK", ["e", "k"], ["logits", "idx"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT,
                                                                         ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 10])],
                              [numpy_helper.from_array(np.ones((64, 12), np.float32), "w"),
                               numpy_helper.from_array(np.array([10], np.int64), "k")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(UserError, match=r"^cannot train: no torch function for op\(s\) Det, TopK$"):
        FinetunePass(digits).run(Context(model, PROBE))
    with pytest.raises(PassError) as info:
        Pipeline([FinetunePass(digits)]).run(Context(model, PROBE))
    assert info.value.exit_code == 2


def test_user_errors(digits: Dataset, digits_model: onnx.ModelProto, tmp_path: Path) -> None:
    ctx = Context(digits_model, PROBE)
    with pytest.raises(UserError, match="needs labelled training data"):
        FinetunePass().run(ctx)
    with pytest.raises(UserError, match="no 'labels'"):
        FinetunePass(Dataset(digits.inputs, None, "x.npz")).run(ctx)
    with pytest.raises(UserError, match="labels range"):
        FinetunePass(Dataset(digits.inputs, digits.labels + 5)).run(ctx)
    for bad in ({"optimizer": "rmsprop"}, {"loss": "hinge"}, {"epochs": 0}, {"lr": 0}, {"batch_size": 0}):
        with pytest.raises(UserError):
            FinetunePass(digits, **bad)
    path = tmp_path / "train.npz"
    np.savez(path, input=digits.inputs["input"][:100], labels=digits.labels[:100])
    result = get_pass("finetune")(str(path), steps=2).run(ctx)
    assert result.data["steps"] == 2
    np.savez(path, input=digits.inputs["input"][:100])
    with pytest.raises(UserError, match="no 'labels' array"):
        FinetunePass(str(path)).run(ctx)


def test_pipeline_file_loads_the_training_data(digits: Dataset, digits_model: onnx.ModelProto,
                                               tmp_path: Path) -> None:
    from npcompile.pipeline.file import instantiate, load_pipeline_file

    np.savez(tmp_path / "train.npz", input=digits.inputs["input"][:64], labels=digits.labels[:64])
    (tmp_path / "p.toml").write_text('[[passes]]\nname = "finetune"\ntrain = "train.npz"\nsteps = 1\n')
    specs, base = load_pipeline_file(tmp_path / "p.toml")
    (finetune,) = instantiate(specs, digits_model, base)
    assert isinstance(finetune.train, Dataset) and len(finetune.train) == 64
    assert finetune.run(Context(digits_model, PROBE)).data["steps"] == 1
