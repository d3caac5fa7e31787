"""examples/maxout_vgg_verification end to end, quick: train the maxout VGG on a few hundred
Fashion-MNIST images, prune it with the command line (maxout neurons in steps, then weight
sparsity, each fine-tuned) judged by the built-in verification evaluator, and check the table,
the models and the reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from npcompile.runtime.verification import VerificationEvaluator

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "maxout_vgg_verification"
DATA = Path(os.environ.get("FASHION_MNIST_DIR") or "/usr/share/datasets/fashion-mnist")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

pytestmark = pytest.mark.skipif(not (DATA / "train-images-idx3-ubyte.gz").is_file(),
                                reason="Fashion-MNIST missing: apt-get install -y dataset-fashion-mnist")


def _run(args: list[str]) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, *args], env=ENV, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"{args} exited {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def test_quick_example(tmp_path: Path) -> None:
    work = tmp_path / "work"
    _run([str(EXAMPLE / "train.py"), "--quick", "--out", str(work)])
    model = onnx.load(str(work / "model.onnx"))
    assert [o.name for o in model.graph.output] == ["logits", "embedding"]
    pairs = np.load(work / "pairs.npz")
    assert set(pairs.files) >= {"input", "pairs", "same", "split"} and pairs["split"].any()
    rows_json = tmp_path / "rows.json"
    r = _run([str(EXAMPLE / "run.py"), "--quick", "--work", str(work), "--steps", "2", "--json", str(rows_json)])
    assert "maxout neurons" in r.stdout and "+ weight sparsity" in r.stdout and "EER" in r.stdout, r.stdout
    rows = json.loads(rows_json.read_text())
    neurons, sparse = rows
    # two maxout steps: k 4 -> 2 in every maxout layer, about half of the parameters
    assert neurons["maxout"] == "k 4->2"
    assert 0.45 < 1 - neurons["params_after"] / neurons["params_before"] < 0.55
    # global sparsity 0.5 (run.py's default) of the weights: about half of all parameters left non-zero
    # (biases and norm parameters are not sparsified)
    assert 0.45 < sparse["nonzero_after"] / sparse["params_after"] < 0.55
    for name in ("neurons", "sparse"):
        rep = json.loads((work / "out" / name / "report.json").read_text())
        assert rep["accuracy"]["metric"] == "verification"
        pruned = onnx.load(str(work / "out" / name / "model.onnx"))
        onnx.checker.check_model(pruned)
        m = VerificationEvaluator.from_file(work / "pairs.npz", pruned).metrics(pruned)
        assert m["accuracy"] == pytest.approx(rep["accuracy"]["after"])
        assert 0 <= m["eer"] <= 100
    # the quick model is far from converged; pruning with fine-tuning keeps it well above chance
    assert sparse["accuracy_after"] > 55
