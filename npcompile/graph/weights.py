"""Weight tensors of the weight-bearing ops, and element-wise sparsity on them.

:func:`weight_slots` finds every weight tensor of a Conv, ConvTranspose, Gemm or MatMul (input
1), its input-channel (reduction) axis and whether it can be edited: only a constant weight can
(an initializer, or a ``Constant`` node's value) that nothing but weight inputs reads and that
is not also a graph input (which a caller could override). Biases and normalisation parameters
are never weights here.

The masks are deterministic: the weights removed are always the smallest by ``(|w|, position)``,
so ties go to the lower flat index (within a group of ``m`` for N:M patterns).

- :func:`magnitude_keep` - unstructured: zero the ``k`` smallest of one tensor.
- :func:`global_keep` - unstructured over several tensors with one threshold.
- :func:`nm_keep` - N:M structured (TensorRT's 2:4): in every group of ``m`` consecutive entries
  along the input-channel axis, keep the ``n`` largest.
- :func:`nm_violations` - the groups with more than ``n`` non-zeros (0 for a valid pattern).
- :func:`zlib_bytes`, :func:`bitmask_bytes` - compressed size figures of weight tensors.
- :func:`parse_sparsity` (with :func:`parse_nm`) - a sparsity level as the options spell it
  (``0.8``, ``"80%"``, ``"2:4"``), for the ``sparsity`` pass and ``CompileOptions``.
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from npcompile.errors import UserError
from npcompile.graph.weighted_ops import WEIGHTED, WEIGHTED_OPS

__all__ = ["WEIGHTED_OPS", "WeightSlot", "weight_slots", "read_weight", "write_weight", "magnitude_keep",
           "global_keep", "nm_keep", "nm_violations", "zlib_bytes", "bitmask_bytes", "parse_nm",
           "parse_sparsity"]

_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                onnx.TensorProto.BFLOAT16)


@dataclass
class WeightSlot:
    """One weight tensor and the weight-bearing nodes that read it (usually one).

    ``in_axis`` is the input-channel axis of the weight (Conv 1, ConvTranspose 0, Gemm 1 with
    ``transB=1`` else 0, MatMul ``ndim - 2``), ``None`` when there is none (a 1-D MatMul weight)
    or the readers disagree. ``reason`` says why the tensor cannot be edited (``None``: it can).
    """

    tensor: str
    nodes: list[str] = field(default_factory=list)
    ops: list[str] = field(default_factory=list)
    shape: tuple[int, ...] = ()
    in_axis: int | None = None
    group: int = 1
    dtype: int = 0
    reason: str | None = None

    @property
    def name(self) -> str:
        """The layer name: the (first) node reading the weight."""
        return self.nodes[0] if self.nodes else self.tensor

    @property
    def op(self) -> str:
        return self.ops[0] if self.ops else ""

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), default)


def _in_axis(node: onnx.NodeProto, ndim: int) -> int | None:
    return WEIGHTED[node.op_type].in_axis(ndim, bool(_attr(node, "transB", 0)))


def _constant_nodes(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {n.output[0]: n for n in model.graph.node if n.op_type == "Constant" and n.output}


def _tensor_proto(model: onnx.ModelProto, name: str,
                  consts: dict[str, onnx.NodeProto] | None = None) -> onnx.TensorProto | None:
    """The TensorProto holding ``name``: an initializer, or the ``value`` of a Constant node."""
    for t in model.graph.initializer:
        if t.name == name:
            return t
    node = (consts if consts is not None else _constant_nodes(model)).get(name)
    if node is not None:
        for a in node.attribute:
            if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                return a.t
    return None


def weight_slots(model: onnx.ModelProto) -> list[WeightSlot]:
    """Every weight tensor (input 1) of a Conv, ConvTranspose, Gemm or MatMul of the main graph,
    in node order, one entry per tensor, with why it cannot be edited (``reason``)."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consts = _constant_nodes(model)
    producers = {o: n for n in graph.node for o in n.output if o}
    graph_inputs = {i.name for i in graph.input}
    uses: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name:
                uses.setdefault(name, []).append((node, i))
    outputs = {o.name for o in graph.output}
    slots: dict[str, WeightSlot] = {}
    for node in graph.node:
        if node.op_type not in WEIGHTED_OPS or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        name = node.input[1]
        if not name:
            continue
        slot = slots.get(name)
        node_name = node.name or node.output[0]
        if slot is None:
            slot = slots[name] = WeightSlot(name)
            proto = _tensor_proto(model, name, consts)
            if name in graph_inputs:
                slot.reason = ("weight is an initializer that is also a graph input (can be overridden at run "
                               "time)" if name in inits else "weight is a graph input, not a constant")
            elif proto is None:
                prod = producers.get(name)
                slot.reason = (f"weight is computed by a {prod.op_type} node, not a constant" if prod is not None
                               else "weight is not a constant")
            else:
                slot.shape = tuple(int(d) for d in proto.dims)
                slot.dtype = int(proto.data_type)
                if proto.data_type not in _FLOAT_TYPES:
                    slot.reason = f"weight type {onnx.TensorProto.DataType.Name(proto.data_type)} is not floating point"
                elif proto.data_location == onnx.TensorProto.EXTERNAL:
                    slot.reason = "weight is in external data that is not loaded"
            other = [n.op_type for n, i in uses.get(name, ()) if not (n.op_type in WEIGHTED_OPS and i == 1)]
            if slot.reason is None and other:
                slot.reason = f"weight is also read by a {other[0]} node (as a non-weight input)"
            if slot.reason is None and name in outputs:
                slot.reason = "weight is also a graph output"
            slot.in_axis = _in_axis(node, len(slot.shape)) if slot.shape else None
        elif slot.shape and _in_axis(node, len(slot.shape)) != slot.in_axis:
            slot.in_axis = None
            if slot.reason is None:
                slot.reason = "weight is shared by layers with different input-channel axes"
        slot.nodes.append(node_name)
        slot.ops.append(node.op_type)
        if node.op_type in ("Conv", "ConvTranspose"):
            slot.group = max(slot.group, _attr(node, "group", 1))
    return list(slots.values())


