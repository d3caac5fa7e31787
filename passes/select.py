"""Selection: turn scores into the channels to remove (by ratio, threshold, or dead only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from npcompile.channels.select import select_ratio, select_threshold
from npcompile.errors import OPT, OptionError, UserError
from npcompile.graph.names import matches, name_patterns
from npcompile.pipeline import Context, Pass, PassOptions, PassResult, option, register_pass

__all__ = ["SelectPass", "DeadChannelsPass"]


@register_pass
class SelectPass(Pass):
    """Choose channels by ``ratio`` (fraction of each group) or ``threshold`` (score <= T)."""

    name = "select"
    kind = "select"
    description = "choose channels to remove by ratio or threshold, widths rounded to round_to"
    requires = frozenset({"scores"})
    produces = frozenset({"removal"})

    @dataclass(frozen=True)
    class Options(PassOptions):
        ratio: float | None = None
        threshold: float | None = None
        round_to: int = 1
        min_channels: int = 1
        include: Any = option(None, record=False)
        exclude: Any = option(None, record=False)

        def __post_init__(self) -> None:
            if (self.ratio is None) == (self.threshold is None):
                raise UserError("select: give exactly one of ratio and threshold")
            if self.round_to < 1:
                raise OptionError(f"{OPT:round_to} must be >= 1, got {self.round_to}")
            self._set(include=name_patterns(self.include), exclude=name_patterns(self.exclude))

    @property
    def exact(self) -> bool:  # type: ignore[override]
        """A threshold of 0 removes exactly the channels that score 0: the dead ones, given exact scores."""
        return self.threshold == 0

    def run(self, ctx: Context) -> PassResult:
        if not ctx.scores:
            ctx.removal = {}
            return PassResult(False, "no scores: nothing selected")
        groups = [g for g in ctx.analysis.prunable_groups() if self._wanted(g)]
        if self.ratio is not None:
            removal = select_ratio(groups, ctx.scores, self.ratio, self.round_to, self.min_channels)
        else:
            removal = select_threshold(groups, ctx.scores, self.threshold, self.round_to, self.min_channels)
        removal = ctx.analysis.close_removal(removal)  # a maxout unit takes its neurons along
        ctx.removal = removal
        n = int(sum(m.sum() for m in removal.values()))
        return PassResult(False, f"selected {n} channels in {len(removal)} groups",
                          {"channels": n, "groups": len(removal)})


    def _wanted(self, group: Any) -> bool:
        names = [group.name, *group.members]
        if self.include and not matches(names, self.include):
            return False
        return not (self.exclude and matches(names, self.exclude))


@register_pass
class DeadChannelsPass(Pass):
    """Select exactly the provably dead channels (lossless)."""

    name = "dead-channels"
    kind = "select"
    description = "select channels that are zero wherever they are consumed (lossless)"
    produces = frozenset({"removal"})
    exact = True

    def run(self, ctx: Context) -> PassResult:
        removal: dict[int, np.ndarray] = {}
        for g in ctx.analysis.prunable_groups():
            if g.dead is not None and g.dead.any():
                mask = g.dead.copy()
                if g.blocks > 1:  # equal count per block: the fewest dead of any block
                    per = mask.reshape(g.blocks, -1)
                    fewest = int(per.sum(axis=1).min())
                    if fewest == per.shape[1]:
                        fewest -= 1
                    trimmed = np.zeros_like(per)
                    for b in range(g.blocks):
                        trimmed[b, np.flatnonzero(per[b])[:fewest]] = True
                    mask = trimmed.ravel()
                elif mask.all():
                    mask[0] = False
                if mask.any():
                    removal[g.id] = mask
        removal = ctx.analysis.close_removal(removal)  # a dead maxout unit takes its neurons along
        ctx.removal = removal
        n = int(sum(m.sum() for m in removal.values()))
        return PassResult(False, f"selected {n} dead channels in {len(removal)} groups",
                          {"channels": n, "groups": len(removal)})
