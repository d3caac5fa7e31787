"""``npcompile inspect MODEL``: the model, its channel groups, attention blocks and per-layer figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from npcompile.cli.main import InputShape, _console, app

__all__ = ["inspect_cmd"]


@app.command("inspect")
def inspect_cmd(
    model: Annotated[Path, typer.Argument(help="ONNX model file.")],
    input_shape: InputShape = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    layers: Annotated[bool, typer.Option(help="Also list per-layer parameters and FLOPs.")] = True,
    graph: Annotated[Path | None, typer.Option(
        "--graph", help="Also draw the graph with its channel groups coloured (prunable / frozen with the reason): "
                        ".dot, or .svg/.png/.pdf with Graphviz installed.")] = None,
    wide: Annotated[bool, typer.Option("--wide", help="Never wrap names (as wide as they need).")] = False,
) -> None:
    """Show the model (inputs, outputs, opsets, op counts), its channel groups (width, prunable or
    frozen with the reason), attention blocks, and params and FLOPs per layer."""
    from npcompile.api import inspect
    from npcompile.graph.shapes import parse_input_shapes
    from npcompile.report.graph_view import check_graph_path, write_graph

    if graph is not None:
        check_graph_path(graph)  # before the analysis: a bad path fails at once
    info = inspect(str(model), parse_input_shapes(input_shape), dot=graph is not None)
    dot = info.pop("dot", None)
    if graph is not None:
        write_graph(dot, graph)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    from rich.markup import escape
    from rich.table import Table

    from npcompile.report.document import format_number as _num

    console = _console()
    if wide:
        console.width = max(console.width, 400)
    m = info["model"]
    opsets = ", ".join(f"{d} {v}" for d, v in m["opsets"].items())
    console.print(f"{model.name}: {m['nodes']} nodes, {m['initializers']} initializers, opset {opsets}, "
                  f"IR {m['ir_version']}" + (f", from {m['producer']}" if m["producer"] else ""))
    io = Table(title="inputs and outputs")
    for col in ("", "name", "shape", "type"):
        io.add_column(col, overflow="fold")
    for kind in ("inputs", "outputs"):
        for v in m[kind]:
            dims = v["shape"]
            shape = "?" if dims is None else "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
            io.add_row(kind[:-1], escape(v["name"]), escape(shape), v["dtype"] or "?")
    console.print(io)
    console.print("ops: " + ", ".join(f"{op} {n}" for op, n in m["op_counts"].items()))
    table = Table(title=f"channel groups of {model.name}")
    for col in ("group", "op", "width", "status", "dead"):
        table.add_column(col, overflow="fold", no_wrap=wide)
    for g in info["groups"]:
        status = "prunable" if g["prunable"] else ("frozen: " + "; ".join(g["frozen"]) if g["frozen"]
                                                   else f"pruned with {g['pruned_with']}" if g.get("pruned_with")
                                                   else "single channel")
        table.add_row(escape(g["name"]), g["op"], str(g["width"]), escape(status), str(g["dead"]))
    console.print(table)
    if info.get("attention"):
        gqa = any(b["kv_groups"] is not None for b in info["attention"])
        at = Table(title="attention blocks")
        for col in ("block", "heads", *(("KV groups",) if gqa else ()), "head_dim", "status"):
            at.add_column(col)
        for b in info["attention"]:
            status = "frozen: " + "; ".join(b["frozen"]) if b["frozen"] else "prunable" if b["prunable"] else "kept"
            kv = (str(b["kv_groups"]) if b["kv_groups"] is not None else "-",) if gqa else ()
            at.add_row(b["block"], str(b["heads"]), *kv, str(b["head_dim"]), status)
        console.print(at)
    st = info["stats"]
    if layers:
        lt = Table(title="layers")
        for col in ("layer", "op", "in", "out", "params", "FLOPs"):
            lt.add_column(col)
        for row in st["layers"]:
            lt.add_row(row["name"], row["op"], str(row["in_channels"]), str(row["out_channels"]),
                       _num(row["params"]), _num(row["flops"]))
        console.print(lt)
    n_pr = sum(g["prunable"] for g in info["groups"])
    console.print(f"{len(info['groups'])} groups ({n_pr} prunable) · params {_num(st['params'])} · "
                  f"FLOPs {_num(st['flops'])} (batch 1)")
    if graph is not None:
        console.print(f"wrote {graph}")
