"""The Python API: paths, ModelProto and torch.nn.Module inputs; inspect; onnx's shipped models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import npcompile
from npcompile.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
LENET = ROOT / "examples" / "lenet_mnist" / "model.onnx"
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def test_compile_path_and_proto_agree(tmp_path: Path) -> None:
    a = npcompile.compile(str(LENET), ratio=0.3, round_to=1, benchmark=False)
    b = npcompile.compile(onnx.load(LENET), ratio=0.3, round_to=1, benchmark=False)
    assert a.model.SerializeToString() == b.model.SerializeToString()
    assert a.files == {}  # nothing written without an output directory
    out = npcompile.compile(LENET, tmp_path / "o", ratio=0.3, benchmark=False)
    assert set(out.files) == {"model.onnx", "report.json", "report.md", "widths.png"}


def test_html_report_and_plots(tmp_path: Path) -> None:
    out = npcompile.compile(LENET, tmp_path / "o", ratio=0.5, round_to=1, target="onnxruntime", runs=5, warmup=1,
                            html=True)
    assert {"widths.png", "latency.png", "report.html"} <= set(out.files)
    assert (tmp_path / "o" / "widths.png").read_bytes().startswith(b"\x89PNG")
    page = (tmp_path / "o" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "<table>" in page
    md = (tmp_path / "o" / "report.md").read_text()
    assert "](widths.png)" in md and "](latency.png)" in md
    lat = out.report["latency"]
    # --runs per round at least (rounds after the first last min_round_seconds: more calls for a tiny model)
    assert len(lat["after"]["samples_ms"]) >= 5 * lat["rounds"] and lat["rounds"] >= 2


def test_compile_torch_module_keeps_dynamic_batch() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                              torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 4))
    result = npcompile.compile(net, example_inputs=torch.randn(1, 3, 16, 16), ratio=0.5, round_to=1,
                               benchmark=False)
    dim0 = result.model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.HasField("dim_value")
    assert result.report["summary"]["params_after"] < result.report["summary"]["params_before"]
    widths = {g["name"]: (g["width_before"], g["width_after"]) for g in result.report["groups"]}
    assert sorted(w for w in widths.values() if w[0] != w[1]) == [(16, 8), (16, 8)]
    import onnxruntime as ort

    sess = ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"input": np.zeros((5, 3, 16, 16), np.float32)})[0].shape == (5, 4)


def test_torch_module_without_example_inputs_is_a_user_error() -> None:
    with pytest.raises(UserError, match="example_inputs"):
        npcompile.compile(torch.nn.Linear(3, 3), ratio=0.3)


def test_unknown_keyword_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown option"):
        npcompile.compile(LENET, ratoi=0.3)


def test_inspect_reports_groups_and_layers() -> None:
    info = npcompile.inspect(LENET)
    assert [g["width"] for g in info["groups"]] == [16, 32, 120, 84, 10]
    assert info["stats"]["flops"] > 0
    assert [layer["op"] for layer in info["stats"]["layers"]] == ["Conv", "Conv", "Gemm", "Gemm", "Gemm"]


@pytest.mark.parametrize("path", sorted(LIGHT.glob("light_*.onnx")), ids=lambda p: p.stem)
def test_onnx_light_models_inspect_and_prune(path: Path) -> None:
    info = npcompile.inspect(path)
    assert info["groups"]
    assert all(g["frozen"] or g["prunable"] or g["width"] == 1 or g["pruned_with"] for g in info["groups"])
    # compile verifies: checker, and ONNX Runtime runs original and result with equal output shapes
    result = npcompile.compile(path, ratio=0.3, round_to=1, benchmark=False)
    assert np.isfinite(result.report["summary"]["max_abs_diff"])
    assert result.report["verification"]["outputs"][0]["shape"][0] in (1, 2)  # batch fixed at 1, or probe 2
    if any(g["prunable"] for g in info["groups"]):
        assert result.report["summary"]["params_after"] < result.report["summary"]["params_before"]


def test_latency_at_several_batch_sizes_and_width_flags() -> None:
    res = npcompile.compile(LENET, ratio=0.3, round_to=3, target="onnxruntime", runs=5, warmup=1,
                            batch_sizes=[1, 4])
    lat = res.report["latency"]
    assert [row["batch"] for row in lat["batches"]] == [1, 4]
    assert all(row["before_p50_ms"] > 0 and row["after_p50_ms"] > 0 for row in lat["batches"])
    lanes = res.report["rounding"]["target_default"]
    flagged = {f["group"] for f in res.report["width_flags"]}
    for g in res.report["groups"]:
        bad = g["width_after"] != g["width_before"] and g["width_after"] % lanes != 0
        assert (g["name"] in flagged) == bad
    assert "CPUExecutionProvider" in res.report["target"]["info"]["providers_available"]


def test_sparsity_after_pruning_is_wired() -> None:
    res = npcompile.compile(LENET, ratio=0.3, sparsity="2:4", benchmark=False)
    r = res.report
    assert r["rounding"]["round_to"] % 4 == 0 and "2:4" in r["rounding"]["source"]
    assert [p["name"] for p in r["passes"]][-2:] == ["sparsity", "cleanup"]
    assert r["summary"]["nonzero_params_after"] < r["summary"]["params_after"]
    assert r["sparsity"]["pattern"] == "2:4" or "2:4" in str(r["sparsity"]["summary"])
    lossy = npcompile.compile(LENET, sparsity=0.5, benchmark=False)  # no pruning option: dead channels + sparsity
    assert lossy.report["mode"] == "sparsity"
    assert lossy.report["summary"]["nonzero_reduction"] > 0.45


def test_target_latency_budget_probes_and_selects(tmp_path) -> None:
    try:  # on a busy machine the plan may miss: the gate then fails, the result is still there
        res = npcompile.compile(LENET, target_latency=0.7, target="onnxruntime", runs=5, warmup=1, benchmark=False,
                                latency_cache=str(tmp_path), latency_max_seconds=2)
    except npcompile.errors.GateError as e:
        assert "target-latency" in str(e.result.report["gates"]) and "missed by" in str(e)
        res = e.result
    lb = res.report["latency-budget"]
    assert 1 <= len(lb["attempts"]) <= 4 and lb["original_ms"] > 0
    assert all(0 < a["predicted"] < 1 and a["low"] <= a["measured"] <= a["high"] for a in lb["attempts"])
    assert res.report["mode"] == "budget"
    assert res.report["summary"]["flops_after"] < res.report["summary"]["flops_before"]


def test_training_free_reconstruction_recovers_accuracy() -> None:
    ex = LENET.parent
    common = {"ratio": 0.5, "round_to": 1, "eval": str(ex / "eval.npz"), "benchmark": False, "plots": False}
    plain = npcompile.compile(LENET, **common).report["accuracy"]
    rec = npcompile.compile(LENET, reconstruct=True, calib=str(ex / "calib.npz"), **common).report
    lost = plain["before"] - plain["after"]
    assert lost > 0
    assert rec["accuracy"]["after"] >= plain["after"] + lost / 2  # at least half of the loss recovered
    assert [p["name"] for p in rec["passes"]] == ["magnitude", "select", "reconstruct", "cleanup"]
    assert rec["reconstruction"]["layers"]
    with pytest.raises(UserError, match="calib"):
        npcompile.compile(LENET, ratio=0.5, reconstruct=True)


def test_include_exclude_apply_to_ratio_selection() -> None:
    res = npcompile.compile(LENET, ratio=0.5, round_to=1, include=["*features*"], benchmark=False, plots=False)
    changed = {g["name"] for g in res.report["groups"] if g["width_after"] != g["width_before"]}
    assert changed and all("features" in n for n in changed)
    assert isinstance(res.report["plan"], list) and len(res.report["plan"]) == 1
    res = npcompile.compile(LENET, ratio=0.5, round_to=1, exclude=["*features*"], benchmark=False, plots=False)
    changed = {g["name"] for g in res.report["groups"] if g["width_after"] != g["width_before"]}
    assert changed and not any("features" in n for n in changed)
