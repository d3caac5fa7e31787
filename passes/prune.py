"""The rewrite pass: delete the selected channels at every site of their groups."""

from __future__ import annotations

import onnx

from npcompile.channels.rewrite import apply_removal
from npcompile.errors import VerificationError
from npcompile.pipeline import Context, Pass, PassResult, register_pass

__all__ = ["PrunePass"]


@register_pass
class PrunePass(Pass):
    """Apply the selected removal, rewrite shape constants, re-infer shapes and check the model."""

    name = "prune"
    kind = "rewrite"
    description = "delete the selected channels and propagate every shape change"

    def run(self, ctx: Context) -> PassResult:
        if not ctx.removal:
            return PassResult(False, "nothing to remove")
        graph, analysis = ctx.graph, ctx.analysis
        removal = analysis.close_removal(ctx.removal)  # maxout units take their neurons along
        stats = apply_removal(graph, analysis, removal)
        ctx.applied.append({analysis.group(gid).name: [int(i) for i in mask.nonzero()[0]]
                            for gid, mask in sorted(removal.items()) if mask.any()})
        ctx.set_graph(graph)
        try:
            onnx.checker.check_model(ctx.model)
        except Exception as e:
            raise VerificationError(f"pruned model fails the ONNX checker: {str(e).splitlines()[0]}") from e
        return PassResult(True, f"removed {stats.channels_removed} channels from {stats.groups} groups",
                          {"channels": stats.channels_removed, "groups": stats.groups,
                           "fixups": stats.fixups})
