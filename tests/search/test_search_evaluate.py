"""Evaluators: accuracy (top-1, top-k), fidelity (top1, cosine, neg_mse), user callables, and the
one-line errors for bad labels and bad specs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from npcompile.errors import UserError
from npcompile.graph.model_io import initializer, make_opset_model
from npcompile.runtime.data import Dataset
from npcompile.runtime.evaluate import (
    AccuracyEvaluator,
    CallableEvaluator,
    FidelityEvaluator,
    make_evaluator,
    model_outputs,
)

RNG = np.random.default_rng(0)
N, CLASSES = 23, 5
LOGITS = RNG.standard_normal((N, CLASSES)).astype(np.float32)
LABELS = RNG.integers(0, CLASSES, N)


class Lookup:
    """A runner whose output for sample ``i`` is row ``i`` of ``table`` (input ``idx`` holds ``i``)."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = table
        self.calls = 0

    def run(self, names, feeds):
        self.calls += 1
        return [self.table[feeds["idx"][:, 0].astype(int)]]


def _data(labels: np.ndarray | None = LABELS) -> Dataset:
    return Dataset({"idx": np.arange(N, dtype=np.float32)[:, None]}, labels)


def _gemm_model(batch: int | str = "N") -> onnx.ModelProto:
    w = RNG.standard_normal((6, CLASSES)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, CLASSES])],
        [initializer("w", w)])
    model = make_opset_model(graph)
    model.ir_version = 8
    return model


def test_accuracy_top1_and_topk_in_batches() -> None:
    runner = Lookup(LOGITS)
    top1 = AccuracyEvaluator(_data(), batch_size=4)
    assert top1.evaluate(runner) == pytest.approx(100 * np.mean(LOGITS.argmax(1) == LABELS))
    assert runner.calls == 6  # 23 samples in batches of 4
    top3 = AccuracyEvaluator(_data(), top_k=3, batch_size=7)
    ranks = (LOGITS[np.arange(N), LABELS][:, None] < LOGITS).sum(1)
    assert top3.evaluate(runner) == pytest.approx(100 * np.mean(ranks < 3))
    assert top1.name == "accuracy" and top3.name == "top3-accuracy"
    assert top3.describe() == {"name": "top3-accuracy", "kind": "accuracy", "unit": "%", "top_k": 3, "samples": N}


def test_accuracy_needs_valid_labels() -> None:
    with pytest.raises(UserError, match="needs labels") as e:
        AccuracyEvaluator(_data(None))
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="label 7 is out of range: the model outputs 5 classes"):
        AccuracyEvaluator(_data(np.full(N, 7))).evaluate(Lookup(LOGITS))
    with pytest.raises(UserError, match=">= 0"):
        AccuracyEvaluator(_data(np.full(N, -1)))
    with pytest.raises(UserError, match="top-k 6 exceeds"):
        AccuracyEvaluator(_data(), top_k=6).evaluate(Lookup(LOGITS))
    with pytest.raises(UserError, match=r"\[N, classes\]"):
        AccuracyEvaluator(_data()).evaluate(Lookup(np.zeros((N, 2, 3), np.float32)))


def test_fidelity_kinds() -> None:
    same = Lookup(LOGITS)
    for kind, perfect in (("top1", 100.0), ("cosine", 1.0), ("neg_mse", 0.0)):
        ev = FidelityEvaluator(_data(), LOGITS, kind, batch_size=5)
        assert ev.evaluate(same) == pytest.approx(perfect)
        assert ev.name == f"fidelity-{kind}"
    noisy = LOGITS + RNG.standard_normal(LOGITS.shape).astype(np.float32)
    other = Lookup(noisy)
    a, b = LOGITS.astype(np.float64), noisy.astype(np.float64)
    want = {"top1": 100 * np.mean(a.argmax(1) == b.argmax(1)),
            "cosine": np.mean((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)),
            "neg_mse": -np.mean((a - b) ** 2)}
    for kind, value in want.items():
        assert FidelityEvaluator(_data(), LOGITS, kind).evaluate(other) == pytest.approx(value, rel=1e-5)
    with pytest.raises(UserError, match="unknown fidelity kind"):
        FidelityEvaluator(_data(), LOGITS, "l1")
    with pytest.raises(UserError, match="samples"):
        FidelityEvaluator(_data(), LOGITS[:3])


