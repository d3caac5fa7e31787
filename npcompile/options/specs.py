"""The passes the options stand for, put together from the groups' specs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from npcompile.options.groups import CALIBRATION, CRITERIA, FINETUNE, PASSES, RECOVERY, SEARCH, SELECTION, SPARSITY

if TYPE_CHECKING:
    from npcompile.pipeline.file import PassSpec

__all__ = ["pipeline_specs"]


def pipeline_specs(options: Any, round_to: int) -> list[PassSpec]:
    """The passes the option flags stand for."""
    from npcompile.pipeline.file import PassSpec

    o = options
    specs: list[PassSpec] = []
    remove = RECOVERY.specs(o)
    finetune = FINETUNE.specs(o)
    if o.lossless:
        specs += [PassSpec("dead-channels"), PassSpec("prune")]
    else:
        criterion = CRITERIA.analysis_spec(o)
        common = SELECTION.common(o, round_to)
        if o.search == "binary":
            specs += [criterion, SEARCH.binary_search_spec(o, common), *remove]
        elif o.target_latency is not None:
            specs += [criterion, SEARCH.latency_budget_spec(o, common), *remove]
        elif o.target_flops is not None or o.target_params is not None:
            if o.sensitivity:
                specs.append(SEARCH.sensitivity_spec(common))
            specs += [criterion, SEARCH.budget_spec(o, common), *remove]
        else:  # a schedule of --steps steps
            if o.mode == "maxout":
                selects = [CALIBRATION.maxout_select_spec(o)] * o.steps
            else:
                selects = [SELECTION.select_spec(o, common) for _ in range(o.steps)]
            for select in selects:
                specs += [criterion, select, *remove] + finetune
            finetune = []
        if o.sensitivity and o.search == "binary":
            specs.insert(1, SEARCH.sensitivity_spec(common))
    if o.prune_hidden and not o.lossless:
        specs.insert(0, PassSpec("prune-hidden"))
    if o.sparsity is not None:
        specs += SPARSITY.specs(o)
        finetune = []
    specs += finetune
    specs += PASSES.specs(o)
    specs.append(PassSpec("cleanup"))
    return specs
