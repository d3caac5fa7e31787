"""What ``inspect`` shows of the model itself, and its channel groups as a picture.

:func:`model_summary` gives the inputs and outputs (names, shapes with their symbolic dimensions,
element types), the opsets, the producer and the op counts. :func:`groups_dot` draws the graph in
Graphviz DOT: every node, data edges between them, and the nodes that produce a channel group
coloured by what npcompile may do with it (green: prunable, red: frozen, with the reason; grey:
pruned with another group or a single channel). :func:`write_graph` writes ``.dot`` as it is and
``.svg`` / ``.png`` through Graphviz's ``dot`` program when it is installed.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import onnx

from npcompile.errors import UserError
from npcompile.graph.model_io import atomic_write_bytes

__all__ = ["model_summary", "groups_dot", "check_graph_path", "write_graph", "GRAPH_FORMATS"]

#: file suffixes :func:`write_graph` accepts (``.dot`` needs nothing; the others need Graphviz)
GRAPH_FORMATS = (".dot", ".gv", ".svg", ".png", ".pdf")

_COLOURS = {"prunable": "#b7e4c7", "frozen": "#f4a3a3", "kept": "#dddddd"}


def _value_info(v: onnx.ValueInfoProto) -> dict[str, Any]:
    t = v.type.tensor_type
    shape: list[int | str | None] | None = None
    if t.HasField("shape"):
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
    dtype = onnx.TensorProto.DataType.Name(t.elem_type).lower() if t.elem_type else None
    return {"name": v.name, "shape": shape, "dtype": dtype}


def model_summary(model: onnx.ModelProto) -> dict[str, Any]:
    """Inputs, outputs, opsets, producer and op counts of ``model`` (initializers are not inputs)."""
    inits = {t.name for t in model.graph.initializer}
    counts = Counter(n.op_type if not n.domain or n.domain == "ai.onnx" else f"{n.domain}.{n.op_type}"
                     for n in model.graph.node)
    return {
        "inputs": [_value_info(v) for v in model.graph.input if v.name not in inits],
        "outputs": [_value_info(v) for v in model.graph.output],
        "opsets": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "ir_version": model.ir_version,
        "producer": " ".join(p for p in (model.producer_name, model.producer_version) if p),
        "nodes": len(model.graph.node),
        "initializers": len(inits),
        "op_counts": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
    }


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _status(group: dict[str, Any]) -> tuple[str, str]:
    if group["prunable"]:
        return "prunable", f"prunable, width {group['width']}"
    if group["frozen"]:
        return "frozen", "frozen: " + "; ".join(group["frozen"])
    if group.get("pruned_with"):
        return "kept", f"pruned with {group['pruned_with']}"
    return "kept", "single channel"


def groups_dot(model: onnx.ModelProto, groups: list[dict[str, Any]], max_reason: int = 120) -> str:
    """The graph of ``model`` in Graphviz DOT, with the producers of ``groups`` (as
    :func:`npcompile.api.inspect` returns them) coloured and labelled with their status."""
    by_node: dict[str, tuple[str, str]] = {}
    for g in groups:
        kind, text = _status(g)
        if len(text) > max_reason:
            text = text[: max_reason - 1] + "…"
        for name in g.get("producers", []):
            # a node can produce several groups (say, fused q/k/v): the first prunable one wins the colour
            if name not in by_node or (kind == "prunable" and by_node[name][0] != "prunable"):
                by_node[name] = (kind, text if g["name"] == name else f"{g['name']}: {text}")
    lines = ["digraph channels {", "  rankdir=TB;", '  node [shape=box, style="rounded,filled", fillcolor="#ffffff", '
             'fontname="Helvetica", fontsize=10];', '  edge [color="#888888"];']
    producer: dict[str, str] = {}
    ids: dict[int, str] = {}
    for i, node in enumerate(model.graph.node):
        nid = f"n{i}"
        ids[i] = nid
        title = node.op_type + (f"\n{node.name}" if node.name else "")
        attrs = {"label": title}
        if node.name in by_node:
            kind, text = by_node[node.name]
            attrs = {"label": f"{title}\n{text}", "fillcolor": _COLOURS[kind], "tooltip": text}
        lines.append(f"  {nid} [" + ", ".join(f"{k}={_quote(v)}" for k, v in attrs.items()) + "];")
        for out in node.output:
            if out:
                producer[out] = nid
    inits = {t.name for t in model.graph.initializer}
    for v in model.graph.input:
        if v.name not in inits:
            producer[v.name] = f"in_{len(producer)}"
            lines.append(f"  {producer[v.name]} [label={_quote(v.name)}, shape=ellipse, fillcolor=\"#e8eefc\"];")
    for i, node in enumerate(model.graph.node):
        for name in dict.fromkeys(x for x in node.input if x in producer):
            lines.append(f"  {producer[name]} -> {ids[i]};")
    for k, v in enumerate(model.graph.output):
        oid = f"out_{k}"
        lines.append(f"  {oid} [label={_quote(v.name)}, shape=ellipse, fillcolor=\"#e8eefc\"];")
        if v.name in producer:
            lines.append(f"  {producer[v.name]} -> {oid};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def check_graph_path(path: str | Path) -> str | None:
    """Whether ``path`` can take a picture (its suffix, its folder, Graphviz for rendered formats):
    a :class:`UserError` if not, else the ``dot`` program to render with (``None`` for DOT text)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in GRAPH_FORMATS:
        raise UserError(f"graph file {path}: give a file ending in one of {', '.join(GRAPH_FORMATS)}")
    if not path.parent.is_dir():
        raise UserError(f"graph file {path}: folder {path.parent} does not exist")
    if suffix in (".dot", ".gv"):
        return None
    exe = shutil.which("dot")
    if exe is None:
        raise UserError(f"writing {suffix[1:].upper()} needs Graphviz's dot program (apt-get install graphviz); "
                        f"or give a .dot file")
    return exe


def write_graph(dot: str, path: str | Path) -> Path:
    """Write ``dot`` to ``path``: as DOT text for ``.dot`` / ``.gv``, rendered by Graphviz's ``dot``
    for ``.svg`` / ``.png`` / ``.pdf`` (checked by :func:`check_graph_path` first)."""
    path = Path(path)
    exe = check_graph_path(path)
    if exe is None:
        atomic_write_bytes(path, dot.encode())
        return path
    suffix = path.suffix.lower()
    r = subprocess.run([exe, f"-T{suffix[1:]}"], input=dot.encode(), capture_output=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"Graphviz dot failed: {r.stderr.decode(errors='replace').strip()[:500]}")
    atomic_write_bytes(path, r.stdout)
    return path
