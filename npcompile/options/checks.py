"""Checks across option groups. :func:`validate` runs them around the groups' own checks:
first the flags that exclude each other, then every group, then what one group needs of another."""

from __future__ import annotations

from typing import Any

from npcompile.errors import UserError
from npcompile.options.presets import DATA_CRITERIA

__all__ = ["validate", "conflicts", "requirements", "mode"]


def mode(o: Any) -> str:
    """lossless, ratio, threshold, maxout, search, budget, sparsity or pipeline."""
    if o.pipeline is not None:
        return "pipeline"
    if o.search is not None:
        return "search"
    if o.target_flops is not None or o.target_params is not None or o.target_latency is not None:
        return "budget"
    if o.ratio is not None:
        return "ratio"
    if o.threshold is not None:
        return "threshold"
    if o.criterion == "maxout":
        return "maxout"
    return "sparsity" if o.sparsity is not None else "lossless"


def conflicts(o: Any) -> None:
    """Flags that exclude each other: one way to select channels."""
    if o.ratio is not None and o.threshold is not None:
        raise UserError("give either --ratio or --threshold, not both")
    modes = [m for m, on in (("--ratio", o.ratio is not None), ("--threshold", o.threshold is not None),
                             ("--search", o.search is not None),
                             ("--target-flops/--target-params/--target-latency",
                              o.target_flops is not None or o.target_params is not None
                              or o.target_latency is not None),
                             ("--pipeline", o.pipeline is not None)) if on]
    if len(modes) > 1:
        raise UserError(f"choose one way to select channels, not {' and '.join(modes)}")


def requirements(o: Any) -> None:
    """What options of one group need of another (data, a mode)."""
    from npcompile.options.groups import RECOVERY

    if o.search and o.eval is None and ":" not in o.evaluator:
        raise UserError("--search needs evaluation data (--eval DATA.npz) or --evaluator module:function")
    if o.steps > 1 and o.mode not in ("ratio", "threshold", "maxout"):
        raise UserError("--steps repeats a --ratio, --threshold or maxout schedule; give one of them")
    if o.criterion in DATA_CRITERIA and o.calib is None and o.pipeline is None:
        raise UserError(f"--criterion {o.criterion} needs calibration data: --calib DATA.npz")
    recovery = RECOVERY.flags_given(o)
    if recovery and o.calib is None:
        raise UserError(f"{recovery[0]} needs calibration data: --calib DATA.npz")
    if recovery and o.lossless:
        raise UserError(f"{recovery[0]} recovers from pruning: give --ratio, --threshold, --search or a budget")
    if o.prune_hidden and o.lossless:
        raise UserError("--prune-hidden is lossy: give it with --ratio, --threshold, --search or a budget")
    if o.mode == "maxout" and o.maxout_per_unit == 0 and o.maxout_units == 0:
        raise UserError("maxout pruning with --maxout-per-unit 0 and --maxout-units 0 removes nothing")


def validate(o: Any) -> None:
    """Raise :class:`~npcompile.errors.UserError` (one line naming the flag) for bad options."""
    from npcompile.options.groups import GROUPS

    conflicts(o)
    for group in GROUPS:
        group.check(o)
    requirements(o)
