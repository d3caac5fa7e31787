"""examples/binary_search_vgg: train.py and run.py end to end with --quick (Fashion-MNIST, tiny
settings). Skipped only when the Fashion-MNIST files are not installed."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import npcompile

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "binary_search_vgg"

pytest.importorskip("torch")
pytestmark = pytest.mark.slow


def _train_module():
    spec = importlib.util.spec_from_file_location("binary_search_vgg_train", EXAMPLE / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(script: str, out: Path) -> str:
    r = subprocess.run([sys.executable, str(EXAMPLE / script), "--quick", "--out", str(out)], cwd=out.parent,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{script} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> tuple[Path, str, str]:
    train = _train_module()
    try:
        train.data_dir()
    except train.DataMissing as e:
        pytest.skip(str(e))
    out = tmp_path_factory.mktemp("bsvgg") / "work"
    train_log = _run("train.py", out)
    run_log = _run("run.py", out)
    return out, train_log, run_log


def test_missing_data_names_the_install_command(tmp_path: Path) -> None:
    train = _train_module()
    with pytest.raises(train.DataMissing, match="apt-get install -y dataset-fashion-mnist"):
        train.load_fashion_mnist("train", tmp_path)
    r = subprocess.run([sys.executable, str(EXAMPLE / "train.py"), "--quick", "--data", str(tmp_path),
                        "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert "dataset-fashion-mnist" in r.stderr
    assert not (tmp_path / "out").exists()


def test_run_py_without_train_outputs_says_what_to_run(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(EXAMPLE / "run.py"), "--quick", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert "train.py" in r.stderr


def test_train_writes_model_and_data(experiment) -> None:
    out, log, _ = experiment
    assert "eval accuracy" in log
    model = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["input"]
    assert model.opset_import[0].version == 13
    for name in ("train.npz", "val.npz", "eval.npz"):
        with np.load(out / name) as d:
            x, y = d["input"], d["labels"]
            assert x.dtype == np.float32 and x.shape[1:] == (1, 32, 32) and x.min() >= 0 and x.max() <= 1
            assert y.dtype == np.int64 and len(y) == len(x) and set(np.unique(y)) <= set(range(10))
    info = npcompile.inspect(str(out / "model.onnx"))
    convs = [g for g in info["groups"] if g["op"] == "Conv"]
    assert len(convs) == 13 and all(g["prunable"] for g in convs)


def test_run_prints_the_table_and_prunes(experiment) -> None:
    out, _, log = experiment
    assert "## Per-layer widths" in log and "## Results" in log
    for row in ("original", "binary search (paper, tolerance", "uniform magnitude (ratio"):
        assert row in log
    assert (out / "results.md").read_text() in log
    results = json.loads((out / "results.json").read_text())
    original = results["original"]
    for method in ("search", "uniform"):
        r = results[method]
        assert 0 < r["param_reduction"] < 1 and 0 < r["flops_reduction"] < 1
        assert r["params"] < original["params"] and r["flops"] < original["flops"]
        assert 0 <= r["test_pruned"] <= 100 and 0 <= r["test_finetuned"] <= 100
    assert len(results["widths"]) == 15
    assert any(w["search"] < w["original"] for w in results["widths"])

    # the fine-tuned models are valid, smaller, and run with the original input and output shapes
    import onnxruntime as ort

    with np.load(out / "eval.npz") as d:
        x = d["input"][:50]
    for path in (out / "search" / "round1" / "finetuned" / "model.onnx", out / "uniform" / "finetuned" / "model.onnx"):
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
        stats = npcompile.inspect(model)["stats"]
        assert stats["params"] < original["params"]
        logits = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
        assert logits.shape == (50, 10) and np.isfinite(logits).all()
        report = json.loads((path.parent / "report.json").read_text())
        assert report["finetune"]["steps"] >= 1
