"""Calibration: stream a data set through the model and accumulate statistics of inner tensors.

:class:`Calibrator` builds ONE ONNX Runtime session of a copy of the model in which the tensors
an analysis needs are exposed, then runs the data set through it in batches. Each batch goes to
small *accumulators* that fold it into running statistics, so no more than one batch of
activations is held at a time. Any object with ``tensors`` and ``update(values)`` is an
accumulator and receives those tensors as extra graph outputs; the built-in ones
(:class:`WinCounts`, :class:`SlotStats`) also *prepare* per-batch reductions that are appended
to the graph (ArgMax over each maxout unit, per-row sums of |x| and of non-zeros), so the session
computes them with its own threads and only small partial results leave it (the activations
themselves are never copied out). A progress bar is drawn where :mod:`npcompile.report.progress`
allows it (a terminal, not --quiet).

:func:`group_inputs` tells which tensors the consumers of a channel group read, the place where
activation statistics of that group are measured.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import onnx

from npcompile.channels.analysis import ChannelAnalysis, ChannelDim, Group
from npcompile.channels.layout import Layout
from npcompile.errors import OPT, UserError
from npcompile.graph.shapes import input_specs
from npcompile.report.progress import enabled as progress_enabled
from npcompile.report.progress import progress as progress_bar
from npcompile.rules.quant import site_consumer
from npcompile.runtime.data import Dataset
from npcompile.runtime.stream import TensorStream, batches

__all__ = ["Accumulator", "Calibrator", "CalibrationRun", "ReductionBuilder", "WinCounts", "SlotStats",
           "group_inputs", "slots_to_group", "expose_tensors", "nonnegative", "check_shapes"]

log = logging.getLogger(__name__)

_PROTO_LIMIT = 2**31 - 2**20  # serialized models above this go through a file with external data


class Accumulator(Protocol):
    """Folds batches of tensor values into running statistics.

    An accumulator may also define ``prepare(builder: ReductionBuilder) -> Sequence[str]``: add
    nodes that reduce its tensors per batch inside the calibration session and return the names
    of their outputs; :meth:`update` then receives those small outputs instead of the tensors.
    """

    #: names of the tensors the statistics are taken on
    tensors: Sequence[str]

    def update(self, values: dict[str, np.ndarray]) -> None:
        """Take one batch (``values``: the tensors, batch first, or the prepared outputs)."""


class ReductionBuilder:
    """Adds nodes to the calibration copy of a model (opset-aware helpers for accumulators)."""

    def __init__(self, graph: onnx.GraphProto, opset: int, prefix: str) -> None:
        self.graph, self.opset, self.prefix = graph, opset, prefix
        self._n = 0
        self._nodes: list[onnx.NodeProto] = []

    def _name(self, what: str) -> str:
        self._n += 1
        return f"{self.prefix}/{what}_{self._n}"

    def const(self, array: np.ndarray) -> str:
        name = self._name("c")
        self.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        out = self._name(op.lower())
        self._nodes.append(onnx.helper.make_node(op, inputs, [out], name=self._name(op), **attrs))
        return out

    def finish(self) -> None:
        """Place the added nodes right after what they read, not at the end: ONNX Runtime runs
        nodes in this order, and a tensor read late would stay alive and stop in-place reuse of
        its buffer (a residual sum written into its input), costing copies."""
        made: dict[str, int] = {}  # tensor -> position of the original node that makes it
        for i, n in enumerate(self.graph.node):
            for o in n.output:
                made[o] = i
        after: dict[int, list[onnx.NodeProto]] = {}
        for n in self._nodes:
            pos = max((made.get(t, -1) for t in n.input if t), default=-1)
            for o in n.output:
                made[o] = pos
            after.setdefault(pos, []).append(n)
        nodes = list(after.get(-1, []))
        for i, n in enumerate(self.graph.node):
            nodes.append(n)
            nodes.extend(after.get(i, []))
        del self.graph.node[:]
        self.graph.node.extend(nodes)
        self._nodes = []

    def reduce(self, op: str, x: str, axes: list[int], keepdims: int = 0) -> str:
        """``op`` (ReduceSum, ReduceL1, ...) over ``axes``, as an attribute or input per opset."""
        axes_input = self.opset >= (13 if op == "ReduceSum" else 18)
        if axes_input:
            return self.node(op, [x, self.const(np.asarray(axes, np.int64))], keepdims=keepdims)
        return self.node(op, [x], axes=list(axes), keepdims=keepdims)

    def split_channels(self, x: str, axis: int, dims: list[int]) -> str:
        """Reshape ``x``: axes before ``axis`` kept, the channel axis and everything after it
        into ``dims`` + one last axis (``-1``)."""
        return self.node("Reshape", [x, self.const(np.asarray([0] * axis + list(dims) + [-1], np.int64))])


def _split(shape: tuple[int, ...], axis: int) -> tuple[int, int, int]:
    """(elements before ``axis``, its size, elements after) of a row-major shape."""
    return int(np.prod(shape[:axis], dtype=np.int64)), int(shape[axis]), int(np.prod(shape[axis + 1:],
                                                                                         dtype=np.int64))


class WinCounts:
    """How often each channel of ``tensor`` (on ``axis``, ``units * k`` channels in runs of ``k``)
    is the maximum of its run, counted over every sample and position.

    Ties go to the lowest index among the tied maxima (``np.argmax``, ONNX ``ArgMax`` with
    ``select_last_index=0``, ``torch.max(dim)``), so each unit has exactly one winner per sample
    and position and a unit's counts sum to the number of (sample, position) pairs. Prepared in
    a calibrator, the session computes the winners (ArgMax) and only their indices leave it, cast
    to one byte each when ``k`` fits (an eighth of ArgMax's int64 output to copy and count).
    """

    def __init__(self, tensor: str, axis: int, k: int, units: int | None = None, split: str | None = None,
                 rank: int | None = None) -> None:
        self.tensor, self.axis, self.k, self.units = tensor, axis, k, units
        #: the model's own ``[.., units, k, ..]`` view of the tensor (a maxout Reshape's output), of
        #: rank ``rank + 1``: read in place instead of reshaping a copy
        self.split, self.rank = split, rank
        self.tensors = (tensor,) if split is None else (tensor, split)
        self.counts: np.ndarray | None = None
        self.positions = 0
        self._out: str | None = None

    def prepare(self, b: ReductionBuilder) -> list[str]:
        if self.units is None:
            return [self.tensor]
        if self.split is not None and self.rank is not None:
            self._out = b.node("ArgMax", [self.split], axis=self.axis + 1, keepdims=0)  # [.., units, ..]
        else:
            r = b.split_channels(self.tensor, self.axis, [self.units, self.k])  # a copy: [.., units, k, rest]
            self._out = b.node("ArgMax", [r], axis=self.axis + 1, keepdims=0)
        if self.k <= 255:
            self._out = b.node("Cast", [self._out], to=onnx.TensorProto.UINT8)
        return [self._out]

    def _add(self, counts: np.ndarray, positions: int) -> None:
        self.counts = counts if self.counts is None else self.counts + counts
        self.positions += positions

    def update(self, values: dict[str, np.ndarray]) -> None:
        if self._out is not None and values[self._out].dtype == np.uint8:
            win = values[self._out]  # 0..k-1 per unit, units on ``axis``
            others = tuple(i for i in range(win.ndim) if i != self.axis)
            counts = np.stack([np.count_nonzero(win == j, axis=others) for j in range(self.k)], axis=1)
            self._add(counts.reshape(-1).astype(np.int64), win.size // self.units)
            return
        if self._out is not None:
            win = values[self._out]  # 0..k-1 per unit (units on ``axis``): to neuron indices u*k + j
            offsets = (np.arange(self.units, dtype=win.dtype) * self.k).reshape(self.units,
                                                                                 *[1] * (win.ndim - self.axis - 1))
            np.add(win, offsets, out=win)
            self._add(np.bincount(win.ravel(), minlength=self.units * self.k), win.size // self.units)
            return
        x = values[self.tensor]
        pre, size, post = _split(x.shape, self.axis)
        if size % self.k:
            raise UserError(f"calibration: {self.tensor} has {size} channels, not a multiple of k={self.k}; "
                            f"do the data's shapes match the model's ({OPT:input_shapes})?")
        units = size // self.k
        win = np.argmax(x.reshape(pre, units, self.k, post), axis=2)  # (pre, units, post)
        win += (np.arange(units, dtype=win.dtype) * self.k)[None, :, None]
        self._add(np.bincount(win.ravel(), minlength=size), pre * post)


class SlotStats:
    """Per channel slot of ``tensor`` (whose ``axis`` follows ``layout``): the number of values,
    the number of exact zeros (``zeros``), and the sum of absolute values (``abs_sum``), over
    every sample and position.

    Prepared in a calibrator (with the tensor's static ``shape`` known, batch aside), the session
    reduces each row of a channel (one sample, all positions) and only those per-row results
    leave it, to be added up in float64: zero counts are exact, |x| sums carry the float32
    rounding of one row. |x| of a known non-negative NCHW tensor (``nonnegative``: a ReLU
    output...) is averaged by GlobalAveragePool, which ONNX Runtime runs in its blocked NCHWc
    layout without reordering the activation; its non-zeros likewise, as the GlobalAveragePool of
    ``HardSigmoid(x, alpha=FLT_MAX, beta=0)`` (1 for every x >= 1/FLT_MAX ≈ 2.9e-39, 0 for 0; an
    activation that stays in the blocked layout), times the row length, rounded — exact except
    that subnormal values below 2.9e-39 count as a fraction of a non-zero. Other tensors count
    zeros by ReduceSum of ``Cast(Cast(x, bool), float)`` over the axes after the channel axis and
    |x| by ReduceSum of ``Abs``. A
    flattened C·H·W block or a channels-last tensor (small fully connected inputs) leaves the
    session as it is and is reduced in NumPy.
    """

    def __init__(self, tensor: str, axis: int, layout: Layout, zeros: bool = True, abs_sum: bool = True,
                 shape: tuple[int, ...] | None = None, nonnegative: bool = False) -> None:
        self.tensor, self.axis, self.layout, self.shape = tensor, axis, layout, shape
        self.nonnegative = nonnegative
        self.want_zeros, self.want_abs = zeros, abs_sum
        self.tensors = (tensor,)
        c = layout.channels
        self.count = np.zeros(c, np.int64)
        self.zeros = np.zeros(c, np.int64)
        self.abs_sum = np.zeros(c, np.float64)
        self._outs: dict[str, str] = {}
        self._row = 0  # values per row (static), for per-row means

    def prepare(self, b: ReductionBuilder) -> list[str]:
        shape, lay = self.shape, self.layout
        if not lay.plain or shape is None or self.axis >= len(shape) - 1:
            return [self.tensor]
        x, rank = self.tensor, len(shape)
        rows = list(range(self.axis + 1, rank))
        nchwc = self.nonnegative and self.axis == 1 and rank >= 3
        if nchwc:
            # No Shape of x here: it would make ONNX Runtime reorder the whole activation.
            self._row = int(np.prod(shape[2:]))
        else:
            self._outs["shape"] = b.node("Shape", [x])
        if self.want_zeros and nchwc:  # non-zero indicator, in the blocked layout (see the docstring)
            ind = b.node("HardSigmoid", [x], alpha=float(np.finfo(np.float32).max), beta=0.0)
            self._outs["nonzero_mean"] = b.node("GlobalAveragePool", [ind])
        elif self.want_zeros:
            nz = b.node("Cast", [b.node("Cast", [x], to=onnx.TensorProto.BOOL)], to=onnx.TensorProto.FLOAT)
            self._outs["nonzero"] = b.reduce("ReduceSum", nz, rows)  # exact: rows are < 2**24 long
        if self.want_abs and nchwc:
            self._outs["abs_mean"] = b.node("GlobalAveragePool", [x])
        elif self.want_abs:
            self._outs["abs"] = b.reduce("ReduceSum", x if self.nonnegative else b.node("Abs", [x]), rows)
        return list(self._outs.values())

    def _slots(self, a: np.ndarray) -> np.ndarray:
        """Sum over everything but the channel axis (the last one left) in float64."""
        return a.reshape(-1, self.layout.channels).sum(axis=0, dtype=np.float64)

    def _bad(self, got) -> UserError:
        return UserError(f"calibration: {self.tensor} has shape {list(got)}, the analysis expects "
                         f"{list(self.shape or ())} (batch aside); do the data's shapes match the model's "
                         f"({OPT:input_shapes})?")

    def update(self, values: dict[str, np.ndarray]) -> None:
        lay = self.layout
        if self._outs:
            if "shape" in self._outs:
                shape = values[self._outs["shape"]]
                if len(shape) != len(self.shape) or int(shape[self.axis]) != lay.channels:
                    raise self._bad(shape)
                row = int(np.prod(shape[self.axis + 1:]))
                n = int(np.prod(shape)) // lay.channels  # values per channel in this batch
            else:  # NCHW: every output is [N, C] or [N, C, 1, ...]
                outs = [values[o] for o in self._outs.values()]
                if any(o.ndim < 2 or o.shape[1] != lay.channels for o in outs):
                    raise self._bad(outs[0].shape)
                row = self._row
                n = outs[0].shape[0] * row
            self.count += n
            if "nonzero" in self._outs:
                self.zeros += n - np.rint(self._slots(values[self._outs["nonzero"]])).astype(np.int64)
            if "nonzero_mean" in self._outs:  # per-row share of non-zeros -> counts
                share = values[self._outs["nonzero_mean"]].reshape(-1, lay.channels).astype(np.float64)
                self.zeros += n - np.rint(share * row).sum(axis=0).astype(np.int64)
            if "abs" in self._outs:
                self.abs_sum += self._slots(values[self._outs["abs"]])
            if "abs_mean" in self._outs:
                self.abs_sum += self._slots(values[self._outs["abs_mean"]]) * row
            return
        x = values[self.tensor]
        pre, size, post = _split(x.shape, self.axis)
        if size != lay.size:
            raise UserError(f"calibration: {self.tensor} has {size} entries on its channel axis, the analysis "
                            f"expects {lay.size}; do the data's shapes match the model's ({OPT:input_shapes})?")
        x3 = x.reshape(pre * lay.outer, lay.channels, lay.inner * post)
        per = x3.shape[0] * x3.shape[2]
        self.count += per
        if self.want_zeros:
            self.zeros += per - np.count_nonzero(x3, axis=(0, 2))
        if self.want_abs:
            self.abs_sum += np.abs(x3).sum(axis=2).sum(axis=0, dtype=np.float64)


@dataclass
class CalibrationRun:
    """What one :meth:`Calibrator.run` did."""

    samples: int
    batches: int
    seconds: float


def expose_tensors(model: onnx.ModelProto, tensors: Iterable[str]) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``model`` with ``tensors`` added as graph outputs (those not outputs already or
    graph inputs); returns it and the names to fetch from a session of it."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    fetch = _expose(out.graph, model, tensors)
    return out, fetch


def _expose(graph: onnx.GraphProto, model: onnx.ModelProto, tensors: Iterable[str]) -> list[str]:
    inputs = {i.name for i in input_specs(model)}
    outputs = {o.name for o in graph.output}
    produced = {o for n in graph.node for o in n.output}
    types = {vi.name: vi for vi in graph.value_info}
    fetch: list[str] = []
    for name in dict.fromkeys(tensors):
        if name in inputs:
            continue
        if name not in produced:
            raise UserError(f"calibration: no node of the main graph produces tensor {name!r}")
        if name not in outputs:
            vi = onnx.ValueInfoProto()
            if name in types:
                vi.CopyFrom(types[name])
            vi.name = name
            graph.output.append(vi)
        fetch.append(name)
    return fetch


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)


class Calibrator:
    """One ONNX Runtime session of ``model`` for calibration.

    ``tensors`` are exposed as extra outputs (any accumulator may read them); ``accumulators``
    given here may also prepare per-batch reductions inside the session (see
    :class:`Accumulator`), so that only small partial results leave it. :meth:`run` streams a
    :class:`~npcompile.runtime.data.Dataset` through the session in batches of ``batch_size``.
    """

    def __init__(self, model: onnx.ModelProto, tensors: Iterable[str] = (), batch_size: int = 256, *,
                 accumulators: Sequence[Accumulator] = (), threads: int = 0, progress: bool | None = None) -> None:
        from npcompile.runtime.verify import make_session

        if batch_size < 1:
            raise UserError(f"calibration batch size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.inputs = [i.name for i in input_specs(model)]
        self.accumulators = list(accumulators)
        exposed = onnx.ModelProto()
        exposed.CopyFrom(model)
        produced = {o for n in model.graph.node for o in n.output}
        for acc in self.accumulators:
            for t in acc.tensors:
                if t not in produced and t not in self.inputs:
                    raise UserError(f"calibration: no node of the main graph produces tensor {t!r}")
        self.fetch = _expose(exposed.graph, model, tensors)
        builder = ReductionBuilder(exposed.graph, _opset(model), "npcompile_calib")
        self._prepared: dict[int, list[str]] = {}
        for acc in self.accumulators:
            prep = getattr(acc, "prepare", None)
            outs = list(prep(builder)) if prep is not None else list(acc.tensors)
            self._prepared[id(acc)] = outs
            extra = [o for o in outs if o not in self.inputs and o not in self.fetch]
            for o in extra:
                exposed.graph.output.append(onnx.ValueInfoProto(name=o))
            self.fetch.extend(extra)
        builder.finish()
        self.progress = progress_enabled() if progress is None else progress
        if exposed.ByteSize() < _PROTO_LIMIT:
            self.session = make_session(exposed, threads=threads)
        else:  # a protobuf above 2 GB cannot be serialized: go through a file with external data
            with tempfile.TemporaryDirectory(prefix="npcompile-calib-") as tmp:
                path = Path(tmp) / "model.onnx"
                onnx.save_model(exposed, os.fspath(path), save_as_external_data=True, location="weights.bin")
                self.session = make_session(os.fspath(path), threads=threads)
        del exposed

    def run(self, dataset: Dataset, accumulators: Sequence[Accumulator] | None = None) -> CalibrationRun:
        """Run every batch of ``dataset`` and hand each accumulator (default: those given to the
        constructor) the tensors, or its prepared outputs, it asked for."""
        accumulators = self.accumulators if accumulators is None else list(accumulators)
        missing = [n for n in self.inputs if n not in dataset.inputs]
        if missing:
            raise UserError(f"calibration data lacks model input(s) {missing}")
        wants = [self._prepared.get(id(acc), list(acc.tensors)) for acc in accumulators]
        need = {t for w in wants for t in w}
        unknown = need - set(self.fetch) - set(self.inputs)
        if unknown:
            raise UserError(f"calibration: tensors {sorted(unknown)} were not exposed by this calibrator")
        fetch = [t for t in self.fetch if t in need]
        names = [*fetch, *(k for k in self.inputs if k in need)]  # the inputs handed through
        tensors = TensorStream(self.session, self.inputs)
        n = len(dataset)
        t0 = time.perf_counter()
        n_batches = 0
        bars = contextlib.ExitStack()
        tick = bars.enter_context(progress_bar("calibrating", n)) if self.progress else None

        def accumulate(values: dict[str, np.ndarray]) -> None:
            for acc, want in zip(accumulators, wants, strict=True):
                acc.update({t: values[t] for t in want})

        # the statistics of batch i are folded in (NumPy, in a worker thread) while ONNX Runtime runs
        # batch i + 1 (it releases the GIL); one batch at a time, in order, so the sums are the same
        pool = ThreadPoolExecutor(1) if (os.cpu_count() or 1) > 1 else None
        pending: Future | None = None
        try:
            for batch in batches(dataset, self.batch_size):
                values = tensors.run(names, batch.feeds)
                if pending is not None:
                    pending.result()
                    pending = None
                if pool is None:
                    accumulate(values)
                else:
                    pending = pool.submit(accumulate, values)
                n_batches += 1
                if tick is not None:
                    tick(batch.size, dataset.source)
            if pending is not None:
                pending.result()
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
            bars.close()
        dt = time.perf_counter() - t0
        log.info("calibrated on %d samples in %d batches (%.2f s)", n, n_batches, dt)
        return CalibrationRun(n, n_batches, dt)


def check_shapes(dataset: Dataset, probe: dict[str, tuple[int, ...]]) -> None:
    """Calibration data must have the input shapes the analysis used (the batch size aside)."""
    for name, shape in probe.items():
        a = dataset.inputs.get(name)
        if a is None:
            raise UserError(f"calibration data lacks model input {name!r}")
        if tuple(a.shape[1:]) != tuple(shape[1:]):
            raise UserError(f"calibration data: input {name} has shape {list(a.shape)}, the analysis used "
                            f"{['N', *shape[1:]]}; give the data's shape with {OPT:input_shapes} "
                            f"{name}:{'x'.join(map(str, (1, *a.shape[1:])))}")


_NONNEG_OPS = {"Relu", "Abs", "Sigmoid", "Softplus", "Exp", "HardSigmoid", "Softmax", "Sqrt"}
_NONNEG_IF_INPUT = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Flatten", "Reshape",
                    "Transpose", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Resize", "Upsample",
                    "ReduceMax", "ReduceMean", "Gather", "Slice", "Split"}


def nonnegative(analysis: ChannelAnalysis, name: str, depth: int = 8) -> bool:
    """Whether tensor ``name`` is provably >= 0 (a ReLU output, pooled or reshaped...)."""
    cache = getattr(analysis, "_npc_tensors", None)
    if cache is None:
        cache = analysis.graph.tensors()
        analysis._npc_tensors = cache  # type: ignore[attr-defined]
    t = cache.get(name)
    if t is None or not t.inputs or depth == 0:
        return False
    node = t.inputs[0]
    if node.op in _NONNEG_OPS:
        return True
    if node.op == "Clip":
        lo = node.attrs.get("min")
        if len(node.inputs) > 1 and node.inputs[1].name:
            c = analysis.const(node.inputs[1])
            lo = None if c is None else float(np.ravel(c)[0])
        return lo is not None and lo >= 0
    if node.op in _NONNEG_IF_INPUT:
        return nonnegative(analysis, node.inputs[0].name, depth - 1)
    if node.op in ("Concat", "Mul", "Min"):
        return all(nonnegative(analysis, i.name, depth - 1) or _nonneg_const(analysis, i) for i in node.inputs)
    if node.op in ("Add", "Max", "Sum"):
        ok = [nonnegative(analysis, i.name, depth - 1) or _nonneg_const(analysis, i) for i in node.inputs]
        return all(ok) if node.op != "Max" else any(ok)
    return False


def _nonneg_const(analysis: ChannelAnalysis, t) -> bool:
    c = analysis.const(t)
    return c is not None and bool((np.asarray(c) >= 0).all())


#: consumers whose data input holds float activations
_FLOAT_CONSUMERS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "DynamicQuantizeLSTM", "DynamicQuantizeMatMul",
                    "MatMulIntegerToFloat")


def group_inputs(analysis: ChannelAnalysis, group: Group) -> list[tuple[str, ChannelDim]]:
    """The tensors the consumers of ``group`` read, with their channel axis: the data input of
    every ``in`` site (a Conv, Gemm or MatMul reading the channels) and the input of every maxout
    whose neurons the group holds. Each tensor once."""
    out: dict[str, ChannelDim] = {}
    for site in group.sites_of("in"):
        consumer = site_consumer(site)[0]  # a quantized weight's reader, not its DequantizeLinear
        if consumer.op not in _FLOAT_CONSUMERS:
            continue  # an integer op reads quantized values (offset by a zero point): no float statistics
        for t in consumer.inputs:
            d = analysis.dim(t)
            if d is not None and group.id in d.layout.groups(analysis.find):
                out.setdefault(t.name, d)
    for lk in analysis.unit_links(group.id):
        d = analysis.dims.get(lk.tensor)
        if d is not None:
            out.setdefault(lk.tensor, d)
    return list(out.items())


def slots_to_group(analysis: ChannelAnalysis, group: Group, layout: Layout, per_slot: np.ndarray,
                   into: np.ndarray) -> None:
    """Add the per-slot values of ``layout`` that belong to ``group`` into ``into`` (per channel)."""
    off = 0
    for piece in layout.pieces:
        if piece.group is not None and analysis.find(piece.group) == group.id:
            into[piece.start:piece.stop] += per_slot[off:off + len(piece)]
        off += len(piece)
