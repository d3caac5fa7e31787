"""Magnitude analysis: the L1 or L2 norm of the weights that produce each channel, over its group.

The scoring lives in :mod:`npcompile.importance.magnitude` (:func:`group_magnitude`, re-exported
here); this pass stores it in ``ctx.scores``. Channels that are provably zero everywhere they are
consumed (see :mod:`npcompile.channels.analysis`) score exactly 0; every other channel scores above
0, so a threshold of 0 removes exactly the dead channels.
"""

from __future__ import annotations

from dataclasses import dataclass

from npcompile.importance.magnitude import group_magnitude
from npcompile.pipeline import Context, Pass, PassOptions, PassResult, register_pass

__all__ = ["MagnitudePass", "group_magnitude"]


@register_pass
class MagnitudePass(Pass):
    """Score channels by the norm of their producing weights (``p``: 1 or 2)."""

    name = "magnitude"
    kind = "analysis"
    description = "L1/L2 norm of the weights producing each channel, over its group"
    produces = frozenset({"scores"})
    exact = True  # provably dead channels score exactly 0, every other channel above 0

    @dataclass(frozen=True)
    class Options(PassOptions):
        p: int = 1

        def __post_init__(self) -> None:
            if self.p not in (1, 2):
                raise ValueError(f"magnitude: p must be 1 or 2, got {self.p}")

    def run(self, ctx: Context) -> PassResult:
        analysis = ctx.analysis
        scores = {g.id: group_magnitude(analysis, g, self.p) for g in analysis.prunable_groups()}
        ctx.scores = scores
        ctx.criterion = f"magnitude-l{self.p}"
        dead = sum(int(g.dead.sum()) for g in analysis.prunable_groups() if g.dead is not None)
        return PassResult(False, f"scored {len(scores)} groups ({dead} dead channels)",
                          {"groups": len(scores), "dead_channels": dead})
