"""Which initializers of a graph are trainable weights, which are constants, which are running
statistics (see :mod:`npcompile.finetune.graph_module` for the rules in words).

Quantized weights (integer constants a DequantizeLinear turns into floats) train through float
copies (:class:`~npcompile.finetune.registry.Shadow`). Besides the op slots (static, weights,
statistics: :class:`~npcompile.finetune.registry.OpSpec`),
three facts of a tensor keep it constant: a non-finite value (the ``-inf`` of a precomputed mask);
feeding only ``Cos``/``Sin`` (a table of rotary angles); and the provenance the dynamo exporter
records in ``value_info`` metadata: a PyTorch buffer or constant (``InputSpec.kind``), or a tensor
folded from code constants alone (a mask or range, no module attribute among its sources) or from
a ``cos``/``sin`` (a rotary table).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Collection, Sequence

import onnx
import torch

from npcompile.finetune.registry import OpNode, OpSpec

__all__ = ["exporter_constants", "role"]

_KIND = "pkg.torch.export.graph_signature.InputSpec.kind"
_FOLDED = "pkg.onnxscript.optimizer.folded_from"
_TRIG = re.compile(r"^(cos|sin)(_\d+)?$")
_ANGLE_OPS = {"Cos", "Sin"}


def exporter_constants(model: onnx.ModelProto) -> set[str]:
    """Initializers that the exporter's metadata shows are not trained weights in PyTorch."""
    inits = {t.name for t in model.graph.initializer}
    out: set[str] = set()
    for vi in model.graph.value_info:
        if vi.name not in inits or not vi.metadata_props:
            continue
        meta = {p.key: p.value for p in vi.metadata_props}
        kind = meta.get(_KIND)
        if kind is not None and kind != "PARAMETER":
            out.add(vi.name)
            continue
        if _FOLDED in meta:
            try:
                sources = [str(s) for s in ast.literal_eval(meta[_FOLDED])]
            except (ValueError, SyntaxError):
                continue
            if not any("." in s for s in sources) or any(_TRIG.match(s) for s in sources):
                out.add(vi.name)
    return out


def role(name: str, t: torch.Tensor, uses: Sequence[tuple[int, int]], nodes: Sequence[OpNode],
         specs: Sequence[OpSpec], trainable: Collection[str] | None, fixed: Collection[str],
         constants: Collection[str] = ()) -> str:
    """``"param"``, ``"stat"`` (running statistics), ``"shadow"`` (an integer weight trained through a
    float copy, see :class:`~npcompile.finetune.registry.Shadow`) or ``"const"`` for the value ``t``
    of initializer (or Constant) ``name`` consumed at ``uses`` (node index, input slot); ``fixed``:
    names known not to be weights (:func:`exporter_constants`); ``constants``: names whose values
    are constants (the other inputs of a shadow's node must be)."""
    if any(slot in specs[k].stats for k, slot in uses):
        return "stat"
    if _shadowed(t, uses, nodes, specs, constants) and (trainable is None or name in trainable):
        return "shadow"
    data = [(k, slot) for k, slot in uses if slot not in specs[k].static]
    if not data or not t.is_floating_point():
        return "const"
    if trainable is not None:
        return "param" if name in trainable else "const"
    if name in fixed or not bool(torch.isfinite(t).all()):
        return "const"
    if all(nodes[k].op in _ANGLE_OPS for k, _ in data):
        return "const"
    if t.numel() > 1 or any(slot in specs[k].weights for k, slot in data):
        return "param"
    return "const"


def _shadowed(t: torch.Tensor, uses: Sequence[tuple[int, int]], nodes: Sequence[OpNode], specs: Sequence[OpSpec],
              constants: Collection[str]) -> bool:
    """An integer tensor used once, in the shadow slot of a node whose other inputs are constants."""
    if t.is_floating_point() or t.dtype == torch.bool or t.numel() <= 1 or len(uses) != 1:
        return False
    k, slot = uses[0]
    return slot == 0 and specs[k].shadow is not None and all(x in constants for x in nodes[k].inputs[1:] if x)
