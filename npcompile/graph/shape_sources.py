"""Where static shapes come from beyond ONNX shape inference (:mod:`npcompile.graph.shapes` calls
these in order): ONNX Runtime's symbolic shape inference, driven so that it writes nothing, and
the shapes observed in ONNX Runtime runs on probe inputs, with If branches inlined to be seen.
Also the walk over If / Loop / Scan bodies that both share."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

__all__ = ["bodies", "collect", "symbolic", "observed"]

log = logging.getLogger(__name__)


def bodies(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The If / Loop / Scan bodies held in ``node``'s attributes."""
    return [g for attr in node.attribute for g in [*attr.graphs, *([attr.g] if attr.HasField("g") else [])]]


def collect(inferred: onnx.ModelProto | onnx.GraphProto, shapes: dict[str, tuple[int, ...]]) -> None:
    """Static shapes of ``inferred``'s values, those of If / Loop / Scan bodies included."""
    graph = inferred.graph if isinstance(inferred, onnx.ModelProto) else inferred
    for node in graph.node:
        for sub in bodies(node):
            collect(sub, shapes)
    for vi in [*graph.value_info, *graph.output, *graph.input]:
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or not tt.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
        if all(d >= 0 for d in dims):
            shapes[vi.name] = tuple(int(d) for d in dims)


def symbolic(sk: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> None:
    """Fill ``shapes`` from ONNX Runtime's symbolic shape inference (where it knows more).

    The tool's ``infer_shapes`` writes ``sym_shape_infer_temp.onnx`` (and its external data) into the
    working directory when it cannot infer everything, then raises; its steps are driven here instead
    so that nothing is written and the shapes it did infer are kept. Where its internals differ (another
    ONNX Runtime version), the public entry point runs inside a temporary directory.
    """
    try:
        SymbolicShapeInference = _symbolic_tool()  # noqa: N806 - a class
    except Exception as e:  # pragma: no cover - the tool ships with onnxruntime
        log.info("symbolic shape inference unavailable: %s", e)
        return
    try:
        out = _symbolic_steps(SymbolicShapeInference, sk)
    except Exception as e:  # the tool refuses some graphs; the observed shapes come next
        log.info("symbolic shape inference failed: %s", e)
        return
    if out is not None:
        found: dict[str, tuple[int, ...]] = {}
        collect(out, found)
        for k, v in found.items():
            shapes.setdefault(k, v)


_SYMBOLIC_TOOL: list[type] = []


def _symbolic_tool() -> type:
    """ONNX Runtime's ``SymbolicShapeInference`` class. Its module is loaded from its file when it
    can be: importing it as ``onnxruntime.tools.symbolic_shape_infer`` runs the package's
    ``__init__``, which imports PyTorch (seconds) for a helper the shape tool does not use."""
    if _SYMBOLIC_TOOL:
        return _SYMBOLIC_TOOL[0]
    loaded = sys.modules.get("onnxruntime.tools.symbolic_shape_infer")
    if loaded is None:
        try:
            import importlib.util

            import onnxruntime

            path = Path(onnxruntime.__file__).parent / "tools" / "symbolic_shape_infer.py"
            spec = importlib.util.spec_from_file_location("npcompile._ort_symbolic_shape_infer", path)
            loaded = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(loaded)
        except Exception:  # another layout: the ordinary import
            loaded = None
    if loaded is None:
        from onnxruntime.tools import symbolic_shape_infer as loaded
    _SYMBOLIC_TOOL.append(loaded.SymbolicShapeInference)
    return _SYMBOLIC_TOOL[0]


def _symbolic_steps(tool: type, sk: onnx.ModelProto) -> onnx.ModelProto | None:
    """Run ONNX Runtime's symbolic shape inference on ``sk``; the (possibly partial) inferred model."""
    args = dict(int_max=2**31 - 1, auto_merge=True, guess_output_rank=False, verbose=0)
    steps = ("_preprocess", "_infer_impl", "_update_output_from_vi")
    if all(hasattr(tool, s) for s in steps):
        inferer = tool(args["int_max"], args["auto_merge"], args["guess_output_rank"], args["verbose"])
        inferer._preprocess(sk)
        while inferer.run_:
            inferer._infer_impl()
        inferer._update_output_from_vi()
        return inferer.out_mp_
    import tempfile

    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="npcompile-shapes-") as tmp:
        os.chdir(tmp)
        try:
            return tool.infer_shapes(sk, **args)
        finally:
            os.chdir(cwd)


