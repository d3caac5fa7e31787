"""The declaration types: :class:`Option` (one option) and :class:`OptionGroup` (options that
belong together, with their checks and the passes they stand for)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Option", "OptionGroup", "NO_DEFAULT"]

class _NoDefault:
    def __repr__(self) -> str:
        return "NO_DEFAULT"


#: marks an option whose CLI default is the field default
NO_DEFAULT: Any = _NoDefault()


@dataclass(frozen=True)
class Option:
    """One compile option: a field of :class:`~npcompile.options.CompileOptions`, a flag of
    ``npcompile compile``, or both.

    ``name`` is the field's name (and the CLI parameter's, unless ``param`` names another one).
    ``flags`` are typer's parameter declarations (``("--target", "-t")``); empty, typer derives the
    flag from the parameter name (``--name``, or ``--name/--no-name`` for a boolean). ``convert``
    turns the CLI value (of type ``cli_type``) into the field value.
    """

    name: str
    type: Any
    default: Any = None
    help: str = ""
    flags: tuple[str, ...] = ()
    cli_type: Any = None  # the CLI parameter's type, where it differs from ``type``
    cli_default: Any = NO_DEFAULT  # the CLI default, where it differs from ``default``
    param: str | None = None  # the CLI parameter's name, where it differs from ``name``
    convert: Callable[[Any], Any] | None = None  # CLI value -> field value
    factory: Callable[[], Any] | None = None  # a default factory (mutable defaults)
    cli: bool = True  # has a flag
    field: bool = True  # is a CompileOptions field

    @property
    def param_name(self) -> str:
        """The CLI parameter's name (the keyword the command receives)."""
        return self.param or self.name

    @property
    def flag(self) -> str:
        """The long flag messages name the option by: the first declared one, or the one typer
        derives from the parameter name (``round_to`` -> ``--round-to``)."""
        return next((f for f in self.flags if f.startswith("--")), "--" + self.param_name.replace("_", "-"))

    @property
    def param_type(self) -> Any:
        """The CLI parameter's type."""
        return self.cli_type if self.cli_type is not None else self.type

    @property
    def param_default(self) -> Any:
        """The CLI parameter's default."""
        if self.cli_default is not NO_DEFAULT:
            return self.cli_default
        return self.factory() if self.factory is not None else self.default

    def dataclass_field(self) -> tuple[str, Any, Any]:
        """``(name, type, dataclasses.field(...))`` for :func:`dataclasses.make_dataclass`."""
        if self.factory is not None:
            return self.name, self.type, dataclasses.field(default_factory=self.factory)
        return self.name, self.type, dataclasses.field(default=self.default)


class OptionGroup:
    """Options that belong together (like Polygraphy's argument groups): the declarations, the
    checks of their own values (:meth:`check`), and how CLI values become fields (:meth:`from_cli`).
    Groups that stand for passes add methods returning :class:`~npcompile.pipeline.file.PassSpec`
    lists; :func:`npcompile.options.specs.pipeline_specs` puts them together."""

    #: short name of the group
    name: str = ""
    #: one line: what the group's options are about
    title: str = ""
    #: the options, in the order of their CLI flags
    options: tuple[Option, ...] = ()

    def check(self, options: Any) -> None:
        """Raise :class:`~npcompile.errors.UserError` for a bad value of this group's options
        (checks that involve other groups live in :mod:`npcompile.options.checks`)."""

    def from_cli(self, values: dict[str, Any]) -> dict[str, Any]:
        """The fields of this group from the CLI parameters' values (by parameter name)."""
        fields = {}
        for opt in self.options:
            if opt.cli and opt.field:
                value = values[opt.param_name]
                fields[opt.name] = opt.convert(value) if opt.convert is not None else value
        return fields

    def __repr__(self) -> str:
        return f"<option group {self.name}: {', '.join(o.name for o in self.options)}>"
