"""The command line as a user runs it: outputs, exit codes, one-line errors, nothing written on error."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

ROOT = Path(__file__).resolve().parents[1]
LENET = ROOT / "examples" / "lenet_mnist" / "model.onnx"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "npcompile", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=600)


def ort_run(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return np.load(ROOT / "examples" / "lenet_mnist" / "eval.npz")["input"][:64]


def test_main_job_ratio(tmp_path: Path, digits: np.ndarray) -> None:
    out = tmp_path / "out"
    r = run(LENET, "--criterion", "magnitude", "--ratio", "0.3", "--round-to", "1", "-o", out,
            "--target", "onnxruntime", "--runs", "5", "--warmup", "1")
    assert r.returncode == 0, r.stderr
    for name in ("model.onnx", "report.json", "report.md", "model.ort.onnx"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert report["schema"] == "npcompile.report.document" and report["version"] == 1
    s = report["summary"]
    assert s["params_after"] < s["params_before"]
    assert s["flops_after"] < s["flops_before"]
    assert report["rounding"]["round_to"] == 1
    assert report["latency"]["before"]["p50_ms"] > 0 and report["latency"]["after"]["p99_ms"] > 0
    assert {"p50_ms", "p90_ms", "p99_ms"} <= set(report["latency"]["after"])
    model = onnx.load(out / "model.onnx")
    onnx.checker.check_model(model)
    y = ort_run(out / "model.onnx", digits)
    assert y.shape == (64, 10)
    # the pruned widths in the report match the model
    gemm = {layer["name"]: layer for layer in report["layers"]}
    assert any(layer["out_after"] < layer["out_before"] for layer in gemm.values())
    assert "Frozen groups" in (out / "report.md").read_text()


def test_subcommand_form_and_default_rounding(tmp_path: Path) -> None:
    r = run("compile", LENET, "--ratio", "0.5", "-o", tmp_path / "o", "--target", "onnxruntime",
            "--no-benchmark")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    rt = report["rounding"]
    assert rt["round_to"] == rt["target_default"] and rt["round_to"] in (4, 8, 16)
    for layer in report["layers"]:
        if layer["out_after"] != layer["out_before"]:
            assert layer["out_after"] % rt["round_to"] == 0


def test_lossless_without_options_keeps_outputs(tmp_path: Path, digits: np.ndarray) -> None:
    r = run(LENET, "-o", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    assert "lossless" in r.stdout
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["mode"] == "lossless"
    np.testing.assert_allclose(ort_run(tmp_path / "o" / "model.onnx", digits), ort_run(LENET, digits),
                               rtol=1e-5, atol=1e-5)


def test_threshold_zero_removes_planted_dead_channels(tmp_path: Path, digits: np.ndarray) -> None:
    from npcompile.graph.model_io import load_model
    from npcompile.graph.shapes import probe_shapes
    from npcompile.testing import plant_dead_channels

    model = load_model(LENET)
    planted, _ = plant_dead_channels(model, probe_shapes(model), 0.25, seed=1)
    src = tmp_path / "planted.onnx"
    onnx.save(planted, src)
    r = run(src, "--target", "onnx", "--criterion", "magnitude", "--threshold", "0", "-o", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["summary"]["max_rel_diff"] <= 1e-4
    assert report["summary"]["channels_removed"] > 0
    np.testing.assert_allclose(ort_run(tmp_path / "o" / "model.onnx", digits), ort_run(src, digits),
                               rtol=1e-4, atol=1e-4)


def test_version_passes_targets_inspect() -> None:
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("npcompile ")
    r = run("passes")
    assert r.returncode == 0
    for name in ("magnitude", "select", "prune", "dead-channels", "cleanup"):
        assert name in r.stdout
    r = run("targets")
    assert r.returncode == 0 and "onnxruntime" in r.stdout and "tensorrt" in r.stdout
    r = run("inspect", LENET, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    widths = sorted(g["width"] for g in info["groups"])
    assert widths == [10, 16, 32, 84, 120]
    frozen = [g for g in info["groups"] if g["frozen"]]
    assert len(frozen) == 1 and "graph output" in frozen[0]["frozen"][0]
    assert info["stats"]["params"] > 100_000
    r = run("inspect", LENET)
    assert r.returncode == 0 and "prunable" in r.stdout


def _assert_user_error(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for w in words:
        assert w.lower() in lines[0].lower(), lines[0]


@pytest.mark.parametrize("case", ["missing", "directory", "empty", "corrupt", "text"])
def test_bad_model_files(tmp_path: Path, case: str) -> None:
    path = tmp_path / "m.onnx"
    if case == "directory":
        path.mkdir()
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "corrupt":
        path.write_bytes(LENET.read_bytes()[: 5000])
    elif case == "text":
        path.write_text("hello, I am not a model\n" * 20)
    before = path.read_bytes() if path.is_file() else None
    out = tmp_path / "out"
    r = run(path, "--ratio", "0.3", "-o", out)
    _assert_user_error(r)
    assert not out.exists()
    if before is not None:
        assert path.read_bytes() == before


@pytest.mark.parametrize("args,word", [
    (["--ratio", "1.5"], "ratio"),
    (["--ratio", "-0.1"], "ratio"),
    (["--threshold", "-1"], "threshold"),
    (["--ratio", "0.3", "--threshold", "0"], "either"),
    (["--criterion", "nonsense", "--ratio", "0.2"], "criterion"),
    (["--target", "nonsense"], "target"),
    (["--round-to", "0", "--ratio", "0.2"], "round-to"),
    (["--bogus-option"], "bogus"),
    (["--input-shape", "input:1xAx28x28"], "input-shape"),
    (["--input-shape", "nosuch:1x1x28x28"], "unknown input"),
    (["--pass", "no_such_module:Pass"], "no_such_module"),
])
def test_bad_options(tmp_path: Path, args: list[str], word: str) -> None:
    out = tmp_path / "out"
    r = run(LENET, *args, "-o", out)
    _assert_user_error(r, word)
    assert not out.exists()


def test_tensorrt_missing_names_install_and_writes_nothing(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    out = tmp_path / "out"
    r = run(LENET, "--target", "tensorrt", "-o", out)
    _assert_user_error(r, "pip install")
    assert not out.exists()


def test_output_may_not_overwrite_input(tmp_path: Path) -> None:
    src = tmp_path / "model.onnx"
    shutil.copy(LENET, src)
    before = src.read_bytes()
    r = run(src, "--ratio", "0.3", "-o", tmp_path)
    _assert_user_error(r, "overwrite")
    assert src.read_bytes() == before


def test_unwritable_output(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run(LENET, "--ratio", "0.3", "-o", blocker / "sub")
    _assert_user_error(r)


def test_same_inputs_give_identical_model_bytes(tmp_path: Path) -> None:
    for name in ("a", "b"):
        r = run(LENET, "--ratio", "0.4", "--round-to", "1", "-o", tmp_path / name, "--no-benchmark")
        assert r.returncode == 0, r.stderr
    assert (tmp_path / "a" / "model.onnx").read_bytes() == (tmp_path / "b" / "model.onnx").read_bytes()


def test_finetune_and_sparsity_flags_reach_the_pipeline(tmp_path: Path) -> None:
    """--distill, --threads, --epochs (default: chosen by the pass) and --sparsity-steps as the
    pipeline --dry-run prints; bad values exit 2 with one line."""
    train = ROOT / "examples" / "lenet_mnist" / "calib.npz"
    r = run(LENET, "--ratio", "0.3", "--train", train, "--distill", "0.5", "--threads", "1", "--sparsity", "0.9",
            "--sparsity-steps", "3", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count('name = "finetune"') == 4  # after pruning, then after each of the 3 sparsity steps
    assert "distill = 0.5" in r.stdout and "threads = 1" in r.stdout and "epochs" not in r.stdout
    levels = [line.split("=")[1].strip().strip('"') for line in r.stdout.splitlines() if line.startswith("sparsity =")]
    assert [float(v) for v in levels] == pytest.approx([1 - 0.1 ** (1 / 3), 1 - 0.1 ** (2 / 3), 0.9], abs=1e-6)
    for bad in (["--distill", "1.5"], ["--sparsity-steps", "0"], ["--sparsity", "2:4", "--sparsity-steps", "2"]):
        r = run(LENET, "--ratio", "0.3", "--train", train, *bad, "-o", tmp_path / "out")
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (bad, r.stderr)
        assert not (tmp_path / "out").exists()
