"""examples/vit_fashion end to end, quick: train a 2-block ViT on 2000 Fashion-MNIST images, prune
its heads and MLP neurons (and the hidden width) with fine-tuning, and check the table, the models
and the figures it writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from npcompile.runtime.verify import make_session

pytest.importorskip("torch")
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "vit_fashion"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def _run(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, *args], env=ENV, capture_output=True, text=True, timeout=timeout)
    if r.returncode == 2 and "Fashion-MNIST not found" in r.stderr:
        pytest.skip("Fashion-MNIST is not installed (apt-get install -y dataset-fashion-mnist)")
    assert r.returncode == 0, f"{args} exited {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("vit_fashion")
    _run([str(EXAMPLE / "train.py"), "--quick", "--out", str(out)])
    return out


def test_quick_example_prunes_heads_mlp_and_hidden(work: Path) -> None:
    r = _run([str(EXAMPLE / "run.py"), "--quick", "--work", str(work)])
    out = r.stdout
    for text in ("encoder params", "test accuracy", "MFLOPs", "ORT ms", "heads + MLP + hidden width",
                 "heads per block"):
        assert text in out, out
    rows = json.loads((work / "results.json").read_text())
    assert [row["pruning"] for row in rows] == ["heads + MLP", "heads + MLP + hidden width"]
    x = np.load(work / "eval.npz")["input"][:3]
    for row in rows:
        model = onnx.load(row["model"])
        onnx.checker.check_model(model, full_check=True)
        y = make_session(model).run(None, {"input": x})[0]
        assert y.shape == (3, 10) and np.isfinite(y).all()
        assert row["encoder_params_after"] < 0.7 * row["encoder_params_before"]
        assert row["flops_after"] < row["flops_before"]
        assert 0 < row["acc_before"] <= 100 and 0 <= row["acc_after"] <= 100
        assert row["heads"] and all(after < before for before, after in row["heads"])
        for batch in ("1", "64"):
            assert row["latency_before_ms"][batch] > 0 and row["latency_after_ms"][batch] > 0
    heads_mlp, hidden = rows
    assert hidden["encoder_params_after"] < heads_mlp["encoder_params_after"] * 1.2
    # the hidden width shrank: the classifier reads fewer than 48 features
    model = onnx.load(hidden["model"])
    (gemm,) = [n for n in model.graph.node if n.op_type == "Gemm"]
    w = next(t for t in model.graph.initializer if t.name == gemm.input[1])
    assert min(w.dims) == 10 and max(w.dims) < 48


def test_run_without_training_says_what_to_do(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(EXAMPLE / "run.py"), "--work", str(tmp_path)], env=ENV,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "train.py" in r.stderr
