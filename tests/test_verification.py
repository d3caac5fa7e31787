"""The built-in verification evaluator: exact figures on hand-made embeddings, the pairs file
format and its errors, and the command line on a tiny embedding model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from npcompile.errors import UserError
from npcompile.runtime.data import Dataset
from npcompile.runtime.evaluate import make_evaluator
from npcompile.runtime.verification import (
    Pairs,
    VerificationEvaluator,
    best_threshold,
    equal_error_rate,
    load_pairs,
    verification_metrics,
)


def _pair_embeddings(cosines: list[float]) -> np.ndarray:
    """Two 2-D unit vectors per pair (images 2i, 2i+1) whose cosine is the given one."""
    out = []
    for c in cosines:
        out += [[1.0, 0.0], [c, np.sqrt(1.0 - c * c)]]
    return np.array(out)


# validation: same 0.9, 0.8; different 0.1, 0.5 -> threshold 0.65 (all four right)
# test: same 0.9, 0.6, 0.3; different 0.7, 0.2, 0.1 -> 3 of 6 right at 0.65; EER 1/3
VAL = ([0.9, 0.8, 0.1, 0.5], [1, 1, 0, 0])
TEST = ([0.9, 0.6, 0.3, 0.7, 0.2, 0.1], [1, 1, 1, 0, 0, 0])


def _case() -> tuple[np.ndarray, Pairs]:
    cos = VAL[0] + TEST[0]
    emb = _pair_embeddings(cos)
    index = np.arange(2 * len(cos)).reshape(-1, 2)
    return emb, Pairs(index, np.array(VAL[1] + TEST[1]), np.array([0] * 4 + [1] * 6))


def test_exact_threshold_accuracy_and_eer() -> None:
    emb, pairs = _case()
    m = verification_metrics(emb, pairs)
    assert m["threshold"] == pytest.approx(0.65)
    assert m["val_accuracy"] == pytest.approx(100.0)
    assert m["accuracy"] == pytest.approx(50.0)
    assert m["eer"] == pytest.approx(100.0 / 3)


def test_eer_interpolates_between_thresholds() -> None:
    # same 0.9, 0.5; different 0.5, 0.1: FAR/FRR (1/2, 0) at 0.3 and (0, 1/2) at 0.7 -> EER 25 %
    assert equal_error_rate(np.array([0.9, 0.5, 0.5, 0.1]), np.array([1, 1, 0, 0])) == pytest.approx(25.0)
    # perfectly separated: EER 0; fully inverted: 100
    assert equal_error_rate(np.array([0.9, 0.8, 0.2]), np.array([1, 1, 0])) == pytest.approx(0.0)
    assert equal_error_rate(np.array([0.1, 0.8, 0.9]), np.array([1, 0, 0])) == pytest.approx(100.0)


def test_threshold_ties_take_the_lowest() -> None:
    # 0.4 and 0.6 both give 3 of 4 right: the lower one
    assert best_threshold(np.array([0.9, 0.5, 0.3, 0.7]), np.array([1, 1, 0, 0])) == pytest.approx(0.4)


def _identity_model(dim: int = 2) -> onnx.ModelProto:
    """embedding = input (a MatMul by the identity), dynamic batch."""
    w = numpy_helper.from_array(np.eye(dim, dtype=np.float32), "W")
    g = helper.make_graph([helper.make_node("MatMul", ["input", "W"], ["embedding"])], "ident",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", dim])],
                          [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", dim])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_evaluator_from_a_pairs_file(tmp_path: Path) -> None:
    emb, pairs = _case()
    path = tmp_path / "pairs.npz"
    np.savez(path, input=emb.astype(np.float32), pairs=pairs.index, same=pairs.same.astype(np.int64),
             split=pairs.test.astype(np.int64))
    model = _identity_model()
    ev = VerificationEvaluator.from_file(path, model)
    assert ev.output == "embedding" and not ev.shardable
    assert ev.evaluate(model) == pytest.approx(50.0)
    assert ev.last["eer"] == pytest.approx(100.0 / 3)
    assert ev.describe()["test_pairs"] == 6
    # the same through make_evaluator (what --evaluator verification builds)
    ds = Dataset({"input": emb.astype(np.float32)}, None, str(path))
    ev2 = make_evaluator("verification", dataset=ds, model=model)
    assert ev2.name == "verification" and ev2.unit == "%"
    assert ev2.evaluate(model) == pytest.approx(50.0)


@pytest.mark.parametrize("arrays, word", [
    ({"same": np.array([1, 0])}, "lacks"),
    ({"pairs": np.array([[0, 1], [2, 9]]), "same": np.array([1, 0])}, "indices"),
    ({"pairs": np.array([[0, 1], [2, 3]]), "same": np.array([1, 2])}, "'same'"),
    ({"pairs": np.array([[0, 1], [2, 3]]), "same": np.array([1, 1])}, "one same and one different"),
    ({"pairs": np.array([[0, 1], [2, 3]]), "same": np.array([1, 0]), "split": np.array([0, 1])},
     "one same and one different"),
])
def test_bad_pairs_files(tmp_path: Path, arrays: dict, word: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, input=np.zeros((4, 2), np.float32), **arrays)
    with pytest.raises(UserError, match=word):
        load_pairs(path, 4)


def _mlp_embedding(seed: int = 0) -> onnx.ModelProto:
    """input [N, 8] -> MatMul 8x32 -> Relu -> MatMul 32x4 -> embedding: the 32 hidden units are a group."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.normal(size=(8, 32)).astype(np.float32), "W1")
    b1 = numpy_helper.from_array(rng.normal(size=32).astype(np.float32) * 0.1, "B1")
    w2 = numpy_helper.from_array(rng.normal(size=(32, 4)).astype(np.float32) / 4, "W2")
    nodes = [helper.make_node("MatMul", ["input", "W1"], ["h"]), helper.make_node("Add", ["h", "B1"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["r"]), helper.make_node("MatMul", ["r", "W2"], ["embedding"])]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 8])],
                          [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 4])], [w1, b1, w2])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_cli_search_with_the_verification_evaluator(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(6, 8)) * 2
    labels = np.repeat(np.arange(6), 20)
    x = (centers[labels] + rng.normal(size=(len(labels), 8)) * 0.7).astype(np.float32)
    i, j = rng.integers(0, len(x), size=(2, 400))
    keep = i != j
    index = np.stack([i[keep], j[keep]], 1)
    same = (labels[index[:, 0]] == labels[index[:, 1]]).astype(np.int64)
    split = (np.arange(len(same)) % 2).astype(np.int64)
    onnx.save(_mlp_embedding(), tmp_path / "model.onnx")
    np.savez(tmp_path / "pairs.npz", input=x, pairs=index, same=same, split=split)
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "npcompile", str(tmp_path / "model.onnx"), "--search", "binary",
                        "--tolerance", "3", "--eval", str(tmp_path / "pairs.npz"), "--evaluator", "verification",
                        "--no-benchmark", "--no-plots", "-o", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((out / "report.json").read_text())
    acc = report["accuracy"]
    assert acc["metric"] == "verification" and acc["unit"] == "%"
    assert acc["evaluator"]["test_pairs"] == int(split.sum())
    assert acc["before"] > 70  # separable clusters
    assert acc["after"] >= acc["before"] - 3 - 1e-9
    assert report["summary"]["params_after"] < report["summary"]["params_before"]
