"""One representation travels: the graph a rewrite pass sets is kept (not exported and imported back),
exported once on demand, and what passes read is what importing that export would give."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest

import npcompile.graph.model_io as model_io
import npcompile.pipeline.core as core
from npcompile.graph.shapes import probe_shapes
from npcompile.passes.cleanup import CleanupPass
from npcompile.passes.magnitude import MagnitudePass
from npcompile.passes.prune import PrunePass
from npcompile.passes.select import SelectPass
from npcompile.pipeline import Context, Pipeline


@pytest.fixture
def counted(monkeypatch):
    """Counts of Context's imports (to_graph) and exports (to_model)."""
    counts = {"to_graph": 0, "to_model": 0}

    def wrap(name):
        real = getattr(model_io, name)

        def counting(*args, **kwargs):
            counts[name] += 1
            return real(*args, **kwargs)
        monkeypatch.setattr(core, name, counting)

    wrap("to_graph")
    wrap("to_model")
    return counts


def test_the_set_graph_is_kept_and_exported_once(lenet, counted) -> None:
    ctx = Context(lenet, probe_shapes(lenet))
    graph = ctx.graph
    assert counted == {"to_graph": 1, "to_model": 0}
    ctx.set_graph(graph)
    assert counted["to_model"] == 0  # exported on demand only
    model = ctx.model
    assert ctx.model is model and counted["to_model"] == 1
    assert ctx.graph is graph and counted["to_graph"] == 1  # not imported back
    ctx.set_model(model)
    assert ctx.model is model
    assert ctx.graph is not graph and counted["to_graph"] == 2  # a proto that was set is imported


def test_a_pipeline_imports_once_and_keeps_the_bytes(lenet, counted) -> None:
    passes = [MagnitudePass(), SelectPass(ratio=0.5), PrunePass(), CleanupPass()]
    ctx = Context(lenet, probe_shapes(lenet))
    Pipeline(passes).run(ctx)
    assert counted["to_graph"] == 1  # the original only: prune's graph travels to cleanup
    kept = ctx.model.SerializeToString(deterministic=True)
    # as when every set_graph exported and the next reader imported
    again = model_io.to_graph(model_io.to_model(ctx.graph, ctx.original))
    again.toposort()
    assert model_io.to_model(again, ctx.original).SerializeToString(deterministic=True) == kept


def test_a_kept_graph_reads_as_its_reimport(lenet) -> None:
    """Constant-only nodes are folded (the export keeps them, as it did) and variable types are
    the importer's."""
    ctx = Context(lenet, probe_shapes(lenet))
    graph = ctx.graph
    node = next(n for n in graph.nodes if n.op == "Conv")
    w = node.inputs[1]
    flipped = gs.Variable(w.name + "_t", dtype=np.float32, shape=tuple(w.shape))
    graph.nodes.append(gs.Node("Identity", inputs=[w], outputs=[flipped]))
    node.inputs[1] = flipped
    y = node.outputs[0]
    y.dtype = np.float32  # a numpy type, not a dtype: the import reads np.dtype("float32")
    ctx.set_graph(graph)
    assert ctx.graph is graph
    assert not any(n.op == "Identity" for n in graph.nodes)  # folded on reading
    assert isinstance(node.inputs[1], gs.Constant)
    assert y.dtype is not np.float32 and y.dtype == np.dtype("float32")
    assert any(n.op_type == "Identity" for n in ctx.model.graph.node)  # exported before the fold
    reimported = model_io.to_graph(ctx.model)
    assert [n.op for n in reimported.nodes] == [n.op for n in graph.nodes]
    for name, t in graph.tensors().items():
        if isinstance(t, gs.Variable) and t.dtype is not None:
            assert isinstance(t.dtype, np.dtype), name
            assert t.shape is None or isinstance(t.shape, list), name
