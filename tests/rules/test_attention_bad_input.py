"""Attention graphs the head rules cannot vouch for: those heads freeze with a reason naming the
node, compiling them gives a valid model with outputs unchanged where the removal must be
lossless, and nothing raises a traceback.

One self-attention block, built node by node: x -> embedding MatMul -> h[B,S,D] -> q/k/v MatMul -> Reshape [B,S,H,dh] ->
Transpose -> MatMul(q, k^T) -> Mul(scale) [-> Add(mask)] -> Softmax -> MatMul(p, v) -> Transpose ->
Reshape [B,S,D] -> output MatMul -> + h -> MatMul to 3 outputs. Variants break one thing:

- ``input_heads``: the head count of the q/k/v Reshape comes from a graph input's value;
- ``hidden_mask``: the attention mask is computed from the hidden activations (a ReduceMean over
  the hidden width of h), and ``value_mask`` from the value projection's channels;
- ``softmax_heads``: the softmax normalises over the heads axis (heads are no longer independent).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import npcompile
from npcompile.graph.model_io import load_model
from npcompile.graph.shapes import probe_shapes
from npcompile.pipeline import Context
from npcompile.runtime.verify import make_session

B, S, D_IN, D, H = 2, 5, 8, 16, 4
DH = D // H
SHAPES = {"x": (B, S, D_IN)}


def block(variant: str = "good", dead_heads: tuple[int, ...] = ()) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op: str, inputs: list[str], name: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [name + "_out"], name=name, **attrs))
        return name + "_out"

    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", D_IN])]
    h = node("MatMul", ["x", const("w_embed", rng.standard_normal((D_IN, D)).astype(np.float32) * 0.3)], "embed")
    heads_shape = const("heads_shape", np.array([0, 0, H, DH], np.int64))
    if variant == "input_heads":
        inputs.append(helper.make_tensor_value_info("n_heads", TensorProto.INT64, [1]))
        heads_shape = node("Concat", [const("zeros2", np.array([0, 0], np.int64)), "n_heads",
                                      const("minus1", np.array([-1], np.int64))], "heads_shape_concat", axis=0)
    proj = {}
    for p in ("q", "k", "v"):
        w = rng.standard_normal((D, D)).astype(np.float32) * 0.3
        if p == "v":
            for dead in dead_heads:
                w[:, dead * DH:(dead + 1) * DH] = 0.0  # the value channels of a dead head
        proj[p] = node("MatMul", [h, const(f"w_{p}", w)], f"{p}_proj")
    heads = {p: node("Reshape", [proj[p], heads_shape], f"{p}_split") for p in proj}
    q = node("Transpose", [heads["q"]], "q_t", perm=[0, 2, 1, 3])
    k = node("Transpose", [heads["k"]], "k_t", perm=[0, 2, 3, 1])
    v = node("Transpose", [heads["v"]], "v_t", perm=[0, 2, 1, 3])
    scores = node("Mul", [node("MatMul", [q, k], "scores"), const("scale", np.array(DH ** -0.5, np.float32))],
                  "scaled")
    if variant in ("hidden_mask", "value_mask"):
        source = h if variant == "hidden_mask" else proj["v"]
        m = node("ReduceMean", [source], "mask_mean", axes=[-1], keepdims=0)  # [B, S]
        m = node("Unsqueeze", [m, const("mask_axes", np.array([1, 2], np.int64))], "mask_unsqueeze")
        scores = node("Add", [scores, m], "mask_add")
    probs = node("Softmax", [scores], "softmax", axis=1 if variant == "softmax_heads" else -1)
    ctx = node("MatMul", [probs, v], "context")
    ctx = node("Transpose", [ctx], "context_t", perm=[0, 2, 1, 3])
    ctx = node("Reshape", [ctx, const("merge_shape", np.array([0, 0, D], np.int64))], "merge")
    out = node("MatMul", [ctx, const("w_o", rng.standard_normal((D, D)).astype(np.float32) * 0.3)], "o_proj")
    out = node("Add", [out, h], "residual")
    out = node("MatMul", [out, const("w_head", rng.standard_normal((D, 3)).astype(np.float32) * 0.3)], "head")
    nodes[-1].output[0] = "y"
    graph = helper.make_graph(nodes, "attention", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _analysis(model: onnx.ModelProto, values=None):
    m = load_model(model)
    return Context(m, probe_shapes(m, SHAPES, values=values)).analysis


def _heads_count(model: onnx.ModelProto) -> int:
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    (split,) = [n for n in model.graph.node if n.name == "q_split"]
    return int(consts[split.input[1]][2])


def _outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return make_session(model).run(None, feeds)[0]


def test_the_good_block_prunes_heads() -> None:
    """The unbroken block: heads are a prunable group, dead heads go losslessly."""
    heads = [g for g in _analysis(block()).groups if g.kind == "heads"]
    assert len(heads) == 1 and heads[0].prunable and heads[0].size == H
    res = npcompile.compile(block(dead_heads=(1,)), benchmark=False, plots=False, input_shapes=SHAPES)
    assert _heads_count(res.model) == H - 1


def _frozen_reasons(analysis) -> str:
    return " | ".join(r for g in analysis.groups for r in g.frozen)


def _assert_heads_frozen(model: onnx.ModelProto, node_name: str, values=None) -> None:
    analysis = _analysis(model, values)
    heads = [g for g in analysis.groups if g.kind == "heads"]
    assert all(not g.prunable for g in heads), [(g.name, g.frozen) for g in heads]
    projections = [g for g in analysis.groups if any(m in ("q_proj", "k_proj", "v_proj") for m in g.members)]
    assert projections and all(not g.prunable for g in projections)
    assert node_name in _frozen_reasons(analysis), _frozen_reasons(analysis)


def _compiles_without_losing_anything(model: onnx.ModelProto, feeds: dict[str, np.ndarray], **kw) -> None:
    """Lossless default (dead heads planted) and --ratio: no traceback, valid model, no head removed;
    the lossless one has unchanged outputs (compile itself verifies that)."""
    for options in ({}, {"ratio": 0.5, "round_to": 1}):
        res = npcompile.compile(model, benchmark=False, plots=False, input_shapes=SHAPES, **options, **kw)
        onnx.checker.check_model(res.model, full_check=True)
        names = {n.name for n in res.model.graph.node}
        assert {"q_split", "k_split", "v_split"} <= names
        y0, y1 = _outputs(model, feeds), _outputs(res.model, feeds)
        assert y0.shape == y1.shape
        if not options:
            np.testing.assert_allclose(y1, y0, rtol=1e-4, atol=1e-5)
        constants = {t.name for t in res.model.graph.initializer}
        for n in res.model.graph.node:
            if n.name in ("q_split", "k_split", "v_split") and n.input[1] in constants:
                assert _heads_count(res.model) == H


def _feeds(extra: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).standard_normal((B, S, D_IN)).astype(np.float32), **(extra or {})}


def test_head_count_from_an_input_value_freezes_the_heads() -> None:
    n_heads = np.array([H], np.int64)
    model = block("input_heads", dead_heads=(1,))
    _assert_heads_frozen(model, "q_split", values={"n_heads": n_heads})
    _compiles_without_losing_anything(model, _feeds({"n_heads": n_heads}), input_values={"n_heads": n_heads})


def test_mask_computed_from_the_value_channels_freezes_the_heads() -> None:
    model = block("value_mask", dead_heads=(1,))
    _assert_heads_frozen(model, "mask_mean")
    _compiles_without_losing_anything(model, _feeds())


def test_mask_computed_from_the_hidden_width_freezes_the_hidden_width() -> None:
    """A mask from the residual stream: the heads stay prunable (the mask does not see them), the
    hidden width (--prune-hidden) freezes with the ReduceMean named."""
    model = block("hidden_mask", dead_heads=(1,))
    res = npcompile.compile(model, benchmark=False, plots=False, input_shapes=SHAPES)
    assert _heads_count(res.model) == H - 1  # the dead head still goes, losslessly
    res = npcompile.compile(model, benchmark=False, plots=False, input_shapes=SHAPES, ratio=0.5, round_to=1,
                            prune_hidden=True)
    onnx.checker.check_model(res.model, full_check=True)
    w_q = next(t for t in res.model.graph.initializer if t.name == "w_q")
    assert w_q.dims[0] == D  # the hidden width was not pruned
    text = str(res.report)
    assert "mask_mean" in text, text[:2000]


def test_softmax_over_the_heads_axis_freezes_the_heads() -> None:
    model = block("softmax_heads", dead_heads=(1,))
    _assert_heads_frozen(model, "softmax")
    _compiles_without_losing_anything(model, _feeds())
