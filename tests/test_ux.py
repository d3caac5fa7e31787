"""Issue 15, through the CLI as a user runs it: every report true and complete, clear errors for
bad data and flags, warnings for silent no-ops, an output folder that holds one run's files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EX = ROOT / "examples" / "lenet_mnist"
LENET = EX / "model.onnx"


def run(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "npcompile", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def one_error(r: subprocess.CompletedProcess, code: int = 2) -> str:
    """The run failed with ``code`` and exactly one non-empty error line, no traceback."""
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("npcompile: error:")]
    assert len(errors) == 1, r.stderr
    msg = errors[0][len("npcompile: error:"):].strip()
    assert msg
    return msg


def test_bare_command_says_what_is_missing() -> None:
    assert "give a model" in one_error(run())


def test_junit_into_a_new_folder_and_onto_a_directory(tmp_path: Path) -> None:
    junit = tmp_path / "reports" / "ci" / "gates.xml"
    r = run(LENET, "--ratio", "0.3", "-o", tmp_path / "a", "--junit", junit, "--min-param-reduction", "0.1")
    assert r.returncode == 0, r.stderr
    assert "<testsuites" in junit.read_text() and f"JUnit {junit}" in r.stdout
    (tmp_path / "dir").mkdir()
    msg = one_error(run(LENET, "--ratio", "0.3", "-o", tmp_path / "b", "--junit", tmp_path / "dir"))
    assert "directory" in msg
    assert not (tmp_path / "b").exists()  # refused before any work


def test_output_folder_holds_only_this_runs_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (tmp_path / "notes.txt").write_text("mine")
    r = run(LENET, "--ratio", "0.3", "--target", "onnxruntime", "--runs", "3", "--warmup", "1", "--html", "-o", out)
    assert r.returncode == 0, r.stderr
    first = {p.name for p in out.iterdir()}
    assert {"report.html", "model.ort.onnx", "latency.png"} <= first
    wrote = [line for line in r.stdout.splitlines() if line.startswith("wrote ")][0]
    for name in first:
        assert name in wrote  # the "wrote" line names every file
    (out / "mine.txt").write_text("kept")
    r = run(LENET, "--ratio", "0.3", "-o", out, "--no-plots")
    assert r.returncode == 0, r.stderr
    assert {p.name for p in out.iterdir()} == {"model.onnx", "report.json", "report.md", "mine.txt"}
    assert json.loads((out / "report.json").read_text())["target"]["name"] == "onnx"


def test_sensitivity_table_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = run(LENET, "--target-flops", "0.6", "--sensitivity", "--eval", EX / "eval.npz", "-o", out)
    assert r.returncode == 0, r.stderr
    assert "could not draw" not in r.stderr
    assert (out / "sensitivity.png").stat().st_size > 1000
    md = (out / "report.md").read_text()
    table = md[md.index("## Sensitivity"):].splitlines()
    rows = [line for line in table if line.startswith("| /features/features.4/Conv | 32 |")]
    assert len(rows) == 1 and len(rows[0].split("|")) == 2 + 2 + 9  # nine fractions


def test_gates_that_cannot_be_judged_fail_at_the_start(tmp_path: Path) -> None:
    msg = one_error(run(LENET, "--ratio", "0.3", "--max-accuracy-drop", "1", "-o", tmp_path / "a"))
    assert "--eval" in msg
    msg = one_error(run(LENET, "--ratio", "0.3", "--min-speedup", "1.05", "-o", tmp_path / "b"))
    assert "onnxruntime" in msg
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_failed_gate_still_prints_the_summary(tmp_path: Path) -> None:
    r = run(LENET, "--ratio", "0.5", "--round-to", "1", "--eval", EX / "eval.npz", "--max-accuracy-drop", "0.1",
            "-o", tmp_path / "out")
    assert "accuracy drop" in one_error(r, code=1)
    assert "parameters" in r.stdout and "accuracy (%)" in r.stdout and "97.8" in r.stdout
    assert "gate max-accuracy-drop: FAIL" in r.stdout and "(a gate failed)" in r.stdout


def test_sparsity_is_visible_and_patterns_are_judged(tmp_path: Path) -> None:
    r = run(LENET, "--sparsity", "2:4", "-o", tmp_path / "a")
    assert r.returncode == 0, r.stderr
    row = [line for line in r.stdout.splitlines() if "non-zero parameters" in line]
    assert len(row) == 1 and "-4" in row[0]  # about half the weights of the sparse layers are zero
    assert "weight sparsity" in r.stdout
    assert "only on target tensorrt" in r.stderr
    for pattern in ("3:4", "1:8"):
        r = run(LENET, "--sparsity", pattern, "-o", tmp_path / pattern.replace(":", "_"))
        assert r.returncode == 0, r.stderr
        assert "no target runs it faster" in r.stderr


def test_dry_run_is_a_portable_pipeline(tmp_path: Path) -> None:
    r = run("examples/lenet_mnist/model.onnx", "--ratio", "0.3", "--train", "examples/lenet_mnist/train.npz",
            "--epochs", "1", "--dry-run", cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert f'train = "{EX / "train.npz"}"' in r.stdout
    pipe = tmp_path / "sub" / "p.toml"
    pipe.parent.mkdir()
    pipe.write_text(r.stdout)
    r = run(LENET, "--pipeline", pipe, "-o", tmp_path / "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run("examples/lenet_mnist/model.onnx", "--target-flops", "0.5", "--eval", "examples/lenet_mnist/eval.npz",
            "--dry-run", cwd=ROOT)
    assert r.returncode == 0 and "# evaluator = \"evaluator\": the one --eval" in r.stdout


def test_data_errors_are_one_line(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((3, 1, 28, 28), np.float32))
    assert ".npy" in one_error(run(LENET, "--ratio", "0.3", "--eval", tmp_path / "x.npy", "-o", tmp_path / "o"))
    (tmp_path / "t.npz").write_text("hello")
    msg = one_error(run(LENET, "--ratio", "0.3", "--calib", tmp_path / "t.npz", "--criterion", "apoz",
                        "-o", tmp_path / "o"))
    assert "not an .npz archive" in msg and "pickled" not in msg
    assert one_error(run(LENET, "--ratio", "0.3", "--epochs", "0", "-o", tmp_path / "o")) == "--epochs must be >= 1"
    msg = one_error(run(LENET, "--ratio", "0.3", "--input-shape", "input:1x1x27x28", "-o", tmp_path / "o"))
    assert "Expected: 28" in msg and "[ONNXRuntimeError]" not in msg
    x = np.load(EX / "eval.npz")
    np.savez(tmp_path / "f64.npz", input=x["input"][:50].astype(np.float64), labels=x["labels"][:50])
    r = run(LENET, "--ratio", "0.3", "--eval", tmp_path / "f64.npz", "-o", tmp_path / "o")
    assert r.returncode == 0 and "float64, converted to the model's float32" in r.stderr
    assert not (tmp_path / "o" / "model.onnx").exists() or r.returncode == 0


def test_silent_no_ops_warn(tmp_path: Path) -> None:
    r = run(LENET, "--ratio", "0.5", "--include", "nothing*", "-o", tmp_path / "a")
    assert r.returncode == 0 and "--include nothing* matches no channel group" in r.stderr
    assert "kept whole" not in r.stdout  # the groups were left out by --include, not by rounding
    r = run(LENET, "--ratio", "0.5", "--min-channels", "500", "-o", tmp_path / "b")
    assert r.returncode == 0 and "--min-channels 500 is at or above every prunable width" in r.stderr
    r = run(LENET, "--criterion", "maxout", "--calib", EX / "calib.npz", "-o", tmp_path / "c")
    assert r.returncode == 0 and "no prunable maxout units" in r.stderr


def test_collapse_to_chance_fails_unless_allowed(tmp_path: Path) -> None:
    args = (LENET, "--ratio", "0.97", "--round-to", "1", "--eval", EX / "eval.npz")
    msg = one_error(run(*args, "-o", tmp_path / "a"), code=1)
    assert "chance level" in msg and "--allow-collapse" in msg
    r = run(*args, "--allow-collapse", "-o", tmp_path / "b")
    assert r.returncode == 0, r.stderr


def test_rounding_that_keeps_a_group_whole_is_said(tmp_path: Path) -> None:
    r = run(LENET, "--ratio", "0.3", "--round-to", "16", "-o", tmp_path / "a")
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if line.startswith("kept whole by rounding to 16")]
    assert len(lines) == 1
    assert "/features/features.0/Conv (16)" in lines[0] and "/features/features.4/Conv (32)" in lines[0]
    r = run(LENET, "--ratio", "0.3", "--round-to", "1", "-o", tmp_path / "b")
    assert "kept whole" not in r.stdout


def test_to_torch_on_the_result(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import torch

    import npcompile

    result = npcompile.compile(str(LENET), ratio=0.5, round_to=1)
    module = result.to_torch()
    assert isinstance(module, torch.nn.Module) and any(p.requires_grad for p in module.parameters())
    y = module(torch.from_numpy(np.load(EX / "eval.npz")["input"][:4]))
    assert tuple(y.shape) == (4, 10)
