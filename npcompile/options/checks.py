"""Checks across option groups. :func:`validate` runs them around the groups' own checks:
first the flags that exclude each other, then every group, then what one group needs of another."""

from __future__ import annotations

from typing import Any

from npcompile.errors import OPT, OptionError
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
        raise OptionError(f"give either {OPT:ratio} or {OPT:threshold}, not both")
    modes = [m for m, on in ((f"{OPT:ratio}", o.ratio is not None), (f"{OPT:threshold}", o.threshold is not None),
                             (f"{OPT:search}", o.search is not None),
                             (f"{OPT:target_flops}/{OPT:target_params}/{OPT:target_latency}",
                              o.target_flops is not None or o.target_params is not None
                              or o.target_latency is not None),
                             (f"{OPT:pipeline}", o.pipeline is not None)) if on]
    if len(modes) > 1:
        raise OptionError(f"choose one way to select channels, not {' and '.join(modes)}")


def requirements(o: Any) -> None:
    """What options of one group need of another (data, a mode)."""
    from npcompile.options.groups import RECOVERY

    if o.search and o.eval is None and ":" not in o.evaluator:
        raise OptionError(f"{OPT:search} needs evaluation data ({OPT:eval} DATA.npz) or {OPT:evaluator} "
                          "module:function")
    if o.steps > 1 and o.mode not in ("ratio", "threshold", "maxout"):
        raise OptionError(f"{OPT:steps} repeats a {OPT:ratio}, {OPT:threshold} or maxout schedule; give one of them")
    if o.criterion in DATA_CRITERIA and o.calib is None and o.pipeline is None:
        raise OptionError(f"{OPT:criterion} {o.criterion} needs calibration data: {OPT:calib} DATA.npz")
    recovery = RECOVERY.flags_given(o)
    if recovery and o.calib is None:
        raise OptionError(f"{recovery[0]} needs calibration data: {OPT:calib} DATA.npz")
    if recovery and o.lossless:
        raise OptionError(f"{recovery[0]} recovers from pruning: give {OPT:ratio}, {OPT:threshold}, {OPT:search} "
                          "or a budget")
    if o.prune_hidden and o.lossless:
        raise OptionError(f"{OPT:prune_hidden} is lossy: give it with {OPT:ratio}, {OPT:threshold}, {OPT:search} "
                          "or a budget")
    if o.mode == "maxout" and o.maxout_per_unit == 0 and o.maxout_units == 0:
        raise OptionError(f"maxout pruning with {OPT:maxout_per_unit} 0 and {OPT:maxout_units} 0 removes nothing")


def validate(o: Any) -> None:
    """Raise :class:`~npcompile.errors.UserError` (one line naming the flag) for bad options."""
    from npcompile.options.groups import GROUPS

    conflicts(o)
    for group in GROUPS:
        group.check(o)
    requirements(o)
