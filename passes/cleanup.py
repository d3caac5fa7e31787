"""Cleanup: drop unused nodes and tensors, sort topologically (lossless)."""

from __future__ import annotations

from npcompile.pipeline import Context, Pass, PassResult, register_pass

__all__ = ["CleanupPass"]


@register_pass
class CleanupPass(Pass):
    name = "cleanup"
    kind = "rewrite"
    description = "remove unused nodes, tensors and initializers; sort topologically"
    produces = frozenset({"model"})
    exact = True

    def run(self, ctx: Context) -> PassResult:
        graph = ctx.graph
        before = (len(graph.nodes), len([t for t in graph.tensors().values()]))
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        after = (len(graph.nodes), len([t for t in graph.tensors().values()]))
        if after == before:
            return PassResult(False, "graph already clean")
        ctx.set_graph(graph)
        return PassResult(True, f"removed {before[0] - after[0]} nodes, {before[1] - after[1]} tensors")
