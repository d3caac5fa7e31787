"""The calibrator: one session, inner tensors exposed as outputs, data streamed in batches."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from npcompile.channels.layout import Layout, Piece
from npcompile.errors import UserError
from npcompile.runtime.calibrate import Calibrator, SlotStats, WinCounts, expose_tensors
from npcompile.runtime.data import Dataset


def _model() -> onnx.ModelProto:
    """x[N, 4] -> Relu -> r -> Mul 2 -> y."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mul", ["r", "two"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                              [numpy_helper.from_array(np.array(2.0, np.float32), "two")])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


class Spy:
    def __init__(self, *tensors: str) -> None:
        self.tensors = tensors
        self.batches: list[dict[str, np.ndarray]] = []

    def update(self, values):
        self.batches.append({k: v.copy() for k, v in values.items()})


def test_streams_batches_through_one_session() -> None:
    x = np.random.default_rng(0).standard_normal((23, 4)).astype(np.float32)
    cal = Calibrator(_model(), ["r", "y", "x"], batch_size=5, progress=False)
    assert cal.fetch == ["r", "y"]  # x is an input: fed through, not fetched
    spy, spy2 = Spy("r", "x"), Spy("y")
    run = cal.run(Dataset({"x": x}), [spy, spy2])
    assert (run.samples, run.batches) == (23, 5)
    assert [len(b["r"]) for b in spy.batches] == [5, 5, 5, 5, 3]
    np.testing.assert_array_equal(np.concatenate([b["r"] for b in spy.batches]), np.maximum(x, 0))
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in spy.batches]), x)
    np.testing.assert_array_equal(np.concatenate([b["y"] for b in spy2.batches]), 2 * np.maximum(x, 0))
    cal.run(Dataset({"x": x}), [])  # the same session runs again


def test_original_model_untouched_and_errors() -> None:
    m = _model()
    exposed, fetch = expose_tensors(m, ["r"])
    assert [o.name for o in m.graph.output] == ["y"] and [o.name for o in exposed.graph.output] == ["y", "r"]
    with pytest.raises(UserError, match="no node"):
        expose_tensors(m, ["nope"])
    cal = Calibrator(m, ["r"], progress=False)
    with pytest.raises(UserError, match="not exposed"):
        cal.run(Dataset({"x": np.zeros((2, 4), np.float32)}), [Spy("y")])
    with pytest.raises(UserError, match="lacks"):
        cal.run(Dataset({"z": np.zeros((2, 4), np.float32)}), [])
    with pytest.raises(UserError):
        Calibrator(m, ["r"], batch_size=0)


def test_no_progress_bar_without_a_terminal(capsys) -> None:
    cal = Calibrator(_model(), ["r"])
    assert cal.progress is False
    cal.run(Dataset({"x": np.ones((3, 4), np.float32)}), [])
    assert capsys.readouterr().err == ""


def test_slot_stats_follow_the_layout() -> None:
    """A C·H·W flatten (inner=2) of 3 channels, seen on axis 1 of [N, 6]."""
    lay = Layout((Piece(0, 0, 3),), inner=2)
    s = SlotStats("t", 1, lay)
    t = np.array([[0, 1, 0, 0, -2, 3], [0, 0, 5, 0, 0, 0]], np.float32)
    s.update({"t": t})
    assert s.count.tolist() == [4, 4, 4] and s.zeros.tolist() == [3, 3, 2]
    assert s.abs_sum.tolist() == [1.0, 5.0, 5.0]
    with pytest.raises(UserError, match="input_shapes"):
        s.update({"t": np.zeros((1, 8), np.float32)})


def test_win_counts_on_a_conv_layout() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 6, 2, 2)).astype(np.float32)  # 2 units of k=3 on axis 1
    acc = WinCounts("t", 1, 3)
    acc.update({"t": x[:2]})
    acc.update({"t": x[2:]})
    win = x.reshape(3, 2, 3, 2, 2).argmax(axis=2)  # (N, units, H, W)
    ref = np.zeros((2, 3), int)
    for u in range(2):
        ref[u] = np.bincount(win[:, u].ravel(), minlength=3)
    assert acc.counts.tolist() == ref.ravel().tolist() and acc.positions == 12


