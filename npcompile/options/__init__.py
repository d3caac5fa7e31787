"""The compile options, declared once.

- :mod:`.declare`: :class:`Option` (name, type, default, CLI flags, help) and :class:`OptionGroup`.
- :mod:`.groups`: the groups (target, criteria, selection, runtime, evaluation, search, finetune,
  calibration, recovery, sparsity, benchmark, passes, gates, reporting, execution, logging), each
  with its options, its own checks and the passes it stands for; :data:`GROUPS` in flag order.
- :mod:`.presets`: what values expand to (criterion -> analysis pass and options, the choices).
- :mod:`.checks`: the checks across groups and :func:`validate`.
- :mod:`.model`: :class:`CompileOptions`, a dataclass generated from the declarations.
- :mod:`.specs`: :func:`pipeline_specs`, the passes the options stand for.

The ``npcompile compile`` command is built from :data:`GROUPS` (:mod:`npcompile.cli.compile`).
"""

from npcompile.options.checks import validate
from npcompile.options.declare import Option, OptionGroup
from npcompile.options.groups import GROUPS
from npcompile.options.model import FIELDS, CompileOptions
from npcompile.options.presets import CRITERIA, DATA_CRITERIA, criteria
from npcompile.options.specs import pipeline_specs

__all__ = ["Option", "OptionGroup", "GROUPS", "FIELDS", "CompileOptions", "CRITERIA", "DATA_CRITERIA", "criteria",
           "validate", "pipeline_specs", "from_cli"]


def from_cli(values: dict) -> CompileOptions:
    """:class:`CompileOptions` from the values of the ``compile`` command's parameters (by name)."""
    fields: dict = {}
    for group in GROUPS:
        fields.update(group.from_cli(values))
    return CompileOptions(**fields)
