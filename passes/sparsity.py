"""Weight sparsity: zero individual weights by magnitude (Han et al. 2015), or in TensorRT's 2:4 pattern.

Neuron (channel) pruning removes whole channels and makes the graph smaller; this pass then
zeroes single weights inside the layers that are left ("neuron pruning followed by weight
pruning"). The graph keeps its structure: zeros are written into the existing weight tensors.
Only the weights (input 1) of Conv, ConvTranspose, Gemm and MatMul are touched, and only
constant ones (see :func:`npcompile.graph.weights.weight_slots`); biases, normalisation parameters
and every other constant stay as they are.

- ``sparsity=0.8`` - **unstructured**: the 80 % smallest ``|w|`` are zeroed, per layer
  (``scope="layer"``: every layer ends at 80 %) or with one threshold over all selected layers
  (``scope="global"``: 80 % overall, layers with small weights lose more; no layer goes beyond
  ``max(max_layer_sparsity, sparsity)``, default 0.99, the others taking up the rest, so a
  layer of small weights is never wiped out). The level is met up to rounding
  (``round(s * n)`` weights; a layer that already had more zeros keeps them).
- ``sparsity="2:4"`` - **structured N:M** (TensorRT's sparse tensor cores take 2:4): in every
  group of 4 consecutive input channels (Conv: axis 1 of ``[Cout, Cin/g, k...]``, the group
  running along ``Cin`` for each output channel and kernel position; Gemm: the K axis, axis 1
  with ``transB=1`` else 0; MatMul: axis -2) at most 2 weights are non-zero, the 2 largest
  ``|w|``. ConvTranspose, depthwise convolutions, input-channel counts that are not a
  multiple of 4 and 1-D MatMul weights are skipped, with the reason.

Layers smaller than ``min_size`` weights are skipped (a level of 1 % precision needs ~50
weights; tiny layers hold a negligible share of the parameters). ``include``/``exclude`` are
fnmatch patterns (a list, or one comma-separated string) on the layer (node) name or the weight
tensor name. Ties are broken by position (of equal ``|w|``, the lower flat index - within a
group of 4, the lower input channel - goes first): the result is deterministic, and running
the pass again on its own output changes nothing.

``PassResult.data`` (also the report's ``sparsity`` section) holds the mode, the per-layer
figures (dense parameters, non-zeros before and after, sparsity, weight bytes, zlib bytes
before and after), the skipped layers with their reasons, and totals over every weight tensor
of the weight-bearing ops. Compressed sizes are measured two ways: ``zlib`` is
``len(zlib.compress(bytes, zlib_level))`` summed over the tensors' raw bytes (in 1 MiB chunks
compressed in parallel; level 6 by default, ~4 s of CPU per 100 MB of weights - level 9 is
10x slower on sparse data for ~2 % less; ``zlib_level=None`` skips it), i.e. what a zipped
model file gains; ``bitmask`` is the non-zero values plus one bit per weight (a simple sparse
encoding; for 2:4, the size of TensorRT's compressed weights: half the values plus 2-bit
indices).

Fine-tuning afterwards keeps the zeros (``finetune`` holds zero weights at zero by default).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from npcompile.errors import UserError
from npcompile.graph.names import matches, name_patterns
from npcompile.graph.weights import (
    WeightSlot,
    bitmask_bytes,
    global_keep,
    magnitude_keep,
    nm_keep,
    nm_violations,
    parse_sparsity,
    read_weight,
    weight_slots,
    write_weight,
    zlib_bytes,
)
from npcompile.pipeline import Context, Pass, PassOptions, PassResult, option, register_pass

__all__ = ["SparsityPass", "parse_sparsity"]

log = logging.getLogger(__name__)

SCOPES = ("layer", "global")
#: N:M patterns apply to these ops (TensorRT's sparse math covers convolutions and matrix products)
NM_OPS = ("Conv", "Gemm", "MatMul")


def _matches(slot: WeightSlot, patterns: list[str]) -> bool:
    return matches((*slot.nodes, slot.tensor), patterns)


def _or_none(patterns: list[str]) -> list[str] | None:
    return patterns or None


@register_pass
class SparsityPass(Pass):
    """Zero single weights of Conv/ConvTranspose/Gemm/MatMul by magnitude (a fraction, per layer
    or global) or in an N:M pattern along the input channels (``"2:4"``)."""

    name = "sparsity"
    kind = "rewrite"
    description = "zero individual weights: unstructured magnitude sparsity (per layer or global) or 2:4"
    produces = frozenset({"model"})
    exact = False

    @dataclass(frozen=True)
    class Options(PassOptions):
        sparsity: float | str = 0.5
        scope: str = "layer"
        include: str | Sequence[str] | None = option(None, report=_or_none)
        exclude: str | Sequence[str] | None = option(None, report=_or_none)
        min_size: int = 64
        max_layer_sparsity: float | None = 0.99
        zlib_level: int | None = 6
        #: derived: the unstructured fraction or the N:M pattern, the cap on a layer's sparsity
        #: (global scope) and the zlib level as an int
        level: float | None = option(None, init=False)
        nm: tuple[int, int] | None = option(None, init=False)
        max_layer: float | None = option(None, init=False)
        zlib: int | None = option(None, init=False)

        def __post_init__(self) -> None:
            sparsity, max_layer_sparsity, zlib_level = self.sparsity, self.max_layer_sparsity, self.zlib_level
            parsed = parse_sparsity(sparsity)
            scope = str(self.scope).lower()
            if scope not in SCOPES:
                raise UserError(f"sparsity scope must be one of {', '.join(SCOPES)}, got {scope!r}")
            if isinstance(parsed, tuple) and scope == "global":
                raise UserError(f"sparsity scope 'global' applies to a fraction; the pattern {sparsity} is the "
                                "same in every group of input channels (use scope 'layer')")
            if int(self.min_size) < 0:
                raise UserError(f"sparsity min_size must be >= 0, got {self.min_size}")
            if max_layer_sparsity is not None and not 0.0 < float(max_layer_sparsity) <= 1.0:
                raise UserError(f"max_layer_sparsity must be in (0, 1] (or None), got {max_layer_sparsity}")
            if zlib_level is not None and not 0 <= int(zlib_level) <= 9:
                raise UserError(f"zlib_level must be between 0 and 9 (or None), got {zlib_level}")
            level = None if isinstance(parsed, tuple) else parsed
            self._set(sparsity=sparsity if isinstance(sparsity, str) else float(sparsity), scope=scope,
                      include=name_patterns(self.include), exclude=name_patterns(self.exclude),
                      min_size=int(self.min_size),
                      max_layer_sparsity=None if max_layer_sparsity is None else float(max_layer_sparsity),
                      level=level, nm=parsed if isinstance(parsed, tuple) else None,
                      max_layer=None if max_layer_sparsity is None or level is None else
                      max(float(max_layer_sparsity), level),
                      zlib=None if zlib_level is None else int(zlib_level))

    @property
    def mode(self) -> str:
        return f"{self.nm[0]}:{self.nm[1]}" if self.nm else "unstructured"

    def _skip_reason(self, slot: WeightSlot) -> str | None:
        """Why ``slot`` is not sparsified (``None``: it is)."""
        if self.include and not _matches(slot, self.include):
            return "not included (include patterns)"
        if self.exclude and _matches(slot, self.exclude):
            return "excluded (exclude patterns)"
        if slot.reason:
            return slot.reason
        if self.nm is not None:
            n, m = self.nm
            bad = [op for op in slot.ops if op not in NM_OPS]
            if bad:
                return f"{bad[0]}: the {self.mode} pattern applies to {', '.join(NM_OPS)} weights"
            if slot.in_axis is None:
                return f"a {len(slot.shape)}-D weight has no input-channel axis"
            cin = slot.shape[slot.in_axis]
            if slot.op == "Conv" and slot.group > 1 and cin == 1:
                return "depthwise convolution (one input channel per group)"
            if cin % m:
                per = " per group" if slot.op == "Conv" and slot.group > 1 else ""
                return f"{cin} input channels{per}, not a multiple of {m}"
        if slot.size < self.min_size:
            return f"too small ({slot.size} weights < min_size {self.min_size})"
        return None

    def run(self, ctx: Context) -> PassResult:
        model = onnx.ModelProto()
        model.CopyFrom(ctx.model)
        slots = weight_slots(model)
        chosen: list[tuple[WeightSlot, np.ndarray]] = []
        skipped: list[dict[str, Any]] = []
        other: list[np.ndarray] = []  # weights left as they are (for the totals)
        for slot in slots:
            reason = self._skip_reason(slot)
            if reason is None:
                chosen.append((slot, read_weight(model, slot.tensor)))
            else:
                skipped.append({"name": slot.name, "op": slot.op, "weight": slot.tensor, "shape": list(slot.shape),
                                "params": slot.size, "reason": reason})
                if slot.shape and not slot.reason:
                    other.append(read_weight(model, slot.tensor))

        capped: list[int] = []
        if self.nm is not None:
            n, m = self.nm
            keeps = [nm_keep(w, n, m, slot.in_axis) for slot, w in chosen]
        elif self.scope == "global":
            keeps, capped = global_keep([w for _, w in chosen], self.level, self.max_layer)
        else:
            keeps = [magnitude_keep(w, self.level) for _, w in chosen]

        layers: list[dict[str, Any]] = []
        before_arrays, after_arrays = [], []
        for (slot, w), keep in zip(chosen, keeps, strict=True):
            new = np.where(keep, w, np.zeros((), w.dtype)).astype(w.dtype, copy=False)
            nz_before, nz_after = int(np.count_nonzero(w)), int(np.count_nonzero(new))
            if nz_after != nz_before:
                write_weight(model, slot.tensor, new)
            if self.nm is not None and nm_violations(new, *self.nm, slot.in_axis):  # pragma: no cover - a bug
                raise RuntimeError(f"{slot.name}: the {self.mode} pattern does not hold after sparsification")
            rec: dict[str, Any] = {"name": slot.name, "op": slot.op, "weight": slot.tensor, "shape": list(slot.shape),
                                   "params": slot.size, "nonzero_before": nz_before, "nonzero": nz_after,
                                   "sparsity": 1.0 - nz_after / slot.size if slot.size else 0.0,
                                   "bytes": int(w.nbytes), "bitmask_bytes": bitmask_bytes(new)}
            if self.nm is not None:
                rec["axis"] = slot.in_axis
            if len(slot.nodes) > 1:
                rec["shared_by"] = list(slot.nodes)
            layers.append(rec)
            before_arrays.append(w)
            after_arrays.append(new)

        data = self._summary(layers, skipped, before_arrays, after_arrays, other, [layers[i]["name"] for i in capped])
        changed = any(rec["nonzero"] != rec["nonzero_before"] for rec in layers)
        if changed:
            ctx.set_model(model)
        return PassResult(changed, data["summary"], data, report=data)

    def _summary(self, layers: list[dict[str, Any]], skipped: list[dict[str, Any]], before: list[np.ndarray],
                 after: list[np.ndarray], other: list[np.ndarray], capped: list[str]) -> dict[str, Any]:
        dense = sum(r["params"] for r in layers)
        nz_before = sum(r["nonzero_before"] for r in layers)
        nz_after = sum(r["nonzero"] for r in layers)
        other_params = sum(int(w.size) for w in other)
        other_nz = sum(int(np.count_nonzero(w)) for w in other)
        weights = {
            "tensors": len(layers) + len(other),
            "params": dense + other_params,
            "nonzero_before": nz_before + other_nz,
            "nonzero": nz_after + other_nz,
            "bytes": sum(int(w.nbytes) for w in before + other),
            "bitmask_bytes": sum(r["bitmask_bytes"] for r in layers) + sum(bitmask_bytes(w) for w in other),
        }
        weights["sparsity"] = 1.0 - weights["nonzero"] / weights["params"] if weights["params"] else 0.0
        if self.zlib is not None:
            # the unchanged tensors compress the same before and after: measured once
            z_other = sum(zlib_bytes(other, self.zlib))
            z_before = zlib_bytes(before, self.zlib)
            changed = [i for i, r in enumerate(layers) if r["nonzero"] != r["nonzero_before"]]
            z_after = list(z_before)
            for i, size in zip(changed, zlib_bytes([after[i] for i in changed], self.zlib), strict=True):
                z_after[i] = size
            for rec, zb, za in zip(layers, z_before, z_after, strict=True):
                rec["zlib_bytes_before"], rec["zlib_bytes"] = zb, za
            weights["zlib_bytes_before"] = sum(z_before) + z_other
            weights["zlib_bytes"] = sum(z_after) + z_other
        sparsity = 1.0 - nz_after / dense if dense else 0.0
        level = f"unstructured {self.level:g} ({self.scope})" if self.nm is None else self.mode
        text = (f"{level} sparsity: {len(layers)} layers, {_num(dense)} weights -> {_num(nz_after)} "
                f"non-zero ({100 * sparsity:.1f} % zero), {len(skipped)} skipped")
        if "zlib_bytes" in weights:
            text += f"; weights zlib {_num(weights['zlib_bytes_before'])}B -> {_num(weights['zlib_bytes'])}B"
        notes = [f"layer {r['name']} lost every weight" for r in layers if r["nonzero"] == 0 and r["nonzero_before"]]
        if capped:
            more = " ..." if len(capped) > 5 else ""
            notes.append(f"{len(capped)} layer(s) held at max_layer_sparsity {self.max_layer:g}, where the global "
                         f"threshold would have zeroed more: {', '.join(capped[:5])}{more}")
        for note in notes:
            log.warning("sparsity: %s", note)
        return {
            "summary": text,
            "mode": self.mode,
            "pattern": list(self.nm) if self.nm else None,
            "requested": self.level if self.nm is None else self.nm[0] / self.nm[1],
            "scope": self.scope if self.nm is None else "layer",
            "min_size": self.min_size,
            "max_layer_sparsity": self.max_layer if self.scope == "global" else None,
            "capped": capped,
            "layers_sparsified": len(layers),
            "layers_skipped": len(skipped),
            "params": dense,
            "nonzero_before": nz_before,
            "nonzero": nz_after,
            "sparsity": sparsity,
            "weights": weights,
            "compression": {"zlib": f"len(zlib.compress(tensor bytes, {self.zlib})) summed over tensors"
                            if self.zlib is not None else None,
                            "bitmask": "non-zero values + 1 bit per weight"},
            "layers": layers,
            "skipped": skipped,
            "notes": notes,
        }


def _num(x: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.2f}{unit}"
    return f"{x:g}"

