"""Run (and train) an ONNX graph in PyTorch, one small torch function per ONNX op.

:class:`GraphModule` turns an ``onnx.ModelProto`` into a ``torch.nn.Module`` without the original
training code: every node is executed by the torch function registered for its op type (see
:func:`~npcompile.finetune.registry.register` and the op families in :mod:`npcompile.finetune.ops`;
registering an op twice fails at import time, like the channel rules).

What becomes what:

- **Trainable parameters** (``nn.Parameter``): floating-point initializers (and floating-point
  ``Constant`` node values) that feed computation: weights and biases of Conv, ConvTranspose,
  Gemm, MatMul, LSTM/GRU/RNN, normalisation scales and shifts, PRelu slopes, embedding tables of
  Gather, layer-scale factors, position embeddings. A floating-point *scalar* is a parameter only
  where it is a weight or a bias (a Gemm bias of one unit); elsewhere a scalar is an architecture
  constant (``x / 8`` in attention, the ``+ 3`` of a decomposed hard-swish, an epsilon) and stays
  fixed. Never a weight: a tensor holding a non-finite value (the ``-inf`` of a precomputed
  attention mask), a table of angles (consumed only by Cos/Sin), and what the dynamo exporter's
  metadata shows is a PyTorch buffer, a folded mask or a folded rotary table (see
  :mod:`npcompile.finetune.roles`).
- **Constants** (buffers, never trained): integer and boolean tensors, values in *static* input
  slots (shapes, axes, pads, Resize scales, Clip bounds, Pow exponents, quantization scales and
  zero points) and the running mean and variance of BatchNormalization.
- **BatchNormalization** always has eval-mode semantics with the graph's running statistics
  unless ``freeze_bn_stats=False`` *and* the module is in training mode: then it normalises with
  batch statistics and updates the running statistics (momentum from the node, as in the ONNX
  spec), and :meth:`GraphModule.write_back` writes the updated statistics too. The default
  (frozen) is what fine-tuning after pruning wants: small data sets and batches give poor
  statistics, and frozen statistics keep the model the ONNX graph describes.
- ``Dropout`` is the identity (as in every exported inference graph).
- **Quantization** (QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear) is exact in eval mode;
  in training mode it is fake quantization with a straight-through gradient. Quantized weights
  (integer initializers a DequantizeLinear dequantizes, as in ONNX Runtime's QDQ models) train
  through float copies and are written back as integers (see :mod:`npcompile.finetune.ops.quant`).
- One initializer consumed in several places is one parameter: weights an exporter deduplicated
  (two LayerNorms both initialised to ones, say) stay tied, as the ONNX graph describes them.

Nodes whose inputs are all constants are evaluated once, when the module is built. A model with
ops that have no torch function raises :class:`~npcompile.errors.UserError` listing them all.
:meth:`GraphModule.write_back` returns a copy of the model with the trained values, in the
original dtypes and storage (``raw_data`` or typed fields), byte-identical otherwise.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import onnx
import torch
from torch import nn

import npcompile.finetune.ops  # noqa: F401  (registers the op families)
from npcompile.errors import UserError
from npcompile.finetune.ops.shape import constant_value
from npcompile.finetune.registry import (
    OpFn,
    OpNode,
    OpSpec,
    State,
    op_key,
    op_spec,
    register,
    registered_ops,
    unsupported_ops,
)
from npcompile.finetune.roles import exporter_constants, role
from npcompile.finetune.tensors import store, tensor_from_proto, torch_dtype

__all__ = ["GraphModule", "OpNode", "register", "registered_ops", "unsupported_ops", "torch_dtype"]


@dataclass
class _Step:
    fn: OpFn
    node: OpNode
    inputs: list[str]
    outputs: list[str]
    release: list[str] = field(default_factory=list)


@dataclass
class _Plan:
    """What building a module learns about the graph, step by step."""

    nodes: list[OpNode]
    specs: list[OpSpec]
    #: value name -> (node index, input slot) of each use
    consumers: dict[str, list[tuple[int, int]]]
    graph_outputs: set[str]
    #: initializer and Constant values by name, and where each came from
    values: dict[str, torch.Tensor] = field(default_factory=dict)
    sources: dict[str, tuple[str, int]] = field(default_factory=dict)


class GraphModule(nn.Module):
    """An ONNX graph as a trainable ``torch.nn.Module`` (see the module docstring).

    ``model``: the ONNX model (not modified). ``freeze_bn_stats``: keep BatchNormalization in
    eval mode with the graph's running statistics even when training (default); ``False`` uses
    and updates batch statistics in training mode. ``trainable``: names of the initializers to
    train (default: every floating-point weight, see the module docstring); any other float
    initializer becomes a constant.

    ``forward(*inputs, **named)`` takes the graph inputs in order or by name (tensors or NumPy
    arrays) and returns the single output, or a tuple of outputs in graph order.
    """

    def __init__(self, model: onnx.ModelProto, freeze_bn_stats: bool = True,
                 trainable: Collection[str] | None = None) -> None:
        super().__init__()
        self.model = model
        self.freeze_bn_stats = freeze_bn_stats
        self._state = State()
        missing = unsupported_ops(model)
        if missing:
            raise UserError(f"cannot train: no torch function for op(s) {', '.join(missing)}")
        graph = model.graph
        inits = {t.name for t in graph.initializer}
        self.input_names = [i.name for i in graph.input if i.name not in inits]
        self.output_names = [o.name for o in graph.output]
        plan = self._plan(model)
        _collect_constants(graph, plan)
        const_env = self._register_tensors(plan, trainable)
        self._steps = self._fold_constants(plan, const_env)
        _plan_release(self._steps, plan.graph_outputs | set(plan.values) | set(const_env))
        self._env: dict[str, torch.Tensor] = {}
        self._refresh_env()

    # -- building -----------------------------------------------------------------

    def _plan(self, model: onnx.ModelProto) -> _Plan:
        """Nodes, their specs and consumers; refuses attribute values no function supports."""
        opset = next((int(i.version) for i in model.opset_import if i.domain in ("", "ai.onnx")), 0)
        nodes = [OpNode(n, opset, self._state) for n in model.graph.node]
        specs = [op_spec(n) for n in model.graph.node]
        consumers: dict[str, list[tuple[int, int]]] = {}
        for k, n in enumerate(nodes):
            for slot, name in enumerate(n.inputs):
                if name:
                    consumers.setdefault(name, []).append((k, slot))
        graph_outputs = set(self.output_names)
        for n in nodes:
            n.used = {i for i, o in enumerate(n.outputs) if o and (o in consumers or o in graph_outputs)}
        problems = sorted({f"{n.op} ({why})" for n, s in zip(nodes, specs, strict=True)
                           if s.check is not None and (why := s.check(n)) is not None})
        if problems:
            raise UserError(f"cannot train: unsupported {'; '.join(problems)}")
        return _Plan(nodes, specs, consumers, graph_outputs)

    def _register_tensors(self, plan: _Plan, trainable: Collection[str] | None) -> dict[str, torch.Tensor]:
        """Initializers and Constant values as parameters or buffers; returns the constants."""
        fixed = exporter_constants(self.model)
        self.param_names: list[str] = []
        self.stat_names: list[str] = []
        self.params = nn.ParameterList()
        self._consts = nn.Module()
        self._sources = plan.sources
        self._nodes, self._specs = plan.nodes, plan.specs
        self._const_keys: dict[str, str] = {}
        #: quantized weights trained through float copies: name -> index of their node
        self._shadows: dict[str, int] = {}
        const_env: dict[str, torch.Tensor] = {}
        for name, t in plan.values.items():
            used = name in plan.consumers or name in plan.graph_outputs
            uses = plan.consumers.get(name, [])
            r = role(name, t, uses, plan.nodes, plan.specs, trainable, fixed, plan.values) if used else "const"
            if r == "shadow":
                k = uses[0][0]
                node, spec = plan.nodes[k], plan.specs[k]
                t = spec.shadow.value(node, t, *[plan.values[x] if x else None for x in node.inputs[1:]])
                self._shadows[name] = k
            if r in ("param", "shadow"):
                self.param_names.append(name)
                self.params.append(nn.Parameter(t))
                continue
            if r == "stat":
                self.stat_names.append(name)
            self._add_const(name, t, persistent=True)
            const_env[name] = t
        if trainable is not None:
            unknown = sorted(set(trainable) - set(plan.values))
            if unknown:
                raise ValueError(f"trainable names no initializer: {unknown[:5]}")
        return const_env

    def _add_const(self, name: str, value: torch.Tensor, persistent: bool) -> None:
        key = f"c{len(self._const_keys)}"
        self._consts.register_buffer(key, value, persistent=persistent)
        self._const_keys[name] = key

    def _fold_constants(self, plan: _Plan, const_env: dict[str, torch.Tensor]) -> list[_Step]:
        """Evaluate nodes whose inputs are all constants (not parameters) once; the rest are steps."""
        param_set = set(self.param_names)
        shadowed = set(self._shadows.values())
        steps: list[_Step] = []
        with torch.no_grad():
            for k, (n, spec) in enumerate(zip(plan.nodes, plan.specs, strict=True)):
                if n.op == "Constant" and n.outputs[0] in plan.values:
                    continue
                ins = [x for x in n.inputs if x]
                if all(x in const_env and x not in param_set for x in ins) and not spec.stats:
                    out = self._call(spec.fn, n, [const_env[x] if x else None for x in n.inputs])
                    outs = out if isinstance(out, tuple) else (out,)
                    for name, v in zip(n.outputs, outs, strict=False):
                        if name:
                            self._add_const(name, v, persistent=False)
                            const_env[name] = v
                    continue
                fn = spec.shadow.run if k in shadowed else spec.fn
                steps.append(_Step(fn, n, list(n.inputs), list(n.outputs)))
        return steps

    # -- parameters and buffers -------------------------------------------------

    def _refresh_env(self) -> None:
        env = {name: getattr(self._consts, key) for name, key in self._const_keys.items()}
        for name, p in zip(self.param_names, self.params, strict=True):
            env[name] = p
        self._env = env

    def _apply(self, fn: Any, recurse: bool = True) -> GraphModule:  # .to(), .double(), ...
        super()._apply(fn, recurse)
        self._refresh_env()
        return self

    def named_onnx_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(initializer name, parameter) pairs, in model order."""
        return list(zip(self.param_names, self.params, strict=True))

    def onnx_tensor(self, name: str) -> torch.Tensor:
        """The current value of an initializer (parameter or constant) by its ONNX name."""
        return self._env[name]

    # -- running ------------------------------------------------------------------

    @staticmethod
    def _call(fn: OpFn, node: OpNode, args: list[Any]) -> Any:
        while args and args[-1] is None:
            args.pop()
        try:
            return fn(node, *args)
        except Exception as e:
            raise _node_error(node, e) from e

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        env = self._feeds(args, kwargs)
        self._state.batch_stats = self.training and not self.freeze_bn_stats
        self._state.training = self.training
        for step in self._steps:
            args_ = [env[x] if x else None for x in step.inputs]
            try:
                out = step.fn(step.node, *args_)
            except Exception as e:
                raise _node_error(step.node, e) from e
            if isinstance(out, torch.Tensor):
                env[step.outputs[0]] = out
            else:
                for name, v in zip(step.outputs, out, strict=False):
                    if name:
                        env[name] = v
            for name in step.release:
                del env[name]
        outs = tuple(env[n] for n in self.output_names)
        return outs[0] if len(outs) == 1 else outs

    def _feeds(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The value environment of one run: constants, parameters and the graph inputs."""
        if len(args) > len(self.input_names):
            raise TypeError(f"the graph takes {len(self.input_names)} input(s), got {len(args)}")
        env = dict(self._env)
        for name, v in zip(self.input_names, args, strict=False):
            env[name] = v if isinstance(v, torch.Tensor) else torch.as_tensor(v)
        for name, v in kwargs.items():
            if name not in self.input_names:
                raise TypeError(f"unknown graph input {name!r}; inputs are {self.input_names}")
            env[name] = v if isinstance(v, torch.Tensor) else torch.as_tensor(v)
        missing = [n for n in self.input_names if n not in env]
        if missing:
            raise TypeError(f"missing graph input(s) {missing}")
        return env

    # -- back to ONNX -----------------------------------------------------------

    def write_back(self, model: onnx.ModelProto | None = None) -> onnx.ModelProto:
        """A copy of ``model`` (default: the model this module was built from) with the current
        parameter values (and running statistics, when they were updated) in the original dtypes
        and storage; everything else is byte-identical."""
        src = self.model if model is None else model
        out = onnx.ModelProto()
        out.CopyFrom(src)
        inits = {t.name: t for t in out.graph.initializer}
        names = list(self.param_names) + ([] if self.freeze_bn_stats else list(self.stat_names))
        for name in names:
            value = self._env[name].detach()
            if name in self._shadows:  # back to the integers of a quantized weight
                k = self._shadows[name]
                node = self._nodes[k]
                value = self._specs[k].shadow.store(node, value, *[self._env[x] if x else None
                                                                   for x in node.inputs[1:]])
            kind, idx = self._sources[name]
            if kind == "init":
                tp = inits.get(name)
                if tp is None:
                    raise ValueError(f"the model has no initializer {name!r} to write back")
            else:
                node = out.graph.node[idx] if model is None else next(
                    (n for n in out.graph.node if n.op_type == "Constant" and n.output and n.output[0] == name),
                    None)
                if node is None:
                    raise ValueError(f"the model has no Constant {name!r} to write back")
                tp = next(a.t for a in node.attribute if a.name == "value")
            if list(tp.dims) != list(value.shape):
                raise ValueError(f"{name}: the model's shape {list(tp.dims)} differs from the trained "
                                 f"{list(value.shape)}")
            store(tp, value)
        return out


def _collect_constants(graph: onnx.GraphProto, plan: _Plan) -> None:
    """Initializer values, then the values of ``Constant`` nodes holding a tensor."""
    for i, t in enumerate(graph.initializer):
        plan.values[t.name] = tensor_from_proto(t)
        plan.sources[t.name] = ("init", i)
    for k, (n, proto) in enumerate(zip(plan.nodes, graph.node, strict=True)):
        if n.op == "Constant" and op_key(proto) == ("", "Constant") and "value" in n.attrs:
            plan.values[n.outputs[0]] = constant_value(n)
            plan.sources[n.outputs[0]] = ("node", k)


def _plan_release(steps: list[_Step], keep: set[str]) -> None:
    """Free each intermediate value after the step that uses it last."""
    last: dict[str, int] = {}
    for s_idx, s in enumerate(steps):
        for x in s.inputs:
            if x:
                last[x] = s_idx
    for name, s_idx in last.items():
        if name not in keep:
            steps[s_idx].release.append(name)


def _node_error(node: OpNode, e: Exception) -> Exception:
    """``e`` with the node that raised it named: a UserError stays one, anything else is a
    RuntimeError."""
    if isinstance(e, UserError):
        return UserError(f"cannot run node {node.name} ({node.op}) in torch: {e}")
    return RuntimeError(f"torch execution of node {node.name} ({node.op}) failed: {type(e).__name__}: {e}")