def test_make_evaluator_and_models() -> None:
    model = _gemm_model()
    x = RNG.standard_normal((N, 6)).astype(np.float32)
    ref = x @ onnx.numpy_helper.to_array(model.graph.initializer[0])
    labelled = Dataset({"x": x}, ref.argmax(1))
    acc = make_evaluator("auto", dataset=labelled, model=model, batch_size=8)
    assert isinstance(acc, AccuracyEvaluator) and acc.evaluate(model) == 100.0
    fid = make_evaluator("auto", dataset=Dataset({"x": x}), model=model)
    assert isinstance(fid, FidelityEvaluator) and fid.fidelity == "top1"
    np.testing.assert_allclose(fid.reference, ref, rtol=1e-5)
    assert make_evaluator("cosine", dataset=Dataset({"x": x}), model=model).evaluate(model) == pytest.approx(1.0)
    np.testing.assert_allclose(model_outputs(model, Dataset({"x": x}), batch_size=5), ref, rtol=1e-5)
    with pytest.raises(UserError, match="unknown evaluator"):
        make_evaluator("f1", dataset=labelled)
    with pytest.raises(UserError, match="needs evaluation data"):
        make_evaluator("accuracy")
    with pytest.raises(UserError, match="original model or reference"):
        make_evaluator("neg_mse", dataset=labelled)


def test_fixed_batch_model_is_padded() -> None:
    model = _gemm_model(batch=4)
    x = RNG.standard_normal((10, 6)).astype(np.float32)
    ref = x @ onnx.numpy_helper.to_array(model.graph.initializer[0])
    ev = make_evaluator("accuracy", dataset=Dataset({"x": x}, ref.argmax(1)), model=model, batch_size=256)
    assert ev.evaluate(model) == 100.0


def _user_module(tmp_path: Path) -> Path:
    path = tmp_path / "npc_user_eval.py"
    path.write_text(
        "def nodes(model):\n    return float(len(model.graph.node))\n\n"
        "def text(model):\n    return 'high'\n\n"
        "def nan(model):\n    return float('nan')\n\n"
        "NOT_CALLABLE = 3\n")
    return path


def test_callable_evaluator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _user_module(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    model = _gemm_model()
    ev = make_evaluator("npc_user_eval:nodes")
    assert isinstance(ev, CallableEvaluator) and ev.needs_model
    assert ev.evaluate(model) == 1.0
    assert ev.name == "callable:npc_user_eval:nodes"

    class WithModel:
        pass

    runner = WithModel()
    runner.model = model
    assert ev.evaluate(runner) == 1.0
    assert make_evaluator("callable", spec=f"{path}:nodes").evaluate(model) == 1.0
    assert CallableEvaluator(lambda m: 2).evaluate(model) == 2.0


@pytest.mark.parametrize("spec,message", [
    ("no_such_module_npc:f", "cannot import no_such_module_npc: ModuleNotFoundError"),
    ("npc_user_eval:missing", "has no attribute 'missing'"),
    ("npc_user_eval:NOT_CALLABLE", "is not callable"),
    ("nocolon", "expected module:function"),
    ("/no/such/file.py:f", "not found"),
])
def test_callable_bad_specs(spec: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _user_module(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match=message) as e:
        make_evaluator("callable", spec=spec)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("fn,message", [("text", "returned str, not a float"), ("nan", "returned nan")])
def test_callable_bad_results(fn: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _user_module(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match=message):
        CallableEvaluator(f"npc_user_eval:{fn}").evaluate(_gemm_model())
