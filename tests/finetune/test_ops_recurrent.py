"""LSTM, GRU and RNN against ONNX Runtime: every direction, both layouts, initial states present or
absent, biases present or absent, sequence lengths, peepholes, clip, input_forget, GRU's
linear_before_reset 0 and 1; W, R and B train, gradients reach the inputs; torch's fused kernels
and the explicit time loop compute the same function and gradients."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from finetune_kit import assert_grads_flow, op_model, run_op
from onnx import TensorProto, helper

from npcompile.errors import UserError
from npcompile.finetune.graph_module import GraphModule

F32 = TensorProto.FLOAT
RNG = np.random.default_rng(0)
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
OUTPUTS = {"LSTM": 3, "GRU": 2, "RNN": 2}
S, N, IN, H = 5, 3, 4, 6


def _f(*shape: int) -> np.ndarray:
    return (RNG.standard_normal(shape) * 0.5).astype(np.float32)


def _case(op: str, direction: str = "forward", layout: int = 0, states: bool = False, bias: bool = True,
          lens: np.ndarray | None = None, peephole: bool = False, attrs: dict | None = None
          ) -> tuple[dict, dict, list[str], dict]:
    d = 2 if direction == "bidirectional" else 1
    g = GATES[op]
    inputs = {"x": _f(N, S, IN) if layout else _f(S, N, IN)}
    consts = {"w": _f(d, g * H, IN), "r": _f(d, g * H, H)}
    order = ["x", "w", "r"]
    optional: list[tuple[str, np.ndarray | None, bool]] = [
        ("b", _f(d, 2 * g * H) if bias else None, False),
        ("lens", lens, True),
        ("h0", (_f(N, d, H) if layout else _f(d, N, H)) if states else None, True),
    ]
    if op == "LSTM":
        optional.append(("c0", (_f(N, d, H) if layout else _f(d, N, H)) if states else None, True))
        optional.append(("p", _f(d, 3 * H) if peephole else None, False))
    names = []
    for name, value, is_input in optional:
        names.append(name if value is not None else "")
        if value is not None:
            (inputs if is_input else consts)[name] = value
    while names and not names[-1]:
        names.pop()
    order += names
    node_attrs = {"hidden_size": H, "direction": direction, **({"layout": layout} if layout else {}), **(attrs or {})}
    return inputs, consts, order, node_attrs


def _run(op: str, **kw: object) -> GraphModule:
    attrs = kw.pop("attrs", None)
    inputs, consts, order, node_attrs = _case(op, attrs=attrs, **kw)  # type: ignore[arg-type]
    if node_attrs.get("layout"):
        gm = _layout1_against_layout0(op, inputs, consts, order, node_attrs)
    else:
        gm = run_op(op, inputs, consts, node_attrs, opset=14, order=order, outputs=OUTPUTS[op], atol=1e-5)
    assert sorted(gm.param_names) == sorted(k for k in consts)
    assert_grads_flow(gm, inputs)
    return gm


def _layout1_against_layout0(op: str, inputs: dict, consts: dict, order: list[str], attrs: dict) -> GraphModule:
    """ONNX Runtime runs only layout 0: layout 1 (batch first) must equal it on transposed tensors."""
    batch_first = {"x": (1, 0, 2), "h0": (1, 0, 2), "c0": (1, 0, 2)}
    seq_first = {k: np.ascontiguousarray(v.transpose(batch_first[k])) if k in batch_first else v
                 for k, v in inputs.items()}
    ref = op_model(op, seq_first, consts, {k: v for k, v in attrs.items() if k != "layout"}, 14, order, OUTPUTS[op])
    expected = ort.InferenceSession(ref.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, seq_first)
    gm = GraphModule(op_model(op, inputs, consts, attrs, 14, order, OUTPUTS[op])).eval()
    with torch.no_grad():
        got = gm(**{k: torch.from_numpy(v) for k, v in inputs.items()})
    np.testing.assert_allclose(got[0].numpy(), expected[0].transpose(2, 0, 1, 3), rtol=1e-5, atol=1e-5)
    for g, e in zip(got[1:], expected[1:], strict=True):
        np.testing.assert_allclose(g.numpy(), e.transpose(1, 0, 2), rtol=1e-5, atol=1e-5)
    return gm


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("states", [False, True], ids=["zero-state", "initial-state"])
def test_directions_layouts_and_states(op: str, direction: str, layout: int, states: bool) -> None:
    attrs = {"linear_before_reset": 1} if op == "GRU" else {}
    _run(op, direction=direction, layout=layout, states=states, attrs=attrs)


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_without_bias(op: str) -> None:
    _run(op, direction="bidirectional", bias=False, attrs={"linear_before_reset": 1} if op == "GRU" else {})


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("layout", [0, 1])
def test_sequence_lens(op: str, direction: str, layout: int) -> None:
    _run(op, direction=direction, layout=layout, states=True, lens=np.array([5, 2, 4], np.int32))


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_lstm_peepholes_clip_input_forget(direction: str) -> None:
    _run("LSTM", direction=direction, peephole=True)
    _run("LSTM", direction=direction, attrs={"clip": 0.4})
    _run("LSTM", direction=direction, attrs={"input_forget": 1})


@pytest.mark.parametrize("before", [0, 1])
def test_gru_linear_before_reset(before: int) -> None:
    _run("GRU", direction="bidirectional", states=True, attrs={"linear_before_reset": before, "clip": 1.5})


def test_rnn_relu_and_explicit_activations() -> None:
    _run("RNN", direction="bidirectional", attrs={"activations": ["Relu", "Relu"]})
    _run("RNN", attrs={"activations": ["Softsign"]})
    _run("LSTM", direction="bidirectional", attrs={"activations": ["Sigmoid", "Tanh", "Tanh"] * 2})
    _run("GRU", attrs={"activations": ["Sigmoid", "Relu"]})


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_fused_kernel_equals_the_time_loop(op: str, direction: str) -> None:
    """A clip no value reaches sends a node to the explicit loop: same outputs, same gradients."""
    base = {"linear_before_reset": 1} if op == "GRU" else {}
    inputs, consts, order, node_attrs = _case(op, direction=direction, states=True, attrs=base)
    results = []
    for attrs in (node_attrs, {**node_attrs, "clip": 1e9}):
        gm = GraphModule(op_model(op, inputs, consts, attrs, 14, order, OUTPUTS[op])).train()
        x = torch.from_numpy(inputs["x"]).requires_grad_(True)
        outs = gm(x, **{k: torch.from_numpy(v) for k, v in inputs.items() if k != "x"})
        sum(o.sum() * (i + 1) for i, o in enumerate(outs)).backward()
        results.append([*(o.detach() for o in outs), x.grad, *(p.grad for p in gm.params)])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_unsupported_activation_is_one_line() -> None:
    inputs, consts, order, attrs = _case("RNN", attrs={"activations": ["ScaledTanh"], "activation_alpha": [1.0],
                                                       "activation_beta": [1.0]})
    model = op_model("RNN", inputs, consts, attrs, 14, order, 2)
    with pytest.raises(UserError, match=r"^cannot train: unsupported RNN \(RNN activation\(s\) ScaledTanh\)$"):
        GraphModule(model)


def test_constant_initial_state_is_not_trained() -> None:
    """An initial state stored as an initializer (the dynamo exporter's zeros) stays a constant."""
    inputs, consts, order, attrs = _case("GRU", states=True, attrs={"linear_before_reset": 1})
    consts["h0"] = inputs.pop("h0")
    node = helper.make_node("GRU", order, ["y", "yh"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", F32, [S, N, IN])],
                              [helper.make_tensor_value_info("y", F32, None)],
                              [helper.make_tensor(k, F32, v.shape, v.ravel()) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    assert GraphModule(model).param_names == ["w", "r", "b"]
