"""``inspect`` shows the model itself (inputs, outputs, opsets, op counts), keeps group names whole
with ``--wide``, and draws the channel groups as a Graphviz picture (``--graph``) coloured by what
npcompile may do with them."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import npcompile
from npcompile.report.graph_view import groups_dot, model_summary

ROOT = Path(__file__).resolve().parents[1]
LENET = ROOT / "examples" / "lenet_mnist" / "model.onnx"
LONG = "/encoder/block_with_a_really_quite_long_descriptive_name.0/projection_layer/MatMul"


def run(*args: object, columns: int = 80) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": str(columns)}
    return subprocess.run([sys.executable, "-m", "npcompile", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=env)


def _long_named_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((6, 12)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((12, 3)).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name=LONG),
             helper.make_node("Relu", ["h"], ["r"], name="act"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="head")]
    graph = helper.make_graph(nodes, "long", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="hand")


def test_model_summary_has_inputs_outputs_opsets_and_op_counts() -> None:
    info = npcompile.inspect(str(LENET))
    m = info["model"]
    assert [v["name"] for v in m["inputs"]] == ["input"] and [v["name"] for v in m["outputs"]] == ["logits"]
    assert m["inputs"][0]["shape"][1:] == [1, 28, 28] and isinstance(m["inputs"][0]["shape"][0], str)
    assert m["inputs"][0]["dtype"] == "float"
    assert m["outputs"][0]["shape"][-1] == 10
    assert m["opsets"]["ai.onnx"] >= 11
    model = onnx.load(str(LENET))
    assert m["nodes"] == len(model.graph.node) and sum(m["op_counts"].values()) == m["nodes"]
    assert m["op_counts"]["Conv"] == 2 and m["op_counts"]["Gemm"] == 3
    # most frequent first
    assert list(m["op_counts"].values()) == sorted(m["op_counts"].values(), reverse=True)
    # initializers are not listed as inputs, even where the exporter declares them as graph inputs
    summary = model_summary(_long_named_model())
    assert [v["name"] for v in summary["inputs"]] == ["x"] and summary["producer"] == "hand"


def test_cli_prints_the_model_and_json_carries_it() -> None:
    r = run("inspect", LENET, "--no-layers")
    assert r.returncode == 0, r.stderr
    assert "inputs and outputs" in r.stdout and "logits" in r.stdout
    assert re.search(r"\[\w+, 1, 28, 28\]", r.stdout), r.stdout  # the shape survives rich's markup
    assert re.search(r"ops: .*Conv 2", r.stdout) and "opset ai.onnx" in r.stdout
    r = run("inspect", LENET, "--json")
    info = json.loads(r.stdout)
    assert info["model"]["op_counts"]["Relu"] == 4 and "dot" not in info


def test_wide_keeps_long_group_names_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "long.onnx"
    onnx.save(_long_named_model(), path)
    narrow = run("inspect", path, "--no-layers", columns=60)
    assert narrow.returncode == 0, narrow.stderr
    assert LONG not in narrow.stdout  # folded over several lines at 60 columns ...
    first_cells = [line.split("│")[1].strip() for line in narrow.stdout.splitlines() if line.startswith("│")]
    assert LONG in "".join(first_cells)  # ... but not cut
    wide = run("inspect", path, "--no-layers", "--wide", columns=60)
    assert wide.returncode == 0 and LONG in wide.stdout


def _dot_nodes(text: str) -> dict[str, str]:
    return dict(re.findall(r"^\s+(n\d+) \[(.*)\];$", text, re.M))


def test_graph_dot_colours_groups_by_status(tmp_path: Path) -> None:
    out = tmp_path / "groups.dot"
    r = run("inspect", LENET, "--graph", out, "--no-layers")
    assert r.returncode == 0, r.stderr
    assert f"wrote {out}" in r.stdout.replace("\n", "")
    text = out.read_text()
    assert text.startswith("digraph channels {") and text.rstrip().endswith("}")
    model = onnx.load(str(LENET))
    nodes = _dot_nodes(text)
    assert len(nodes) == len(model.graph.node)
    info = npcompile.inspect(str(LENET))
    by_name = {n.name: f"n{i}" for i, n in enumerate(model.graph.node)}
    for g in info["groups"]:
        attrs = nodes[by_name[g["producers"][0]]]
        if g["prunable"]:
            assert "#b7e4c7" in attrs and f"width {g['width']}" in attrs
        else:
            assert "#f4a3a3" in attrs and "reaches graph output" in attrs
    plain = [n.name for n in model.graph.node if n.op_type in ("Relu", "MaxPool", "Flatten")]
    assert all("fillcolor" not in nodes[by_name[name]] for name in plain)
    # one edge per distinct (producer, consumer) data flow, from the graph input to the output
    edges = re.findall(r"^\s+(\w+) -> (\w+);$", text, re.M)
    internal = {(by_name[p.name], by_name[c.name]) for p in model.graph.node for c in model.graph.node
                if set(p.output) & set(c.input)}
    assert internal <= set(edges)
    assert any(a.startswith("in_") for a, _ in edges) and any(b.startswith("out_") for _, b in edges)


def test_graph_labels_are_escaped() -> None:
    model = _long_named_model()
    model.graph.node[0].name = 'a "quoted" \\ name'
    info = npcompile.inspect(model)
    text = groups_dot(model, info["groups"])
    assert 'a \\"quoted\\" \\\\ name' in text


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_graph_svg_through_graphviz(tmp_path: Path) -> None:
    out = tmp_path / "groups.svg"
    r = run("inspect", LENET, "--graph", out, "--no-layers")
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert "<svg" in text and "prunable, width 16" in text and "reaches graph output" in text


def test_graph_bad_paths_are_one_line_errors(tmp_path: Path) -> None:
    for target, words in ((tmp_path / "g.txt", ".dot"), (tmp_path / "missing" / "g.dot", "does not exist")):
        r = run("inspect", LENET, "--graph", target)
        assert r.returncode == 2, (r.stdout, r.stderr)
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and words in lines[0] and "Traceback" not in r.stderr
        assert not target.exists()
