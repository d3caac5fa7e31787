"""Activation criteria: score channels by what their consumers read on calibration data.

- ``apoz``: 1 - APoZ, the Average Percentage of Zeros (Hu et al. 2016): the share of exact zeros
  of a channel (after ReLU) over every sample and position. A channel that is almost always zero
  scores near 0.
- ``mean-abs``: the mean absolute value of a channel over every sample and position.

Both are measured on the tensors the group's consumers read (the data input of every Conv, Gemm
or MatMul that takes the channels, and the input of a maxout over them), pooled over those
tensors (each read tensor counted once). Higher is more important, as for magnitude. Channels
that are provably zero wherever they are consumed score exactly 0 and every other channel scores
above 0, so ``--threshold 0`` still removes exactly the dead channels.

The scoring lives in :mod:`npcompile.importance.activation` (:func:`activation_scores`,
:func:`tensor_rank` and ``CRITERIA``, re-exported here); these passes collect the statistics on
``calib`` and store the scores in ``ctx.scores``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from npcompile.errors import OPT, OptionError, UserError
from npcompile.importance.activation import CRITERIA, activation_scores, tensor_rank
from npcompile.pipeline import Context, Pass, PassOptions, PassResult, option, register_pass
from npcompile.runtime.calibrate import Calibrator, SlotStats, check_shapes, group_inputs, nonnegative
from npcompile.runtime.data import Dataset

__all__ = ["ActivationPass", "ApozPass", "MeanAbsPass", "CRITERIA", "activation_scores", "tensor_rank"]

@register_pass
class ActivationPass(Pass):
    """Score channels by activation statistics on ``calib`` (``criterion``: apoz or mean_abs)."""

    name = "activation"
    kind = "analysis"
    description = "activation statistics on calibration data: 1 - APoZ or mean |activation| (needs --calib)"
    produces = frozenset({"scores"})
    exact = True  # provably dead channels score exactly 0, every other channel above 0
    data_options: ClassVar[dict[str, str]] = {"calib": "ignore"}

    @dataclass(frozen=True)
    class Options(PassOptions):
        #: the criterion of a pass named after it (``apoz``, ``mean-abs``): replaces ``criterion``
        fixed: ClassVar[str | None] = None
        calib: Dataset | None = option(None, record=False)
        criterion: str = "apoz"
        batch_size: int = 256
        threads: int = option(0, record=False)

        def __post_init__(self) -> None:
            criterion = (self.fixed or self.criterion).replace("-", "_")
            if criterion not in CRITERIA:
                raise UserError(f"activation criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
            if self.batch_size < 1:
                raise UserError(f"calibration batch size must be >= 1, got {self.batch_size}")
            self._set(criterion=criterion)

    def run(self, ctx: Context) -> PassResult:
        if self.calib is None:
            raise OptionError(f"criterion {self.criterion.replace('_', '-')} needs calibration data "
                              f"({OPT:calib} DATA.npz)")
        check_shapes(self.calib, ctx.probe)
        analysis = ctx.analysis
        groups = analysis.prunable_groups()
        reads: dict[str, SlotStats] = {}
        apoz = self.criterion == "apoz"
        for g in groups:
            for name, dim in group_inputs(analysis, g):
                reads.setdefault(name, SlotStats(name, dim.axis, dim.layout, zeros=apoz, abs_sum=not apoz,
                                                 shape=analysis.shapes.get(name),
                                                 nonnegative=nonnegative(analysis, name)))
        if reads:
            cal = Calibrator(ctx.model, (), self.batch_size, accumulators=list(reads.values()),
                             threads=self.threads)
            run = cal.run(self.calib)
            samples, seconds = run.samples, run.seconds
        else:
            samples, seconds = 0, 0.0
        scores = activation_scores(analysis, groups, reads, self.criterion)
        ctx.scores = scores
        ctx.criterion = self.criterion.replace("_", "-")
        dead = sum(int(g.dead.sum()) for g in groups if g.dead is not None and g.id in scores)
        return PassResult(False, f"scored {len(scores)} groups by {ctx.criterion} on {samples} samples "
                                 f"({len(reads)} tensors, {seconds:.2f} s)",
                          {"groups": len(scores), "tensors": len(reads), "samples": samples,
                           "dead_channels": dead, "seconds": seconds})


@register_pass
class ApozPass(ActivationPass):
    """1 - APoZ (share of exact zeros) per channel on calibration data."""

    name = "apoz"
    description = "1 - APoZ: share of non-zero activations per channel on calibration data (needs --calib)"

    @dataclass(frozen=True)
    class Options(ActivationPass.Options):
        fixed: ClassVar[str | None] = "apoz"


@register_pass
class MeanAbsPass(ActivationPass):
    """Mean |activation| per channel on calibration data."""

    name = "mean-abs"
    description = "mean |activation| per channel on calibration data (needs --calib)"

    @dataclass(frozen=True)
    class Options(ActivationPass.Options):
        fixed: ClassVar[str | None] = "mean_abs"
