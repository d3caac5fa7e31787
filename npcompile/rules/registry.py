"""The registry of channel rules, one function per op family.

A rule tells how an op moves channels: which output axis carries the channel axis of its inputs,
which weights must lose the same channels, which inputs must lose them together. Rules are
registered by op type with :func:`register`; registering an op twice fails at import time, so a
rule is never silently shadowed. An op with no rule freezes every group it touches.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

    from npcompile.channels.analysis import ChannelAnalysis

__all__ = ["Freeze", "Rule", "register", "rule_for", "registered_ops", "load_builtin_rules"]

Rule = Callable[["gs.Node", "ChannelAnalysis"], None]


class Freeze(Exception):  # noqa: N818 - a signal, not an error
    """Raised by a rule (or a helper it calls) when the node is outside what the rule handles: the
    analysis freezes every group the node's inputs carry, with the message as the reason. Any
    other exception from a rule is a bug and propagates."""

_RULES: dict[tuple[str, str], Rule] = {}


def register(*ops: str, domain: str = "") -> Callable[[Rule], Rule]:
    """Register ``fn`` as the channel rule of ``ops`` (in ``domain``, default ONNX)."""
    if not ops:
        raise ValueError("register() needs at least one op type")

    def deco(fn: Rule) -> Rule:
        wrapped = _through_dequantize(fn)
        for op in ops:
            key = (domain, op)
            if key in _RULES:
                raise ValueError(f"a channel rule for {domain or 'ai.onnx'}::{op} is already registered")
            _RULES[key] = wrapped
        return fn

    return deco


def _through_dequantize(fn: Rule) -> Rule:
    """``fn`` as the analysis runs it: a weight that arrives through a ``DequantizeLinear`` of
    constants looks like a constant weight (see :mod:`npcompile.rules.quant`)."""

    def rule(node: gs.Node, ctx: ChannelAnalysis) -> None:
        from npcompile.rules.quant import run_rule

        run_rule(fn, node, ctx)

    rule.__name__, rule.__doc__, rule.__wrapped__ = fn.__name__, fn.__doc__, fn  # type: ignore[attr-defined]
    return rule


def rule_for(op: str, domain: str = "") -> Rule | None:
    if domain == "ai.onnx":
        domain = ""
    return _RULES.get((domain, op))


def registered_ops() -> list[str]:
    return sorted(f"{d + '::' if d else ''}{op}" for d, op in _RULES)


BUILTIN_FAMILIES = ("activation", "attention", "concat", "conv", "elementwise", "integer", "linear", "norm", "pool",
                    "quant", "recurrent", "reduce", "shape")


def load_builtin_rules() -> None:
    """Import the built-in rule modules (each registers its op family once)."""
    import importlib

    for family in BUILTIN_FAMILIES:
        importlib.import_module(f"npcompile.rules.{family}")
