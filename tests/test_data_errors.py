"""Bad data files and bad search options: exit 2 with one line, nothing written."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EX = ROOT / "examples" / "lenet_mnist"
LENET = EX / "model.onnx"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "npcompile", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def _data(tmp: Path, case: str) -> Path:
    good = np.load(EX / "eval.npz")
    x, y = good["input"][:50], good["labels"][:50]
    p = tmp / "data.npz"
    if case == "pickled":
        np.savez(p, input=np.array([pickle.dumps(1)], dtype=object), labels=y)
    elif case == "wrong-name":
        np.savez(p, images=x, labels=y)
    elif case == "wrong-shape":
        np.savez(p, input=x[:, :, :20, :20], labels=y)
    elif case == "wrong-dtype":
        np.savez(p, input=x.astype(np.int32), labels=y)
    elif case == "nan":
        x = x.copy()
        x[3, 0, 0, 0] = np.nan
        np.savez(p, input=x, labels=y)
    elif case == "labels-mismatch":
        np.savez(p, input=x, labels=y[:10])
    elif case == "labels-float":
        np.savez(p, input=x, labels=y.astype(np.float32))
    elif case == "labels-out-of-range":
        np.savez(p, input=x, labels=y + 100)
    elif case == "not-npz":
        p.write_text("nope")
    return p


CASES = ["pickled", "wrong-name", "wrong-shape", "wrong-dtype", "nan", "labels-mismatch", "labels-float",
         "labels-out-of-range", "not-npz"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("flag", ["--eval", "--calib"])
def test_bad_data_files(tmp_path: Path, case: str, flag: str) -> None:
    data = _data(tmp_path, case)
    if flag == "--calib" and case.startswith("labels"):
        pytest.skip("calibration data ignores labels")
    extra = ["--search", "binary", "--tolerance", "1"] if flag == "--eval" else ["--criterion", "apoz", "--ratio",
                                                                                  "0.3"]
    before = data.read_bytes()
    r = run(LENET, flag, data, *extra, "--no-benchmark", "-o", tmp_path / "out")
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()
    assert data.read_bytes() == before


@pytest.mark.parametrize("args,word", [
    (["--search", "binary", "--tolerance", "1", "--evaluator", "no_such_mod:fn"], "no_such_mod"),
    (["--search", "binary", "--tolerance", "1", "--evaluator", "os:getcwd"], "raised"),
    (["--search", "binary", "--tolerance", "-1", "--eval", str(EX / "eval.npz")], "tolerance"),
    (["--search", "binary", "--tolerance", "101", "--eval", str(EX / "eval.npz")], "tolerance"),
    (["--search", "binary", "--eval", str(EX / "eval.npz")], "tolerance"),
    (["--search", "linear", "--tolerance", "1", "--eval", str(EX / "eval.npz")], "search"),
    (["--search", "binary", "--tolerance", "1"], "eval"),
    (["--target-flops", "1.5"], "target-flops"),
    (["--ratio", "0.3", "--search", "binary", "--tolerance", "1", "--eval", str(EX / "eval.npz")], "one way"),
    (["--sparsity", "3:2"], "n:m"),
    (["--sparsity", "1.2"], "sparsity"),
    (["--sparsity", "2:4", "--sparsity-scope", "global"], "global"),
    (["--criterion", "maxout", "--ratio", "0.2"], "calib"),
    (["--epochs", "0", "--ratio", "0.2"], "epochs"),
])
def test_bad_search_and_data_options(tmp_path: Path, args: list[str], word: str) -> None:
    r = run(LENET, *args, "--no-benchmark", "-o", tmp_path / "out")
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and word.lower() in lines[0].lower(), r.stderr
    assert not (tmp_path / "out").exists()


def test_search_through_the_cli_respects_tolerance_and_bound(tmp_path: Path) -> None:
    import json
    import math

    r = run(LENET, "--search", "binary", "--tolerance", "1", "--eval", EX / "eval.npz", "--round-to", "1",
            "--no-benchmark", "-o", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    acc = rep["accuracy"]
    assert acc["before"] - acc["after"] <= 1.0 + 1e-9
    assert rep["summary"]["params_after"] < rep["summary"]["params_before"]
    search = rep["binary-search"]
    widths = [g["width_before"] for g in rep["groups"] if g["prunable"]]
    assert search["evaluations"] <= sum(math.ceil(math.log2(n + 1)) for n in widths) + 1
    assert len(search["probes"]) == search["evaluations"] - 1
