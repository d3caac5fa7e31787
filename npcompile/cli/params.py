"""Typer parameters from the option declarations (:mod:`npcompile.options.groups`)."""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Annotated, Any

import typer

from npcompile.options.declare import Option, OptionGroup

__all__ = ["annotation", "parameters", "declared"]


def annotation(option: Option, help: str | None = None) -> Any:
    """``Annotated[type, typer.Option(*flags, help=...)]`` for one declared option."""
    return Annotated[option.param_type, typer.Option(*option.flags, help=option.help if help is None else help)]


def parameters(groups: Iterable[OptionGroup]) -> list[inspect.Parameter]:
    """One keyword parameter per CLI option of ``groups``, in declaration order."""
    return [inspect.Parameter(o.param_name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=o.param_default,
                              annotation=annotation(o))
            for group in groups for o in group.options if o.cli]


def declared(param: str) -> Option:
    """The declared option whose CLI parameter is ``param``."""
    from npcompile.options.groups import GROUPS

    for group in GROUPS:
        for o in group.options:
            if o.cli and o.param_name == param:
                return o
    raise KeyError(param)
