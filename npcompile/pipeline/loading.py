"""Importing a class named ``module:Class`` (passes, targets), with one-line user errors."""

from __future__ import annotations

import importlib

from npcompile.errors import UserError

__all__ = ["import_class"]


def import_class(spec: str, base: type, what: str) -> type:
    """The class ``spec`` (``module:Class``) names; it must subclass ``base``."""
    mod, _, attr = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(mod), attr)
    except Exception as e:
        raise UserError(f"cannot load {what} {spec}: {type(e).__name__}: {e}") from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise UserError(f"{spec} is not an npcompile {base.__name__}")
    return cls