def read_weight(model: onnx.ModelProto, name: str) -> np.ndarray:
    """The value of constant tensor ``name`` (initializer or Constant node)."""
    proto = _tensor_proto(model, name)
    if proto is None:
        raise KeyError(f"no constant tensor {name!r}")
    return numpy_helper.to_array(proto)


def write_weight(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    """Replace the value of constant tensor ``name`` in place (same name, dtype and shape)."""
    proto = _tensor_proto(model, name)
    if proto is None:
        raise KeyError(f"no constant tensor {name!r}")
    new = numpy_helper.from_array(np.ascontiguousarray(value), proto.name)
    if new.data_type != proto.data_type or list(new.dims) != list(proto.dims):
        raise ValueError(f"{name}: writing {value.dtype}{list(value.shape)} over "
                         f"{onnx.TensorProto.DataType.Name(proto.data_type)}{list(proto.dims)}")
    doc = proto.doc_string
    proto.CopyFrom(new)
    proto.doc_string = doc


def _magnitudes(w: np.ndarray) -> np.ndarray:
    """``|w|`` as float64 for doubles, float32 otherwise (exact for fp16 and bf16)."""
    return np.abs(w.astype(np.float64 if w.dtype == np.float64 else np.float32, copy=False)).ravel()


def _smallest(mags: np.ndarray, k: int) -> np.ndarray:
    """Flat indices of the ``k`` smallest of ``mags`` by ``(value, index)``, in O(n)."""
    n = mags.size
    if k <= 0:
        return np.zeros(0, np.int64)
    if k >= n:
        return np.arange(n)
    t = np.partition(mags, k - 1)[k - 1]
    below = np.flatnonzero(mags < t)
    ties = np.flatnonzero(mags == t)[: k - below.size]
    return np.concatenate([below, ties])


def magnitude_keep(w: np.ndarray, sparsity: float) -> np.ndarray:
    """Keep mask of ``w`` without its ``round(sparsity * w.size)`` smallest ``|w|``."""
    k = int(math.floor(sparsity * w.size + 0.5))
    keep = np.ones(w.size, bool)
    keep[_smallest(_magnitudes(w), k)] = False
    return keep.reshape(w.shape)


def global_keep(weights: Sequence[np.ndarray], sparsity: float,
                max_layer: float | None = None) -> tuple[list[np.ndarray], list[int]]:
    """Keep masks with one threshold over all ``weights`` together, and the indices of the tensors
    held at ``max_layer``: the ``round(sparsity * N)`` smallest ``|w|`` of the ``N`` weights go
    (ties by tensor order, then flat index).

    ``max_layer`` caps the sparsity of any one tensor (``floor(max_layer * n)`` zeros at most): a
    tensor the threshold would take further is held at its cap and the others share the rest of
    the budget (water-filling), so the overall level is still met where the caps allow it."""
    if not weights:
        return [], []
    wide = any(w.dtype == np.float64 for w in weights)
    mags = [np.abs(w.astype(np.float64 if wide else np.float32, copy=False)).ravel() for w in weights]
    sizes = [m.size for m in mags]
    caps = [int(math.floor(max_layer * n)) if max_layer is not None else n for n in sizes]
    k = int(math.floor(sparsity * sum(sizes) + 0.5))
    active = list(range(len(mags)))
    fixed: list[int] = []
    while True:
        offsets = np.cumsum([0] + [sizes[i] for i in active])
        drop = _smallest(np.concatenate([mags[i] for i in active]) if active else np.zeros(0), k)
        counts = np.bincount(np.searchsorted(offsets, drop, side="right") - 1, minlength=len(active))
        over = [i for i, c in zip(active, counts, strict=True) if c > caps[i]]
        if not over:
            break
        for i in over:
            fixed.append(i)
            k -= caps[i]
            active.remove(i)
    keeps = [np.ones(n, bool) for n in sizes]
    for i in fixed:
        keeps[i][_smallest(mags[i], caps[i])] = False
    for j, i in enumerate(active):
        sel = drop[(drop >= offsets[j]) & (drop < offsets[j + 1])] - offsets[j]
        keeps[i][sel] = False
    return [keep.reshape(w.shape) for keep, w in zip(keeps, weights, strict=True)], sorted(fixed)


def parse_nm(pattern: str) -> tuple[int, int] | None:
    """``"2:4"`` -> ``(2, 4)``; ``None`` when ``pattern`` is not of the form ``N:M``."""
    n, sep, m = str(pattern).strip().partition(":")
    if not sep:
        return None
    try:
        return int(n), int(m)
    except ValueError:
        return None


def parse_sparsity(value: float | str) -> float | tuple[int, int]:
    """``0.8``, ``"0.8"`` or ``"80%"`` -> 0.8 (unstructured); ``"2:4"`` -> ``(2, 4)`` (N:M)."""
    if isinstance(value, str):
        text = value.strip()
        nm = parse_nm(text)
        if ":" in text:
            if nm is None or not 0 < nm[0] < nm[1] <= 64:
                raise UserError(f"sparsity pattern must be N:M with 0 < N < M <= 64 (e.g. 2:4), got {value!r}")
            return nm
        try:
            level = float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
        except ValueError:
            raise UserError(f"sparsity must be a fraction in [0, 1) or a pattern N:M (e.g. 2:4), "
                            f"got {value!r}") from None
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"sparsity must be a fraction in [0, 1) or a pattern N:M, got {value!r}")
    else:
        level = float(value)
    if not 0.0 <= level < 1.0:
        raise UserError(f"sparsity must be in [0, 1), got {value!r}")
    return level


