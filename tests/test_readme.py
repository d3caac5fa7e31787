"""The README's commands stay true: its npcompile command runs as written."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


#: accuracy points the README's first command may lose ("within 1 point")
README_TOLERANCE = 1.0


def test_readme_main_command_runs(tmp_path: Path) -> None:
    """The first command, verbatim (after the install part), in a folder where its relative paths
    resolve: it prunes >= 30 % of the FLOPs, keeps accuracy within the stated tolerance, measures
    latency, and says on the terminal which groups stayed whole."""
    text = (ROOT / "README.md").read_text()
    first = re.search(r"```bash\n(.+?)\n```", text, re.S).group(1)
    assert "pip install" in first and "-e '.[torch]'" in first
    assert f"within {README_TOLERANCE:g} point" in text
    args = shlex.split(first[first.index("npcompile "):])[1:]
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    r = subprocess.run([sys.executable, "-m", "npcompile", *args], cwd=tmp_path, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    out = tmp_path / args[args.index("-o") + 1]
    assert (out / "model.onnx").is_file()
    assert (out / "report.md").read_text().startswith("# npcompile report")
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["flops_reduction"] >= 0.30
    acc = report["accuracy"]
    assert acc["before"] == pytest.approx(97.8)
    assert acc["after"] >= acc["before"] - README_TOLERANCE, acc
    assert report["latency"]["before"]["p50_ms"] > 0 and report["latency"]["speedup"] > 0
    # the terminal shows accuracy before/after and says, in one line, what rounding kept whole
    assert "accuracy" in r.stdout and "97.8" in r.stdout
    whole = [line for line in r.stdout.splitlines() if line.startswith("kept whole by rounding to 16")]
    assert len(whole) == 1 and "/features/features.0/Conv (16)" in whole[0]
    assert any(line.startswith("frozen (never pruned): /classifier/classifier.5/Gemm") for line in
               r.stdout.splitlines())
    # the training split ships and is disjoint from the test images
    train = np.load(ROOT / "examples" / "lenet_mnist" / "train.npz")
    test = np.load(ROOT / "examples" / "lenet_mnist" / "eval.npz")
    assert train["input"].shape == (1000, 1, 28, 28) and train["labels"].shape == (1000,)
    seen = {x.tobytes() for x in test["input"]}
    assert not any(x.tobytes() in seen for x in train["input"])


def test_readme_test_command_is_ci_command() -> None:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.+?)\n```", text, re.S)
    test_cmd = blocks[1].split("&&")[-1].strip()
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd in ci
    assert "torch==2.13.0" in blocks[1] and "torch==2.13.0" in ci