def observed(model: onnx.ModelProto, feeds: dict[str, np.ndarray], missing: set[str],
             shapes: dict[str, tuple[int, ...]]) -> None:
    """Fill ``shapes`` with the shapes of ``missing`` tensors seen in ONNX Runtime runs on
    ``feeds`` (probe inputs at the probe shapes). Values inside If branches cannot be fetched from a session, so
    the If nodes are inlined for observing (both branches, where both run on the probe: the
    taken one gives the If's outputs) and the run repeated, nested Ifs one level per run."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    fallback: onnx.ModelProto | None = None  # the taken branches only, for when both do not run
    for _ in range(8):
        conds = [n.input[0] for n in m.graph.node if n.op_type == "If" and n.input]
        names = set(missing) & {o for n in m.graph.node for o in n.output}
        seen = _observe_run(m, sorted(names | set(conds)), feeds)
        if seen is None:
            if fallback is None:
                return
            m, fallback = fallback, None
            continue
        for name, v in seen.items():
            if name in missing and isinstance(v, np.ndarray):
                shapes.setdefault(name, tuple(int(d) for d in v.shape))
        taken = {c: bool(np.asarray(seen[c]).reshape(-1)[0]) for c in conds if c in seen}
        if not taken or not (missing - shapes.keys()):
            return
        fallback = _inline_ifs(m, taken, both=False)
        m = _inline_ifs(m, taken, both=True)


def _observe_run(m: onnx.ModelProto, names: list[str], feeds: dict[str, np.ndarray]) -> dict[str, Any] | None:
    """The values of ``names`` (exposed as outputs) in one ONNX Runtime run of ``m``; ``None``
    when the model does not run."""
    import onnxruntime as ort

    run = onnx.ModelProto()
    run.CopyFrom(m)
    have = {o.name for o in run.graph.output}
    run.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in have)
    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    try:
        sess = ort.InferenceSession(run.SerializeToString(), so, providers=["CPUExecutionProvider"])
        wanted = [o.name for o in sess.get_outputs() if o.name in set(names)] or [sess.get_outputs()[0].name]
        values = sess.run(wanted, {k: v for k, v in feeds.items() if k in {i.name for i in sess.get_inputs()}})
    except Exception as e:
        log.info("could not observe shapes in an ONNX Runtime run: %s", e)
        return None
    return dict(zip(wanted, values, strict=True))


def _inline_ifs(m: onnx.ModelProto, taken: dict[str, bool], both: bool) -> onnx.ModelProto:
    """A copy of ``m`` whose top-level If nodes with an observed condition are replaced by the
    nodes of their branches (for observing shapes only): the taken branch's outputs become the
    If's outputs; with ``both`` the other branch's nodes are kept beside it."""
    out = onnx.ModelProto()
    out.CopyFrom(m)
    nodes: list[onnx.NodeProto] = []
    for n in m.graph.node:
        if n.op_type != "If" or not n.input or n.input[0] not in taken:
            nodes.append(n)
            continue
        branches = {a.name: a.g for a in n.attribute if a.HasField("g")}
        chosen = "then_branch" if taken[n.input[0]] else "else_branch"
        for name, g in branches.items():
            if name != chosen and not both:
                continue
            nodes.extend(g.node)
            out.graph.initializer.extend(g.initializer)
        for src, dst in zip(branches[chosen].output, n.output, strict=False):
            if dst:
                nodes.append(helper.make_node("Identity", [src.name], [dst]))
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out
