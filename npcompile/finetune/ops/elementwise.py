"""Elementwise ops: unary math, arithmetic with broadcasting, comparisons and logic, variadic
Max/Min/Sum/Mean, Where, and the pass-through ops (Identity, Dropout)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from npcompile.finetune.registry import OpFn, OpNode, register

__all__ = ["unary"]


def unary(fn: Callable[[torch.Tensor], torch.Tensor]) -> OpFn:
    def run(node: OpNode, x: torch.Tensor) -> torch.Tensor:
        return fn(x)

    return run


for _op, _fn in {
    "Exp": torch.exp, "Log": torch.log, "Sqrt": torch.sqrt, "Neg": torch.neg, "Abs": torch.abs, "Erf": torch.erf,
    "Reciprocal": torch.reciprocal, "Floor": torch.floor, "Ceil": torch.ceil, "Round": torch.round,
    "Sign": torch.sign, "Sin": torch.sin, "Cos": torch.cos, "Tan": torch.tan, "Not": torch.logical_not,
    "IsNaN": torch.isnan,
}.items():
    register(_op)(unary(_fn))


@register("IsInf")
def _isinf(node: OpNode, x: torch.Tensor) -> torch.Tensor:
    pos, neg = node.get("detect_positive", 1), node.get("detect_negative", 1)
    if pos and neg:
        return torch.isinf(x)
    if pos:
        return torch.isposinf(x)
    if neg:
        return torch.isneginf(x)
    return torch.zeros_like(x, dtype=torch.bool)


@register("Identity")
def _identity(node: OpNode, x: torch.Tensor) -> torch.Tensor:
    return x


@register("Dropout", static=(1, 2))
def _dropout(node: OpNode, x: torch.Tensor, ratio: Any = None, training: Any = None) -> Any:
    if 1 in node.used:
        return x, torch.ones_like(x, dtype=torch.bool)
    return x


def _both_int(a: torch.Tensor, b: torch.Tensor) -> bool:
    return not (a.is_floating_point() or b.is_floating_point())


@register("Add")
def _add(node: OpNode, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a + b


@register("Sub")
def _sub(node: OpNode, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a - b


@register("Mul")
def _mul(node: OpNode, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a * b


@register("Div")
def _div(node: OpNode, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if _both_int(a, b):
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


@register("Pow", static=(1,))
def _pow(node: OpNode, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if y.numel() == 1 and not y.requires_grad:
        e = y.item()
        if e == 2:
            return x * x
        out = torch.pow(x, e)
    else:
        out = torch.pow(x, y)
    return out if out.dtype == x.dtype else out.to(x.dtype)


@register("Mod")
def _mod(node: OpNode, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.fmod(a, b) if node.get("fmod", 0) else torch.remainder(a, b)


def _binary(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> OpFn:
    def run(node: OpNode, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return fn(a, b)

    return run


for _op, _fn in {
    "Equal": torch.eq, "Less": torch.lt, "LessOrEqual": torch.le, "Greater": torch.gt,
    "GreaterOrEqual": torch.ge, "And": torch.logical_and, "Or": torch.logical_or, "Xor": torch.logical_xor,
}.items():
    register(_op)(_binary(_fn))


def _variadic(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> OpFn:
    def run(node: OpNode, *xs: torch.Tensor) -> torch.Tensor:
        return functools.reduce(fn, xs)

    return run


register("Max")(_variadic(torch.maximum))
register("Min")(_variadic(torch.minimum))
register("Sum")(_variadic(torch.add))


@register("Mean")
def _mean(node: OpNode, *xs: torch.Tensor) -> torch.Tensor:
    return functools.reduce(torch.add, xs) / len(xs)


@register("Where", static=(0,))
def _where(node: OpNode, c: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(c if c.dtype == torch.bool else c.bool(), a, b)
