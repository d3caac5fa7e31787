"""The hidden width of transformers as a channel group (lossy; off unless this pass runs).

With this pass in a pipeline (``--prune-hidden``), the channel analysis of every later pass
carries the residual stream as one group through every block — embedding tables, position
embeddings and class tokens, LayerNormalization and RMSNorm (fused and decomposed), every
projection's input side, the final norm and the head — so criteria and selection prune it like
any other width. Normalisation statistics are then taken over fewer channels, so this is never
exact: the groups are marked lossy and never counted as dead, and the lossless default never uses
it. Score it by activation magnitude on calibration data (``--criterion mean-abs``, as Minitron
does) or by magnitude.
"""

from __future__ import annotations

from dataclasses import replace

from npcompile.pipeline import Context, Pass, PassResult, register_pass

__all__ = ["HiddenWidthPass"]


@register_pass
class HiddenWidthPass(Pass):
    """Make the hidden width (the residual stream) a prunable group for the passes after it."""

    name = "prune-hidden"
    kind = "analysis"
    description = "the hidden width of transformers as one group (lossy, off by default)"
    produces: frozenset[str] = frozenset()  # the analysis of the passes after it
    exact = False

    def run(self, ctx: Context) -> PassResult:
        ctx.set_analysis_options(replace(ctx.analysis_options, hidden=True))
        hidden = [g for g in ctx.analysis.groups if g.lossy]
        prunable = [g for g in hidden if g.prunable]
        widths = ", ".join(f"{g.name} ({g.size})" for g in prunable[:4])
        return PassResult(False, f"hidden width: {len(prunable)} prunable group(s){': ' + widths if widths else ''}",
                          {"groups": [{"name": g.name, "width": g.size, "prunable": g.prunable,
                                       "frozen": list(g.frozen)} for g in hidden]})
