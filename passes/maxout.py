"""Maxout relevance (Moya Rueda, Grzeszick, Fink, GCPR 2017) and per-unit selection.

In a maxout unit of ``k`` neurons, the relevance of a neuron is how often it is the maximum of its
unit over the calibration data: one count per sample (and per spatial position, for a
convolutional maxout) where it wins. Ties go to the lowest index among the tied maxima, as
``torch.max(dim)`` and ONNX ``ArgMax`` do, so every unit has exactly one winner per sample and
position. A neuron that never wins scores 0: removing it leaves the output on the calibration
data unchanged.

One pruning step of the method removes the least relevant neuron of every unit (so all units keep
one size ``k - 1``, the reshape-and-reduce stays valid); ``maxout-select`` does that (``per_unit``
neurons per unit) and can also remove the ``units`` least relevant whole units, with their ``k``
neurons and the next layer's input channels. The relevance of a whole unit cannot come from the
counts (they sum to the same number in every unit); it is the mean absolute value of the unit's
output on the calibration data (scored when ``units=True``).

Maxout layers are found by the channel analysis (:mod:`npcompile.rules.maxout`); each is a
:class:`~npcompile.channels.analysis.UnitLink` from the producer's group (the neurons) to a group of units.
``ctx.scores`` gets the counts per neuron (as floats), so ``select`` by ratio or threshold also
works: a ratio removes the same number of neurons from every unit, ``--threshold 0`` the neurons
that never win (the same number in every unit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from npcompile.channels.select import lowest, lowest_per_block
from npcompile.errors import OPT, OptionError, UserError
from npcompile.importance.activation import activation_scores, tensor_rank
from npcompile.pipeline import Context, Pass, PassOptions, PassResult, option, register_pass
from npcompile.runtime.calibrate import Calibrator, SlotStats, WinCounts, check_shapes, group_inputs, nonnegative
from npcompile.runtime.data import Dataset

__all__ = ["MaxoutRelevancePass", "MaxoutSelectPass"]


@register_pass
class MaxoutRelevancePass(Pass):
    """Count, on ``calib``, how often each maxout neuron is the maximum of its unit."""

    name = "maxout"
    kind = "analysis"
    description = "maxout relevance: how often each neuron wins its unit on calibration data (needs --calib)"
    produces = frozenset({"scores"})
    exact = False  # "never wins" is a fact about the calibration data only
    data_options: ClassVar[dict[str, str]] = {"calib": "ignore"}

    @dataclass(frozen=True)
    class Options(PassOptions):
        calib: Dataset | None = option(None, record=False)
        batch_size: int = 256
        units: bool = False
        threads: int = option(0, record=False)

        def __post_init__(self) -> None:
            if self.batch_size < 1:
                raise UserError(f"calibration batch size must be >= 1, got {self.batch_size}")

    def run(self, ctx: Context) -> PassResult:
        if self.calib is None:
            raise OptionError(f"criterion maxout needs calibration data ({OPT:calib} DATA.npz)")
        check_shapes(self.calib, ctx.probe)
        analysis = ctx.analysis
        links = [lk for lk in analysis.links if analysis.group(lk.neurons).prunable
                 or (self.units and analysis.group(lk.units).prunable)]
        ctx.scores = {}
        ctx.criterion = "maxout"
        if not links:
            frozen = len(analysis.links)
            return PassResult(False, "no prunable maxout units" + (f" ({frozen} frozen)" if frozen else ""),
                              {"layers": 0}).data_section()
        wins = {lk.tensor: WinCounts(lk.tensor, lk.axis, lk.k, lk.n_units, lk.split, tensor_rank(analysis, lk.tensor))
                for lk in links}
        unit_groups = [analysis.group(lk.units) for lk in links if analysis.group(lk.units).prunable] \
            if self.units else []
        reads: dict[str, SlotStats] = {}
        for g in unit_groups:
            for name, dim in group_inputs(analysis, g):
                reads.setdefault(name, SlotStats(name, dim.axis, dim.layout, zeros=False,
                                                 shape=analysis.shapes.get(name),
                                                 nonnegative=nonnegative(analysis, name)))
        cal = Calibrator(ctx.model, (), self.batch_size, accumulators=[*wins.values(), *reads.values()],
                         threads=self.threads)
        run = cal.run(self.calib)
        never = 0
        for lk in links:
            g = analysis.group(lk.neurons)
            if g.prunable:
                counts = wins[lk.tensor].counts
                ctx.scores[g.id] = counts.astype(np.float64)
                never += int((counts == 0).sum())
        ctx.scores.update(activation_scores(analysis, unit_groups, reads, "mean_abs"))
        scored = [lk for lk in links if analysis.find(lk.neurons) in ctx.scores]
        return PassResult(False, f"maxout relevance of {sum(lk.n_units * lk.k for lk in scored)} neurons in "
                                 f"{len(scored)} layers on {run.samples} samples ({never} never win, "
                                 f"{run.seconds:.2f} s)",
                          {"layers": len(scored), "never_won": never, "samples": run.samples,
                           "seconds": run.seconds, "units_scored": len(unit_groups)}).data_section()


@register_pass
class MaxoutSelectPass(Pass):
    """Remove the ``per_unit`` least relevant neurons of every maxout unit, and the ``units``
    least relevant whole units of every maxout layer (needs ``maxout`` with ``units=True``)."""

    name = "maxout-select"
    kind = "select"
    description = "remove the n least relevant neurons of every maxout unit (and the m least relevant units)"
    requires = frozenset({"scores"})
    produces = frozenset({"removal"})
    exact = False

    @dataclass(frozen=True)
    class Options(PassOptions):
        per_unit: int = 1
        units: int = 0

        def __post_init__(self) -> None:
            if self.per_unit < 0 or self.units < 0:
                raise UserError(f"maxout-select: per_unit and units must be >= 0, got {self.per_unit} and "
                                f"{self.units}")

    def run(self, ctx: Context) -> PassResult:
        analysis = ctx.analysis
        removal: dict[int, np.ndarray] = {}
        notes: list[str] = []
        for lk in analysis.links:
            neurons, units = analysis.group(lk.neurons), analysis.group(lk.units)
            if self.per_unit and neurons.prunable and neurons.id in ctx.scores:
                if neurons.blocks != lk.n_units:
                    notes.append(f"{neurons.name}: neurons also fall into {neurons.blocks} blocks; skipped")
                else:
                    n = min(self.per_unit, lk.k - 1)
                    mask = lowest_per_block(ctx.scores[neurons.id], lk.n_units, n)
                    if mask.any():
                        removal[neurons.id] = mask | removal.get(neurons.id, False)
            if self.units and units.prunable:
                if units.id not in ctx.scores:
                    raise UserError("maxout-select: removing whole units needs unit scores; run the maxout "
                                    "analysis with units=True")
                m = min(self.units, lk.n_units - 1)
                mask = lowest(ctx.scores[units.id], m)
                if mask.any():
                    removal[units.id] = mask | removal.get(units.id, False)
        ctx.removal = analysis.close_removal(removal)
        n = int(sum(m.sum() for m in ctx.removal.values()))
        summary = f"selected {n} channels in {len(ctx.removal)} groups"
        if notes:
            summary += "; " + "; ".join(notes)
        return PassResult(False, summary, {"channels": n, "groups": len(ctx.removal)}).data_section()