def _conv_like(opset: int) -> onnx.ModelProto:
    """x[N, 6, 3, 3] -> Relu -> r -> Reshape [N, 2, 3, 3, 3] -> v -> ReduceMax over axis 2 -> y."""
    axes = {"axes": [2]} if opset < 18 else {}
    red_in = ["v"] if opset < 18 else ["v", "ax"]
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Reshape", ["r", "shape"], ["v"]),
             helper.make_node("ReduceMax", red_in, ["y"], keepdims=0, **axes)]
    inits = [numpy_helper.from_array(np.array([0, 2, 3, 3, 3], np.int64), "shape"),
             numpy_helper.from_array(np.array([2], np.int64), "ax")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 3, 3])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


@pytest.mark.parametrize("opset", [13, 18])
def test_in_session_reductions_equal_the_plain_statistics(opset: int) -> None:
    """Prepared accumulators (reduced inside the session) agree with the same statistics taken
    on the exposed tensors in NumPy, whatever the batch size."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((37, 6, 3, 3)).astype(np.float32)
    x[:, 4] = 0  # a channel that is always zero, and ties in every unit
    lay = Layout((Piece(0, 0, 6),))
    results = []
    for bs in (5, 37):
        prepared = [SlotStats("r", 1, lay, shape=(1, 6, 3, 3)), WinCounts("r", 1, 3, 2, split="v", rank=4),
                    WinCounts("r", 1, 3, 2, rank=4), SlotStats("r", 1, lay, shape=(1, 6, 3, 3), nonnegative=True)]
        cal = Calibrator(_conv_like(opset), ["r"], bs, accumulators=prepared, progress=False)
        assert "r" in cal.fetch and len(cal.fetch) > 1
        raw = [SlotStats("r", 1, lay), WinCounts("r", 1, 3)]
        cal.run(Dataset({"x": x}))
        cal.run(Dataset({"x": x}), raw)
        assert prepared[0].count.tolist() == raw[0].count.tolist() == [37 * 9] * 6
        for p in (prepared[0], prepared[3]):  # ReduceSum in the session; GlobalAveragePool and Conv (NCHWc)
            assert p.count.tolist() == raw[0].count.tolist() and p.zeros.tolist() == raw[0].zeros.tolist()
            np.testing.assert_allclose(p.abs_sum, raw[0].abs_sum, rtol=1e-6)
        assert raw[0].zeros[4] == 37 * 9
        assert prepared[1].counts.tolist() == prepared[2].counts.tolist() == raw[1].counts.tolist()
        assert prepared[1].positions == raw[1].positions == 37 * 9
        results.append((prepared[0].zeros.copy(), prepared[0].abs_sum.copy(), prepared[1].counts.copy()))
    (z5, a5, w5), (z37, a37, w37) = results
    np.testing.assert_array_equal(z5, z37)
    np.testing.assert_array_equal(w5, w37)
    np.testing.assert_allclose(a5, a37, rtol=1e-6, atol=0)


def test_nonzero_counts_of_nonnegative_tensors_are_exact_at_extreme_magnitudes() -> None:
    """The blocked-layout non-zero count (HardSigmoid at alpha = FLT_MAX, averaged) counts every
    normal positive float, the smallest (FLT_MIN) and the largest included, and no zero."""
    tiny, huge = np.finfo(np.float32).tiny, np.finfo(np.float32).max
    rng = np.random.default_rng(9)
    x = rng.standard_normal((16, 6, 3, 3)).astype(np.float32)
    x[:, 0] = tiny
    x[:, 1] = np.where(rng.random((16, 3, 3)) < 0.5, huge, 0.0)
    x[:, 2] = np.where(rng.random((16, 3, 3)) < 0.3, 1e-30, 0.0)
    lay = Layout((Piece(0, 0, 6),))
    prepared = SlotStats("r", 1, lay, shape=(1, 6, 3, 3), nonnegative=True, abs_sum=False)
    cal = Calibrator(_conv_like(13), ["r"], 5, accumulators=[prepared], progress=False)
    cal.run(Dataset({"x": x}))
    relu = np.maximum(x, 0)
    expected = (relu == 0).sum(axis=(0, 2, 3))
    assert prepared.zeros.tolist() == expected.tolist()
    assert prepared.zeros[0] == 0 and 0 < prepared.zeros[1] < 16 * 9
