"""Error types of npcompile and the exit codes the CLI maps them to.

A message names an option through a placeholder, so that each surface reads it as it is spelled
there: ``raise OptionError(f"{OPT:round_to} must be >= 1, got {round_to}")``. ``str(err)`` says
``round_to`` (the Python keyword), ``err.render("cli")`` ``--round-to`` (the flag declared in
:mod:`npcompile.options`), ``err.render("toml")`` ``round_to`` (the pipeline-file key).
``{OPT:criterion=latency_criterion}`` names a pass option (``criterion``) whose CLI flag is the one
of another compile option (``--latency-criterion``). The placeholders are ordinary f-string fields:
literal braces are ``{{``/``}}`` as in any f-string, and the values interpolated beside them are
never parsed (a placeholder is a marker no value can contain, not text like ``{round_to}``).
"""

from __future__ import annotations

import re
import secrets
from typing import Any

__all__ = ["NpcompileError", "UserError", "OptionError", "GateError", "PassError", "VerificationError", "OPT",
           "STYLES"]

#: the surfaces a message can be rendered for
STYLES = ("python", "cli", "toml")

# a placeholder is "\ue000<token>:<spec>\ue001": private-use characters and a per-process random token
_TOKEN = secrets.token_hex(8)
_MARK = re.compile("\ue000" + _TOKEN + ":([^\ue001]*)\ue001")


class _Name:
    """One option named in a message: ``name`` (the Python keyword and TOML key) and ``cli`` (the
    option whose flag the CLI shows)."""

    __slots__ = ("name", "cli")

    def __init__(self, name: str, cli: str) -> None:
        self.name, self.cli = name, cli

    def __reduce__(self) -> Any:
        return _Name, (self.name, self.cli)

    def spec(self) -> str:
        return self.name if self.cli == self.name else f"{self.name}={self.cli}"

    def render(self, style: str) -> str:
        if style in ("python", "toml"):
            return self.name
        if style == "cli":
            from npcompile.options.groups import flag

            return flag(self.cli)
        raise ValueError(f"unknown message style {style!r}; choose one of {', '.join(STYLES)}")


class _Placeholders:
    """``OPT``: ``f"{OPT:name}"`` (or ``f"{OPT:name=compile_option}"``) puts an option placeholder
    in a message."""

    def __format__(self, spec: str) -> str:
        name, _, cli = spec.partition("=")
        if not name.isidentifier() or (cli and not cli.isidentifier()):
            raise ValueError(f"an option placeholder is {{OPT:name}} or {{OPT:name=option}}, got {{OPT:{spec}}}")
        return f"\ue000{_TOKEN}:{spec}\ue001"

    def __repr__(self) -> str:
        return "OPT"


OPT: Any = _Placeholders()


def _split(message: str) -> list[str | _Name]:
    parts: list[str | _Name] = []
    pos = 0
    for m in _MARK.finditer(message):
        if m.start() > pos:
            parts.append(message[pos:m.start()])
        name, _, cli = m.group(1).partition("=")
        parts.append(_Name(name, cli or name))
        pos = m.end()
    if pos < len(message):
        parts.append(message[pos:])
    return parts


def _render(parts: list[str | _Name], style: str) -> str:
    return "".join(p if isinstance(p, str) else p.render(style) for p in parts)


class NpcompileError(Exception):
    """Base class of every error npcompile raises on purpose. A message with option placeholders
    (``f"{OPT:name} ..."``) is ``str()``-ed with the Python keywords; :meth:`render` renders it for
    another surface; :attr:`template` carries the placeholders into a message that wraps it."""

    exit_code = 3
    #: the surface the message is about whatever asks (set by :meth:`about`), e.g. a pipeline file's keys
    surface: str | None = None

    def __init__(self, *args: Any) -> None:
        if args and isinstance(args[0], str) and "\ue000" in args[0]:
            parts = _split(args[0])
            if any(isinstance(p, _Name) for p in parts):
                self._parts = parts
                args = (_render(parts, "python"), *args[1:])
        super().__init__(*args)

    def render(self, style: str = "python") -> str:
        """The message with each option named as ``style`` (python, cli, toml) spells it (as
        :attr:`surface` spells it, where that is set)."""
        parts = self.__dict__.get("_parts")
        if parts is None:
            if style not in STYLES:
                raise ValueError(f"unknown message style {style!r}; choose one of {', '.join(STYLES)}")
            return str(self)
        return _render(parts, self.surface or style)

    @property
    def template(self) -> str:
        """The message with its placeholders, for a message that wraps this one
        (``PassError(f"pass x failed: {e.template}")``)."""
        parts = self.__dict__.get("_parts")
        if parts is None:
            return str(self)
        if self.surface is not None:
            return _render(parts, self.surface)
        return "".join(p if isinstance(p, str) else format(OPT, p.spec()) for p in parts)

    def about(self, surface: str) -> NpcompileError:
        """Fix the surface the options are named for (``"toml"``: the message is about a pipeline
        file's keys, even when the CLI prints it); returns the error."""
        if surface not in STYLES:
            raise ValueError(f"unknown message style {surface!r}; choose one of {', '.join(STYLES)}")
        self.surface = surface
        if self.__dict__.get("_parts") is not None:
            self.args = (_render(self._parts, surface), *self.args[1:])
        return self


class UserError(NpcompileError):
    """Bad input: a missing or corrupt file, wrong data, an unknown option. CLI exit code 2."""

    exit_code = 2


class OptionError(UserError):
    """A bad option value, or a missing one (CLI exit code 2). The message names the options by
    placeholder, ``OptionError(f"{OPT:round_to} must be >= 1, got {round_to}")``, never by flag:
    ``str()`` says ``round_to``, the CLI ``--round-to``."""


class VerificationError(NpcompileError):
    """npcompile's own output failed verification (checker, ONNX Runtime, output difference): an
    internal error, CLI exit code 3 with its traceback."""

    exit_code = 3


class GateError(NpcompileError):
    """A deployment gate (accuracy drop, speedup, size...) was violated. CLI exit code 1."""

    exit_code = 1


class PassError(NpcompileError):
    """A pass failed; the message names the pass and the passes that ran before it."""

    def __init__(self, message: str, exit_code: int = 3) -> None:
        super().__init__(message)
        self.exit_code = exit_code
