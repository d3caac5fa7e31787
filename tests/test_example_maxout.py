"""examples/maxout_lenet end to end, quick: train a maxout LeNet-5 on a few hundred MNIST images,
prune it with the command line (maxout neurons, whole units, conv filters) and check the table,
the models and the reports; and the issue's exact command form."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from npcompile.runtime.verify import make_session

pytest.importorskip("torch")
pytest.importorskip("mlxtend")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "maxout_lenet"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
UNITS, K = 64, 4


def _run(args: list[str], cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{args} exited {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """WORK folder with mnist-quick/ as train.py --quick writes it."""
    work = tmp_path_factory.mktemp("maxout_lenet")
    _run([str(EXAMPLE / "train.py"), "--dataset", "mnist", "--quick", "--out", str(work / "mnist-quick")])
    return work


def _params(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)


def _maxout_units_k(model: onnx.ModelProto) -> tuple[int, int]:
    """(units, k) from the Reshape -> ReduceMax of the maxout layer (target: Concat of batch, units, k)."""
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    consts.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node
                   if n.op_type == "Constant"})
    producer = {o: n for n in model.graph.node for o in n.output}
    (reduce,) = [n for n in model.graph.node if n.op_type == "ReduceMax"]
    reshape = producer[reduce.input[0]]
    assert reshape.op_type == "Reshape"
    if reshape.input[1] in consts:
        target = consts[reshape.input[1]].reshape(-1)
    else:
        concat = producer[reshape.input[1]]
        assert concat.op_type == "Concat"
        target = np.concatenate([consts[i].reshape(-1) for i in concat.input[1:]])
    return int(target[-2]), int(target[-1])


def _report_k(report: dict) -> tuple[int, int]:
    """k before and after, from the report's neuron and unit groups (neurons / units)."""
    groups = {g["name"]: g for g in report["groups"]}
    (units,) = [g for g in report["groups"] if g["op"] == "Maxout"]
    neurons = groups[units["name"].removesuffix(":units")]
    return (neurons["width_before"] // units["width_before"], neurons["width_after"] // units["width_after"])


def test_quick_example_prints_table_and_prunes(quick: Path) -> None:
    rows_json = quick / "rows.json"
    r = _run([str(EXAMPLE / "run.py"), "--quick", "--dataset", "mnist", "--work", str(quick), "--json",
              str(rows_json)])
    out = r.stdout
    assert "MNIST" in out and "test accuracy" in out and "removed" in out, out
    for label in ("maxout neurons, 3 steps", "maxout neurons + units, 2 steps", "+ conv filters (APoZ)",
                  "maxout neurons + weight sparsity"):
        assert label in out, out
    rows = json.loads(rows_json.read_text())
    assert len(rows) == 4
    original = onnx.load(quick / "mnist-quick" / "model.onnx")
    assert _maxout_units_k(original) == (UNITS, K)
    n0 = _params(original)
    x = np.load(quick / "mnist-quick" / "eval.npz")["input"][:5]
    for row in rows:
        model = onnx.load(row["model"])
        onnx.checker.check_model(model, full_check=True)
        assert _params(model) == row["params_after"] < n0 == row["params_before"]
        assert row["acc_before"] > 0 and 0 <= row["acc_after"] <= 100
        units, k = _maxout_units_k(model)
        assert [units, k] == row["maxout_after"]
        assert k < K  # the maxout reshape was rewritten
        y = make_session(model).run(None, {"input": x})[0]
        assert y.shape == (5, 10) and np.isfinite(y).all()
    neurons, units, conv, sparse = rows
    assert neurons["maxout_after"] == [UNITS, 1]  # 3 steps: k 4 -> 1
    assert units["maxout_after"] == [UNITS // 2, 2]  # 2 steps and 16 units per step
    assert conv["params_after"] < units["params_after"]  # conv filters removed on top
    assert neurons["params_after"] / n0 < 0.34
    # neuron pruning (k 4 -> 2) followed by 92 % global weight sparsity: >= 95 % of non-zeros removed
    assert sparse["maxout_after"] == [UNITS, 2]
    assert sparse["nonzero_after"] < sparse["params_after"]
    assert 1 - sparse["nonzero_after"] / n0 >= 0.95
    sparse_model = onnx.load(sparse["model"])
    nonzero = sum(int(np.count_nonzero(numpy_helper.to_array(t))) for t in sparse_model.graph.initializer
                  if t.data_type == onnx.TensorProto.FLOAT)
    assert nonzero == sparse["nonzero_after"]
    conv_model = onnx.load(conv["model"])
    widths = [numpy_helper.to_array(t).shape[0] for t in conv_model.graph.initializer
              if t.name.endswith("weight") and len(t.dims) == 4]
    assert widths and sum(widths) < 20 + 50


def test_issue_command_form(quick: Path, tmp_path: Path) -> None:
    """npcompile lenet_maxout.onnx --criterion maxout --calib C.npz --train T.npz --eval E.npz --steps 3 -o OUT"""
    data = quick / "mnist-quick"
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "npcompile", str(data / "model.onnx"), "--criterion", "maxout",
                        "--calib", str(data / "calib.npz"), "--train", str(data / "train.npz"),
                        "--eval", str(data / "eval.npz"), "--steps", "3", "-o", str(out)],
                       env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "accuracy (%)" in r.stdout, r.stdout  # the summary table shows accuracy before and after
    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == "maxout" and report["criterion"] == "maxout"
    assert _report_k(report) == (K, 1)
    acc = report["accuracy"]
    assert {"before", "after"} <= acc.keys() and 0 < acc["before"] <= 100 and 0 <= acc["after"] <= 100
    assert report["summary"]["params_after"] < report["summary"]["params_before"]
    assert [p["name"] for p in report["passes"]].count("finetune") == 3
    model = onnx.load(out / "model.onnx")
    onnx.checker.check_model(model, full_check=True)
    assert _maxout_units_k(model) == (UNITS, 1)
