""":class:`CompileOptions`, generated from the declarations in :mod:`npcompile.options.groups`."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from npcompile.options.checks import mode, validate
from npcompile.options.declare import Option
from npcompile.options.groups import GROUPS

__all__ = ["CompileOptions", "FIELDS", "field_options"]

#: the field order of CompileOptions before the declarations (positional arguments and the key order
#: of report.json's "options" keep it); fields declared since come after these, in declaration order
_FIELD_ORDER = (
    "criterion", "ratio", "threshold", "round_to", "min_channels", "target", "provider", "threads", "input_shapes",
    "input_values", "seed", "verify_tolerance", "benchmark", "warmup", "runs", "latency_precision",
    "latency_max_seconds", "batch_sizes", "extra_passes", "pipeline", "plugins", "gates", "junit", "plots", "html",
    "eval", "evaluator", "top_k", "eval_batch_size", "search", "tolerance", "search_variant", "include", "exclude",
    "target_flops", "target_params", "target_latency", "latency_criterion", "latency_cache", "sensitivity",
    "prune_hidden", "train", "epochs", "lr", "distill", "optimizer", "batch_size", "steps", "calib",
    "calib_batch_size", "maxout_per_unit", "maxout_units", "reconstruct", "reconstruct_select", "bias_compensation",
    "bn_recalibrate", "sparsity", "sparsity_scope", "sparsity_steps", "workers", "ray", "probe_timeout",
    "allow_collapse",
)


def field_options() -> list[Option]:
    """The declared options that are fields of :class:`CompileOptions`, in field order."""
    declared = [o for g in GROUPS for o in g.options if o.field]
    rank = {name: i for i, name in enumerate(_FIELD_ORDER)}
    return sorted(declared, key=lambda o: rank.get(o.name, len(rank)))  # stable: new ones in declaration order


#: name -> declaration of every CompileOptions field
FIELDS: dict[str, Option] = {o.name: o for o in field_options()}


class _Behaviour:
    """What CompileOptions does besides holding the fields."""

    def validate(self) -> None:
        """Raise :class:`~npcompile.errors.UserError` for a bad option (the groups' checks and
        :mod:`npcompile.options.checks`)."""
        validate(self)

    @property
    def mode(self) -> str:
        """lossless, ratio, threshold, search, budget or pipeline."""
        return mode(self)

    @property
    def lossless(self) -> bool:
        """Only lossless channel passes (dead channels), possibly followed by weight sparsity."""
        return self.mode in ("lossless", "sparsity")

    @property
    def nm_pattern(self) -> tuple[int, int] | None:
        """The N:M sparsity pattern asked for, if any."""
        sparsity: Any = self.sparsity  # type: ignore[attr-defined]
        if sparsity is None:
            return None
        from npcompile.graph.weights import parse_sparsity

        level = parse_sparsity(sparsity)
        return level if isinstance(level, tuple) else None


_DOC = """Options of one compilation: one field per option declared in :mod:`npcompile.options.groups`
(the CLI flags map onto them; the gate flags make up ``gates``). Keyword construction, attribute
access, :meth:`validate`, :attr:`mode`, :attr:`lossless` and :attr:`nm_pattern`."""

if TYPE_CHECKING:
    class CompileOptions(_Behaviour):  # what a type checker sees: the fields are generated
        def __init__(self, **fields: Any) -> None: ...

        def __getattr__(self, name: str) -> Any: ...
else:
    CompileOptions = dataclasses.make_dataclass(
        "CompileOptions", [o.dataclass_field() for o in FIELDS.values()], bases=(_Behaviour,))
    CompileOptions.__module__ = __name__
    CompileOptions.__doc__ = _DOC
