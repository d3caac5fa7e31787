"""Heads before/after per attention block in ``inspect`` (API and CLI) and in the compile report
(report.json, report.md, the terminal summary), on a ViT (multi-head) and a Llama (grouped-query
attention: key/value groups too) from ``transformers`` model definitions (random weights)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import onnx
import pytest

pytest.importorskip("transformers")

import hf_zoo  # noqa: E402

import npcompile  # noqa: E402

SHAPES = {"llama": {"input_ids": (2, 7)}, "vit_hf": {}}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("heads")
    return {name: hf_zoo.export_hf(name, folder / f"{name}.onnx", False, "eager") for name in SHAPES}


def test_inspect_lists_heads_and_head_dim(models) -> None:
    info = npcompile.inspect(models["vit_hf"])
    blocks = info["attention"]
    assert [b["block"] for b in blocks] == [f"/model/vit/layers.{i}/attention" for i in range(hf_zoo.LAYERS)]
    for b in blocks:
        assert b["heads"] == hf_zoo.HEADS and b["head_dim"] == hf_zoo.HIDDEN // hf_zoo.HEADS
        assert b["kv_groups"] is None and b["prunable"] and not b["frozen"]


def test_inspect_lists_kv_groups_of_grouped_query_attention(models) -> None:
    blocks = npcompile.inspect(models["llama"], SHAPES["llama"])["attention"]
    assert len(blocks) == hf_zoo.LAYERS
    for b in blocks:
        assert (b["heads"], b["kv_groups"]) == (8, 4) and b["head_dim"] == 4


def test_inspect_cli_prints_the_attention_table(models) -> None:
    r = subprocess.run([sys.executable, "-m", "npcompile", "inspect", models["llama"], "--input-shape",
                        "input_ids:2x7", "--no-layers"], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    assert "attention blocks" in r.stdout and "KV groups" in r.stdout and "head_dim" in r.stdout
    assert "/model/layers.0/self_attn" in r.stdout


@pytest.mark.parametrize("name", list(SHAPES))
def test_report_shows_heads_before_and_after(models, name, tmp_path) -> None:
    out = tmp_path / "out"
    res = npcompile.compile(models[name], out, ratio=0.5, round_to=1, benchmark=False, plots=False,
                            input_shapes=SHAPES[name])
    blocks = res.report["attention"]
    assert len(blocks) == hf_zoo.LAYERS
    pruned_blocks = npcompile.inspect(res.model, SHAPES[name])["attention"]
    for b, after in zip(blocks, pruned_blocks, strict=True):
        assert b["heads_after"] < b["heads_before"] and b["heads_after"] == after["heads"]
        if name == "llama":
            assert b["kv_groups_before"] == 4 and b["kv_groups_after"] == after["kv_groups"] < 4
            assert b["heads_after"] == 2 * b["kv_groups_after"]  # a KV group takes its query heads along
    assert json.loads((out / "report.json").read_text())["attention"] == blocks
    md = (out / "report.md").read_text()
    assert "## Attention heads" in md
    first = blocks[0]
    assert f"| {first['block']} | {first['heads_before']}→{first['heads_after']} |" in md
    from npcompile.cli.summary import summary_lines

    line = next(x for x in summary_lines(res.report) if x.startswith("attention heads: "))
    assert f"{first['block']} {first['heads_before']}→{first['heads_after']}" in line


def test_no_attention_section_without_heads(tmp_path) -> None:
    lenet = str(hf_zoo.__file__).rsplit("/tests/", 1)[0] + "/examples/lenet_mnist/model.onnx"
    assert npcompile.inspect(lenet)["attention"] == []
    res = npcompile.compile(lenet, tmp_path / "out", ratio=0.3, benchmark=False, plots=False)
    assert "attention" not in res.report
    assert "## Attention heads" not in (tmp_path / "out" / "report.md").read_text()
    assert not onnx.load(tmp_path / "out" / "model.onnx").graph.node[0].op_type.startswith("Attention")
