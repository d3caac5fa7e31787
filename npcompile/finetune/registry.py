"""The registry of torch functions, one per ONNX op type, and what a function sees of its node.

Op families (``npcompile.finetune.ops.*``) register their functions with :func:`register` at import
time; registering an op twice fails at import, like the channel rules. :class:`OpNode` carries a
node's attributes (plain Python values), opset and outputs in use to the function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import onnx
from onnx import helper

__all__ = ["OpFn", "OpNode", "OpSpec", "Shadow", "State", "op_key", "op_label", "op_spec", "register",
           "registered_ops", "unsupported_ops"]

OpFn = Callable[..., Any]


@dataclass(frozen=True)
class Shadow:
    """How an integer constant in input slot 0 trains through a floating-point copy (a quantized
    weight): ``value(node, q, *rest)`` is the parameter it starts as, ``run(node, w, *rest)`` the op
    computed from that parameter, ``store(node, w, *rest)`` the integers written back (``rest``:
    the node's other inputs, constants)."""

    value: Callable[..., Any]
    run: OpFn
    store: Callable[..., Any]


@dataclass(frozen=True)
class OpSpec:
    """A registered torch function and how its input slots are used.

    ``static``: slots holding shapes, axes, indices, bounds, quantization scales: never trainable.
    ``weights``: slots holding weights or biases: trainable even when scalar. ``stats``: running
    statistics (buffers, updated only when batch statistics are enabled). ``check``: an optional
    function of the node returning why it cannot run (an unsupported attribute value) or ``None``.
    ``shadow``: an integer constant in slot 0 trains as a float parameter (see :class:`Shadow`).
    """

    fn: OpFn
    static: tuple[int, ...] = ()
    weights: tuple[int, ...] = ()
    stats: tuple[int, ...] = ()
    check: Callable[[OpNode], str | None] | None = None
    shadow: Shadow | None = None


_OPS: dict[tuple[str, str], OpSpec] = {}


def register(*ops: str, domain: str = "", static: Sequence[int] = (), weights: Sequence[int] = (),
             stats: Sequence[int] = (), check: Callable[[OpNode], str | None] | None = None,
             shadow: Shadow | None = None) -> Callable[[OpFn], OpFn]:
    """Register ``fn(node, *inputs)`` as the torch function of ``ops`` (twice is an error).

    The function receives the :class:`OpNode` (attributes, opset) and the input tensors (``None``
    for an omitted optional input) and returns a tensor or a tuple of tensors (one per output).
    """
    if not ops:
        raise ValueError("register() needs at least one op type")
    if domain == "ai.onnx":
        domain = ""

    def deco(fn: OpFn) -> OpFn:
        for op in ops:
            key = (domain, op)
            if key in _OPS:
                raise ValueError(f"a torch function for {domain or 'ai.onnx'}::{op} is already registered")
            _OPS[key] = OpSpec(fn, tuple(static), tuple(weights), tuple(stats), check, shadow)
        return fn

    return deco


def registered_ops() -> list[str]:
    """Op types that have a torch function (``domain::Op`` outside the default domain)."""
    return sorted(f"{d + '::' if d else ''}{op}" for d, op in _OPS)


def op_key(node: onnx.NodeProto) -> tuple[str, str]:
    """``(domain, op_type)`` of ``node``, the default domain spelled ``""``."""
    domain = node.domain if node.domain not in ("", "ai.onnx") else ""
    return domain, node.op_type


def op_label(node: onnx.NodeProto) -> str:
    """The op type of ``node``, prefixed by its domain outside the default one."""
    domain, op = op_key(node)
    return f"{domain}::{op}" if domain else op


def op_spec(node: onnx.NodeProto) -> OpSpec | None:
    """The registered spec of ``node``'s op, or ``None``."""
    return _OPS.get(op_key(node))


def unsupported_ops(model: onnx.ModelProto) -> list[str]:
    """Op types of ``model`` without a torch function, sorted."""
    return sorted({op_label(n) for n in model.graph.node if op_key(n) not in _OPS})


class State:
    """Mutable state shared by the nodes of one module: ``batch_stats`` (BatchNormalization uses
    and updates batch statistics) and ``training`` (the module is in training mode: quantization
    ops fake-quantize with a straight-through gradient)."""

    __slots__ = ("batch_stats", "training")

    def __init__(self) -> None:
        self.batch_stats = False
        self.training = False


class OpNode:
    """What a torch function sees of its node: attributes (plain Python values), opset, outputs."""

    __slots__ = ("op", "name", "domain", "opset", "attrs", "inputs", "outputs", "used", "state", "cache")

    def __init__(self, node: onnx.NodeProto, opset: int, state: State) -> None:
        self.op = node.op_type
        self.name = node.name or node.output[0]
        self.domain = node.domain
        self.opset = opset
        self.attrs = {a.name: _attr_value(a) for a in node.attribute}
        self.inputs = list(node.input)
        self.outputs = list(node.output)
        #: indices of the outputs that something consumes (or that are graph outputs)
        self.used: set[int] = set()
        self.state = state
        self.cache: dict[Any, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    def __repr__(self) -> str:
        return f"OpNode({self.op} {self.name!r})"


def _attr_value(a: onnx.AttributeProto) -> Any:
    if a.type == onnx.AttributeProto.TENSOR:
        return a.t
    if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
        return a  # no registered op takes subgraphs; kept for the unsupported-op message
    v = helper.get_attribute_value(a)
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, list) and v and isinstance(v[0], bytes):
        return [s.decode() for s in v]
    return v