def _groups(w: np.ndarray, m: int, axis: int) -> np.ndarray:
    """``w`` with ``axis`` moved last and split into groups of ``m``: ``[..., C/m, m]``."""
    moved = np.moveaxis(w, axis, -1)
    if moved.shape[-1] % m:
        raise ValueError(f"axis {axis} has {moved.shape[-1]} entries, not a multiple of {m}")
    return moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)


def nm_keep(w: np.ndarray, n: int, m: int, axis: int) -> np.ndarray:
    """Keep mask with at most ``n`` entries in every group of ``m`` consecutive entries along
    ``axis``: the ``n`` largest ``|w|`` of each group stay (ties: the higher position stays)."""
    groups = _groups(w, m, axis)
    mags = np.abs(groups.astype(np.float64 if w.dtype == np.float64 else np.float32, copy=False))
    order = np.argsort(mags, axis=-1, kind="stable")  # ascending; equal values by position
    keep = np.ones(groups.shape, bool)
    np.put_along_axis(keep, order[..., : m - n], False, axis=-1)
    moved_shape = np.moveaxis(w, axis, -1).shape
    return np.moveaxis(keep.reshape(moved_shape), -1, axis)


def nm_violations(w: np.ndarray, n: int, m: int, axis: int) -> int:
    """Number of groups of ``m`` along ``axis`` with more than ``n`` non-zeros."""
    return int(((_groups(w, m, axis) != 0).sum(axis=-1) > n).sum())


def _threads(count: int) -> int:
    return max(1, min(16, os.cpu_count() or 1, count))


#: zlib compresses tensors in chunks of this many bytes, in parallel; deflate's window is 32 KiB,
#: so chunks this large change the compressed size by well under 0.1 %
ZLIB_CHUNK = 1 << 20


def zlib_bytes(arrays: Sequence[np.ndarray], level: int = 6) -> list[int]:
    """Compressed size of each array's bytes (C order, its own dtype) with ``zlib.compress`` at
    ``level``, compressed in 1 MiB chunks in parallel threads (zlib releases the GIL)."""
    if not arrays:
        return []
    views = [memoryview(np.ascontiguousarray(a).reshape(-1).view(np.uint8)) for a in arrays]
    jobs = [(i, off) for i, v in enumerate(views) for off in range(0, max(len(v), 1), ZLIB_CHUNK)]
    with ThreadPoolExecutor(_threads(len(jobs))) as pool:
        sizes = list(pool.map(lambda job: len(zlib.compress(views[job[0]][job[1]:job[1] + ZLIB_CHUNK], level)),
                              jobs))
    out = [0] * len(arrays)
    for (i, _), size in zip(jobs, sizes, strict=True):
        out[i] += size
    return out


def bitmask_bytes(w: np.ndarray) -> int:
    """Size of ``w`` stored as its non-zero values plus a bitmap of one bit per weight (for a 2:4
    pattern this is also the size of TensorRT's compressed form: half the values plus 2 bits of
    index per kept value)."""
    return int(np.count_nonzero(w)) * w.dtype.itemsize + (w.size + 7) // 8
