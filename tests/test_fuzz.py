"""Fuzzing: mutated small models never end in an uncaught exception (exit 3) or a hang.

Several hundred cases: byte flips and truncations of the serialized model, and structured edits
(dims, attributes, op types, input names, initializer data). Every case must end with exit code
0 (compiled), 1 (a gate) or 2 (a clear user/model error) — never an internal error.
"""

from __future__ import annotations

import contextlib
import io
import random
import signal
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from npcompile.cli import main


def _small_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.standard_normal((4, 8 * 6 * 6)).astype(np.float32), "w3"),
        numpy_helper.from_array(np.array([0, -1], np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2"),
        helper.make_node("Add", ["c2", "c2"], ["a2"], name="add"),
        helper.make_node("MaxPool", ["a2"], ["p2"], kernel_shape=[1, 1], name="pool"),
        helper.make_node("Reshape", ["p2", "shape"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "w3"], ["y"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(nodes, "fuzz", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    return model


def _structured(model: onnx.ModelProto, rng: random.Random) -> bytes:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    kind = rng.randrange(9)
    node = rng.choice(m.graph.node)
    if kind == 0:
        node.op_type = rng.choice(["Relu", "Conv", "Foo", "Gemm", "Concat", "Reshape", "Softmax", ""])
    elif kind == 1 and node.input:
        node.input[rng.randrange(len(node.input))] = rng.choice(["x", "w1", "nope", "", "c1", "y"])
    elif kind == 2:
        init = rng.choice(m.graph.initializer)
        if init.dims:
            init.dims[rng.randrange(len(init.dims))] = rng.choice([0, 1, 2, 7, 8, 100])
    elif kind == 3 and node.attribute:
        attr = rng.choice(node.attribute)
        if attr.ints:
            attr.ints[rng.randrange(len(attr.ints))] = rng.choice([-1, 0, 5, 99])
        else:
            attr.i = rng.choice([-1, 0, 2, 1000])
    elif kind == 4:
        dim = m.graph.input[0].type.tensor_type.shape.dim
        d = dim[rng.randrange(len(dim))]
        d.dim_value = rng.choice([1, 2, 3, 5])
    elif kind == 5:
        node.domain = rng.choice(["com.example", "ai.onnx.ml", "com.microsoft"])
    elif kind == 6:
        m.opset_import[0].version = rng.choice([1, 6, 9, 11, 17, 21, 99])
    elif kind == 7:
        init = rng.choice(m.graph.initializer)
        init.raw_data = init.raw_data[: rng.randrange(max(1, len(init.raw_data)))]
    else:
        m.graph.node.remove(node)
    return m.SerializeToString()


def _byte_mutation(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    kind = rng.randrange(3)
    if kind == 0:
        for _ in range(rng.randrange(1, 8)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        return bytes(b)
    if kind == 1:
        return bytes(b[: rng.randrange(len(b))])
    i = rng.randrange(len(b))
    return bytes(b[:i] + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16))) + b[i:])


class _Timeout(Exception):
    pass


def _alarm(signum, frame):  # noqa: ARG001
    raise _Timeout


CASES = 300


@pytest.mark.parametrize("chunk", range(6))
def test_mutated_models_never_crash(tmp_path: Path, chunk: int) -> None:
    base = _small_model()
    data = base.SerializeToString()
    rng = random.Random(1234 + chunk)
    codes: dict[int, int] = {}
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        for case in range(CASES // 6):
            blob = _structured(base, rng) if case % 2 else _byte_mutation(data, rng)
            src = tmp_path / f"m{case}.onnx"
            src.write_bytes(blob)
            args = [str(src), "--ratio", rng.choice(["0.3", "0.5"]), "--no-benchmark", "-q",
                    "-o", str(tmp_path / f"o{case}")]
            if rng.random() < 0.3:
                args = [str(src), "-q", "--no-benchmark", "-o", str(tmp_path / f"o{case}")]
            err = io.StringIO()
            signal.alarm(60)
            try:
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                    code = main(args)
            except _Timeout:
                pytest.fail(f"case {chunk}/{case} hung")
            finally:
                signal.alarm(0)
            assert code in (0, 1, 2), f"case {chunk}/{case}: exit {code}\n{err.getvalue()[-2000:]}"
            if code == 2:
                lines = [line for line in err.getvalue().splitlines() if line.strip()]
                assert len(lines) == 1, err.getvalue()
                assert not (tmp_path / f"o{case}").exists()
            assert src.read_bytes() == blob
            codes[code] = codes.get(code, 0) + 1
    finally:
        signal.signal(signal.SIGALRM, old)
    assert codes.get(2, 0) > 0  # the fuzzer does reach the error paths
