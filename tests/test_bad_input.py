"""A battery of bad inputs: each exits 2 with one line on stderr, writes nothing, and leaves the
input byte-identical."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
LENET = ROOT / "examples" / "lenet_mnist" / "model.onnx"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "npcompile", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def _conv_model(opset: int = 13, domain_op: str | None = None) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv")]
    imports = [helper.make_opsetid("", opset)]
    if domain_op:
        nodes.append(helper.make_node(domain_op, ["c"], ["y"], domain="com.example", name="mystery"))
        imports.append(helper.make_opsetid("com.example", 1))
    else:
        nodes.append(helper.make_node("Relu", ["c"], ["y"], name="relu"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = 8
    return model


def _write(tmp: Path, case: str) -> Path:
    path = tmp / "model.onnx"
    if case == "checker":
        m = _conv_model()
        m.graph.node[0].input[1] = "no_such_tensor"
        onnx.save(m, path)
    elif case == "old-opset":
        onnx.save(_conv_model(opset=5), path)
    elif case == "unknown-domain":
        onnx.save(_conv_model(domain_op="Mystery"), path)
    elif case == "missing-external-data":
        onnx.save(_conv_model(), path, save_as_external_data=True, location="weights.bin", size_threshold=0)
        (tmp / "weights.bin").unlink()
    elif case == "no-graph":
        path.write_bytes(onnx.ModelProto(ir_version=8).SerializeToString())
    return path


@pytest.mark.parametrize("case", ["checker", "old-opset", "unknown-domain", "missing-external-data", "no-graph"])
def test_bad_models_exit_2_one_line(tmp_path: Path, case: str) -> None:
    path = _write(tmp_path, case)
    before = path.read_bytes()
    out = tmp_path / "out"
    r = run(path, "--ratio", "0.3", "-o", out)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("npcompile: error:")
    assert not out.exists()
    assert path.read_bytes() == before


def test_external_data_model_round_trips_with_external_data(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    m = onnx.load(LENET)
    onnx.save(m, src / "model.onnx", save_as_external_data=True, location="model.weights", size_threshold=0)
    r = run(src / "model.onnx", "--ratio", "0.3", "--no-benchmark", "-o", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    assert (out / "model.onnx.data").is_file()
    assert (out / "model.onnx").stat().st_size < 50_000  # weights live outside
    loaded = onnx.load(out / "model.onnx")
    onnx.checker.check_model(loaded)
    assert sum(t.data_location == TensorProto.EXTERNAL for t in onnx.load(out / "model.onnx",
                                                                           load_external_data=False).graph.initializer)
