"""Pipeline files (TOML): an ordered list of passes with their options.

```toml
[[passes]]
name = "magnitude"
p = 2

[[passes]]
name = "select"
ratio = 0.3
round_to = 8

[[passes]]
name = "prune"
```

A pass option naming a data file (a pass lists them in ``data_options``) is loaded as a
:class:`~npcompile.runtime.data.Dataset` for the model being compiled; relative paths are read relative
to the pipeline file. CLI flags build the same list of specs (see :func:`npcompile.api.pipeline_specs`).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from npcompile.errors import OPT, OptionError, UserError
from npcompile.pipeline import Pass, get_pass
from npcompile.pipeline.options import option_names
from npcompile.runtime.data import load_data

__all__ = ["PassSpec", "load_pipeline_file", "instantiate", "to_toml"]


@dataclass
class PassSpec:
    """A pass by name (or ``module:Class``) and its options."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)


def load_pipeline_file(path: str | Path) -> tuple[list[PassSpec], Path]:
    """Read a pipeline file; returns the specs and the folder relative paths are read from."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"pipeline file not found: {p}")
    try:
        doc = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"pipeline file {p} is not valid TOML: {e}") from None
    passes = doc.get("passes")
    if not isinstance(passes, list) or not passes:
        raise UserError(f"pipeline file {p} has no [[passes]] entries")
    specs = []
    for i, entry in enumerate(passes):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise UserError(f"pipeline file {p}: pass #{i + 1} has no name")
        opts = {k: v for k, v in entry.items() if k != "name"}
        specs.append(PassSpec(entry["name"], opts))
    unknown = set(doc) - {"passes"}
    if unknown:
        raise UserError(f"pipeline file {p}: unknown top-level key(s) {sorted(unknown)}")
    return specs, p.parent


def instantiate(specs: list[PassSpec], model: onnx.ModelProto, base: Path | None = None,
                objects: dict[str, Any] | None = None, surface: str | None = None) -> list[Pass]:
    """Build pass objects; data-file options are loaded for ``model``. ``objects`` maps option
    names to ready objects (datasets, evaluators) that replace what a spec names. ``surface``:
    where the specs' option names come from (``"toml"``: a pipeline file); a pass's error about
    its options names them as spelled there, even when the CLI prints it."""
    objects = objects or {}
    out: list[Pass] = []
    for spec in specs:
        cls = get_pass(spec.name)
        opts = dict(spec.options)
        data_options: dict[str, str] = getattr(cls, "data_options", {})
        if isinstance(opts.get("evaluator"), str):
            value = opts["evaluator"]
            if ":" in value:
                from npcompile.runtime.evaluate import make_evaluator

                opts["evaluator"] = make_evaluator(value)
            elif objects.get("evaluator") is None:
                raise OptionError(f"pass {spec.name} needs an evaluator: give {OPT:eval} DATA.npz (or "
                                  f"{OPT:evaluator} module:function)")
            else:
                opts["evaluator"] = objects["evaluator"]
        if opts.get("measure") == "measure":
            opts["measure"] = objects.get("measure")
        for key, labels in data_options.items():
            value = opts.get(key)
            if isinstance(value, str):
                path = Path(value)
                if base is not None and not path.is_absolute():
                    path = base / path
                opts[key] = objects.get(str(path)) or load_data(path, model, labels=labels, what=key)
        known, accepts_any = option_names(cls)
        unknown = [k for k in opts if k not in known and not accepts_any]
        if unknown:
            raise UserError(f"pass {spec.name}: unknown option(s) {unknown}; it takes {known}")
        try:
            out.append(cls(**opts))
        except UserError as e:
            if surface is not None:
                e.about(surface)
            raise
        except (TypeError, ValueError) as e:
            raise UserError(f"pass {spec.name}: {e}") from None
    return out


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return _toml_value(str(v))


def to_toml(specs: list[PassSpec]) -> str:
    """The pipeline as a pipeline file (what ``--dry-run`` prints)."""
    lines = ["# npcompile pipeline"]
    for spec in specs:
        lines += ["", "[[passes]]", f"name = {_toml_value(spec.name)}"]
        for k, v in spec.options.items():
            if v is not None:
                lines.append(f"{k} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"
