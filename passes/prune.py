"""The rewrite pass: delete the selected channels at every site of their groups."""

from __future__ import annotations

from npcompile.channels.rewrite import apply_removal
from npcompile.pipeline import Context, Pass, PassResult, register_pass

__all__ = ["PrunePass"]


@register_pass
class PrunePass(Pass):
    """Apply the selected removal, rewrite shape constants and re-infer shapes (the pipeline
    checks the model)."""

    name = "prune"
    kind = "rewrite"
    description = "delete the selected channels and propagate every shape change"
    requires = frozenset({"removal"})
    produces = frozenset({"model"})
    exact = True  # the outputs change only as much as the removal says

    def run(self, ctx: Context) -> PassResult:
        if not ctx.removal:
            return PassResult(False, "nothing to remove")
        graph, analysis = ctx.graph, ctx.analysis
        removal = analysis.close_removal(ctx.removal)  # maxout units take their neurons along
        stats = apply_removal(graph, analysis, removal)
        ctx.applied.append({analysis.group(gid).name: [int(i) for i in mask.nonzero()[0]]
                            for gid, mask in sorted(removal.items()) if mask.any()})
        ctx.set_graph(graph)  # the pipeline runs the ONNX checker on the pruned model
        return PassResult(True, f"removed {stats.channels_removed} channels from {stats.groups} groups",
                          {"channels": stats.channels_removed, "groups": stats.groups,
                           "fixups": stats.fixups})
