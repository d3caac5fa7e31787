"""Helpers for the per-op channel-rule tests: build tiny ONNX graphs, prune them, check the result.

:class:`G` builds a graph node by node (weights become initializers, or ``Constant`` nodes);
:func:`prune` plants dead channels, runs magnitude -> select -> prune and checks what every rule
test needs: the pruned model passes the ONNX checker, its outputs keep their shapes, ONNX Runtime
gives the same outputs when only dead channels went, and the parameter count went down.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from npcompile.channels.analysis import ChannelAnalysis, Group
from npcompile.graph.model_io import load_model
from npcompile.graph.shapes import probe_shapes
from npcompile.passes.magnitude import MagnitudePass
from npcompile.passes.prune import PrunePass
from npcompile.passes.select import SelectPass
from npcompile.pipeline import Context, Pipeline
from npcompile.runtime.verify import compare, make_session, probe_inputs
from npcompile.testing import plant_dead_channels

FLOAT = TensorProto.FLOAT
TOL = 1e-4


class G:
    """A small graph under construction; every helper returns the name of its output tensor."""

    def __init__(self, opset: int = 13, seed: int = 0, constants_as_nodes: bool = False) -> None:
        self.opset = opset
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.domains: dict[str, int] = {}
        self.constants_as_nodes = constants_as_nodes
        self._ids = itertools.count()
        self.node_of: dict[str, str] = {}  # output tensor -> name of the node that makes it

    def name(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids)}"

    # -- tensors ---------------------------------------------------------------------------
    def input(self, name: str, shape: list[int | str]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, FLOAT, shape))
        return name

    def const(self, array, prefix: str = "c") -> str:
        """A constant (initializer, or a ``Constant`` node when ``constants_as_nodes``)."""
        arr = np.asarray(array)
        name = self.name(prefix)
        if self.constants_as_nodes:
            self.nodes.append(helper.make_node("Constant", [], [name], name=self.name("Constant"),
                                               value=numpy_helper.from_array(arr, name)))
        else:
            self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def ints(self, values) -> str:
        return self.const(np.asarray(values, dtype=np.int64), "i")

    def rand(self, *shape: int, scale: float = 0.5) -> np.ndarray:
        return (self.rng.standard_normal(shape) * scale).astype(np.float32)

    def weight(self, *shape: int, prefix: str = "w") -> str:
        return self.const(self.rand(*shape), prefix)

    # -- nodes -----------------------------------------------------------------------------
    def op(self, op: str, inputs: list[str], n_out: int = 1, domain: str | None = None, **attrs):
        """Add a node; returns its output name (or a list of names when ``n_out > 1``)."""
        outs = [self.name(op.lower()) for _ in range(n_out)]
        kw = {"domain": domain} if domain else {}
        if domain:
            self.domains.setdefault(domain, 1)
        node = helper.make_node(op, inputs, outs, name=self.name(op), **kw, **attrs)
        self.nodes.append(node)
        for o in outs:
            self.node_of[o] = node.name
        return outs[0] if n_out == 1 else outs

    def conv(self, x: str, cin: int, cout: int, k: int = 3, dims: int = 2, group: int = 1,
             bias: bool = True, pad: bool = True) -> str:
        w = self.weight(cout, cin // group, *([k] * dims))
        ins = [x, w] + ([self.weight(cout, prefix="b")] if bias else [])
        attrs = {"pads": [k // 2] * (2 * dims)} if pad else {}
        return self.op("Conv", ins, kernel_shape=[k] * dims, group=group, **attrs)

    def gemm(self, x: str, cin: int, cout: int, trans_b: int = 1, bias: bool = True) -> str:
        w = self.weight(*((cout, cin) if trans_b else (cin, cout)))
        ins = [x, w] + ([self.weight(cout, prefix="b")] if bias else [])
        return self.op("Gemm", ins, transB=trans_b)

    def bn(self, x: str, c: int) -> str:
        scale, bias = self.weight(c), self.weight(c)
        mean = self.weight(c)
        var = self.const((self.rng.random(c) + 0.5).astype(np.float32))
        return self.op("BatchNormalization", [x, scale, bias, mean, var])

    # -- model -----------------------------------------------------------------------------
    def model(self, outputs: list[str] | str, shapes: dict[str, list] | None = None) -> onnx.ModelProto:
        """The checked model; output shapes come from ``shapes`` or from ONNX shape inference."""
        outputs = [outputs] if isinstance(outputs, str) else outputs
        opsets = [helper.make_opsetid("", self.opset)]
        opsets += [helper.make_opsetid(d, v) for d, v in self.domains.items()]

        def build(outs):
            graph = helper.make_graph(self.nodes, "rule_test", self.inputs, outs, self.inits)
            m = helper.make_model(graph, opset_imports=opsets)
            m.ir_version = 8 if self.opset < 18 else 9 if self.opset < 21 else 10
            return m

        shapes = dict(shapes or {})
        types = {o: FLOAT for o in outputs}
        missing = [o for o in outputs if o not in shapes]
        if missing:
            inferred = onnx.shape_inference.infer_shapes(
                build([helper.make_tensor_value_info(o, FLOAT, None) for o in outputs
                       if o not in missing]))
            for vi in inferred.graph.value_info:
                tt = vi.type.tensor_type
                if vi.name in missing and tt.HasField("shape"):
                    shapes[vi.name] = [d.dim_param or d.dim_value for d in tt.shape.dim]
                    types[vi.name] = tt.elem_type
        m = build([helper.make_tensor_value_info(o, types[o], shapes[o]) for o in outputs])
        onnx.checker.check_model(m)
        return m


def count_params(model: onnx.ModelProto) -> int:
    """Float parameters: initializers and ``Constant`` node values."""
    n = sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == FLOAT)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.t.data_type == FLOAT:
                    n += int(np.prod(a.t.dims))
    return n


@dataclass
class Pruned:
    planted: onnx.ModelProto
    model: onnx.ModelProto
    analysis: ChannelAnalysis
    removal: dict[int, np.ndarray]
    rel_diff: float
    params_before: int
    params_after: int
    outputs_before: list[np.ndarray]
    outputs_after: list[np.ndarray]

    @property
    def groups(self) -> list[Group]:
        return self.analysis.groups

    def group(self, name: str) -> Group:
        """The one group on the channel axis of tensor ``name``, or whose producers include the
        node ``name``."""
        dim = self.analysis.dims.get(name)
        if dim is not None:
            ids = dim.layout.groups(self.analysis.find)
            assert len(ids) == 1, f"{name} carries groups {ids}"
            return self.analysis.group(ids.pop())
        hits = [g for g in self.groups if name in g.members]
        assert len(hits) == 1, f"{name}: {[(g.name, g.members) for g in self.groups]}"
        return hits[0]

    def removed(self, group: Group) -> int:
        mask = self.removal.get(group.id)
        return 0 if mask is None else int(mask.sum())


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return make_session(model, threads=1).run(None, feeds)


def prune(source, *, fraction: float = 0.25, threshold: float | None = 0.0, ratio: float | None = None,
          expect_removed: bool | None = True, lossless: bool | None = None, full_check: bool = True,
          after_plant: Callable[[onnx.ModelProto], None] | None = None) -> Pruned:
    """Plant dead channels in ``source``, prune, and check the result (see the module docstring).

    ``expect_removed``: parameters must go down (False: the model must be left as it was; None:
    either).
    ``lossless`` (default: when selecting by threshold) requires ORT outputs to match.
    ``after_plant`` may edit the planted model in place before it is analysed.
    """
    model = load_model(source)
    probe = probe_shapes(model)
    planted, _ = plant_dead_channels(model, probe, fraction)
    if after_plant is not None:
        after_plant(planted)
    ctx = Context(planted, probe)
    analysis = ctx.analysis
    select = SelectPass(ratio=ratio) if ratio is not None else SelectPass(threshold=threshold)
    Pipeline([MagnitudePass(), select]).run(ctx)
    removal = {k: v.copy() for k, v in ctx.removal.items()}
    Pipeline([PrunePass()]).run(ctx)
    pruned = ctx.model

    onnx.checker.check_model(pruned, full_check=full_check)
    feeds = probe_inputs(planted, probe)
    before, after = run(planted, feeds), run(pruned, feeds)
    assert [a.shape for a in before] == [b.shape for b in after]
    v = compare(planted, pruned, feeds, threads=1)
    if lossless is None:
        lossless = ratio is None
    if lossless:
        assert v.max_rel_diff <= TOL, f"outputs changed: max rel diff {v.max_rel_diff}"
    p0, p1 = count_params(planted), count_params(pruned)
    if expect_removed:
        assert removal, "nothing was selected"
        assert p1 < p0, f"parameters did not decrease ({p0} -> {p1})"
    elif expect_removed is None:  # either way
        assert (p1 < p0) == bool(removal)
    else:
        assert not removal, f"unexpected removal: {removal}"
        assert p1 == p0
    return Pruned(planted, pruned, analysis, removal, v.max_rel_diff, p0, p1, before, after)


def initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    raise KeyError(name)


def weight_of(model: onnx.ModelProto, node_name: str, index: int = 1) -> np.ndarray:
    """The constant input ``index`` of node ``node_name`` in ``model``."""
    node = next(n for n in model.graph.node if n.name == node_name)
    return initializer(model, node.input[index])
