"""What option values expand to: the criteria (criterion -> analysis pass and its options) and
the values the choice options accept. The schedules of ``--search binary`` are
:data:`npcompile.search.variants.VARIANTS`."""

from __future__ import annotations

from typing import Any

__all__ = ["CRITERIA", "DATA_CRITERIA", "SEARCHES", "LATENCY_CRITERIA", "OPTIMIZERS", "SPARSITY_SCOPES",
           "criteria"]

#: criterion name -> (analysis pass name, options); plugin analysis passes are criteria by their name
CRITERIA: dict[str, tuple[str, dict[str, Any]]] = {
    "magnitude": ("magnitude", {"p": 1}),
    "l1": ("magnitude", {"p": 1}),
    "l2": ("magnitude", {"p": 2}),
    "maxout": ("maxout", {}),
    "apoz": ("apoz", {}),
    "mean-abs": ("mean-abs", {}),
}
#: criteria measured on calibration data
DATA_CRITERIA = ("maxout", "apoz", "mean-abs")
#: values of --search
SEARCHES = ("binary",)
#: values of --latency-criterion (the plan of --target-latency)
LATENCY_CRITERIA = ("per-ms", "importance")
#: values of --optimizer
OPTIMIZERS = ("adam", "sgd")
#: values of --sparsity-scope
SPARSITY_SCOPES = ("layer", "global")


def criteria() -> dict[str, tuple[str, dict[str, Any]]]:
    """:data:`CRITERIA` and every registered analysis pass (plugins included) by its name."""
    from npcompile.pipeline import available_passes

    out = dict(CRITERIA)
    for name, cls in available_passes().items():
        if cls.kind == "analysis" and name not in out:
            out[name] = (name, {})
    return out
