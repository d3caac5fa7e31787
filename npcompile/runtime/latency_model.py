"""A per-layer latency model measured on ONNX Runtime: how the latency of every weighted layer
(Conv, Gemm, MatMul with a constant weight) changes with the widths of its weight, and so how the
whole model's latency changes with any removal.

Each layer is measured *in isolation*: a one-node ONNX model with the layer's attributes, input
shape (batch included) and weight shape, run in a session with the session options the user
deploys with (provider, intra-op threads, full graph optimization), or built into an engine by
the deployment target (TensorRT: :func:`build_latency_model`'s ``runner``). Along every pruned axis of
its weight (output channels, input channels) the widths of a grid are timed, the other axis at
full width (warm-up, repeated rounds until the median is known within a few per cent, its
interval kept as the error). Identical layers are measured once.

A layer at widths ``(i, o)`` is predicted as ``t0 * r_in(i) * r_out(o)`` (``r``: the measured
curve over the full-width time, interpolated between grid widths). The sum over layers is
calibrated against the whole graph with two whole-model measurements (unpruned, and every group at
about half width): ``T(removal) = T_full - k * (S_full - S(removal))``, which takes in what
isolated layers do not see (fused BatchNorm/ReLU, element-wise ops, memory traffic).

The table is cached on disk (:mod:`npcompile.runtime.latency_cache`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from npcompile.runtime.timing import StableOptions, compare, median_interval, stable_samples

__all__ = ["LatencyModelOptions", "LatencyModel", "RunnerFactory", "width_grid", "build_latency_model", "ort_runner",
           "removed_counts"]

log = logging.getLogger(__name__)

MODEL_VERSION = 2  # 2: differential whole-graph residuals of groups (attention heads)


@dataclass
class LatencyModelOptions:
    """How the table is measured. ``threads``/``provider``: the deployment session; ``step``: the
    widths' granularity (the CPU's vector width); ``levels``: grid points per axis (fractions
    ``k/levels`` of the width, at multiples of ``step``, plus half a step below each)."""

    threads: int = 0
    provider: str = "CPUExecutionProvider"
    step: int = 8
    levels: int = 8
    half_steps: bool = True
    runs: int = 10
    warmup: int = 2
    precision: float = 0.03
    max_rounds: int = 4
    max_seconds: float = 1.0

    def key_fields(self) -> dict[str, Any]:
        """The options that change what is measured (part of the cache key)."""
        return {"version": MODEL_VERSION, "threads": self.threads, "provider": self.provider, "step": self.step,
                "levels": self.levels,
                "half_steps": self.half_steps}


def width_grid(width: int, step: int, levels: int, half_steps: bool = True) -> list[int]:
    """Widths to time for an axis of ``width``, ascending and ending at ``width``: every width
    when it is small (<= 2 steps), else multiples of ``step`` near ``k/levels`` of the width and,
    with ``half_steps``, half a step below each (to see the staircase)."""
    if width <= max(2 * step, 16):
        return list(range(1, width + 1))
    out = {width}
    for k in range(1, levels):
        w = max(step, step * math.ceil(width * k / levels / step))
        if w < width:
            out.add(w)
            if half_steps and step > 1 and w - step // 2 > 0:
                out.add(w - step // 2)
    return sorted(out)


@dataclass
class _Axis:
    """A pruned axis of a layer's weight: widths timed and milliseconds at each."""

    axis: int
    widths: list[int]
    ms: list[float]
    err: list[float]

    def ratio(self, width: float, t0: float) -> float:
        return float(np.interp(width, self.widths, self.ms)) / t0 if t0 > 0 else 1.0


@dataclass
class _Layer:
    name: str
    op: str
    weight: str
    shape: list[int]
    t0: float  # ms at full widths
    axes: dict[int, _Axis] = field(default_factory=dict)
    both: bool = False  # depthwise convolution: one axis sets input and output channels

    def predict(self, dims: Mapping[int, int]) -> float:
        t = self.t0
        for a, ax in self.axes.items():
            t *= ax.ratio(dims.get(a, self.shape[a]), self.t0)
        return t


def isotonic(values: list[float], weights: list[float] | None = None) -> list[float]:
    """The non-decreasing sequence closest to ``values`` in weighted least squares (pool adjacent
    violators): a layer's time never grows when its width shrinks, so a narrower width that timed
    slower is noise (or a width no better than the wider one) and is averaged with it."""
    w = list(weights or [1.0] * len(values))
    blocks: list[list[float]] = []  # [mean, weight, count]
    for v, wt in zip(values, w, strict=True):
        blocks.append([float(v), float(wt), 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            b = blocks.pop()
            a = blocks[-1]
            total = a[1] + b[1]
            a[0] = (a[0] * a[1] + b[0] * b[1]) / total
            a[1], a[2] = total, a[2] + b[2]
    out: list[float] = []
    for mean, _, count in blocks:
        out += [mean] * count
    return out


def _x_axis(op: str, attrs: dict[str, Any], waxis: int, wrank: int) -> tuple[str, int] | None:
    """Which side a weight axis is (``in``/``out``) and, for ``in``, the input's channel axis."""
    if op == "Conv":
        return ("out", 1) if waxis == 0 else ("in", 1) if waxis == 1 else None
    if op == "Gemm":
        if attrs.get("transA", 0):
            return None
        trans_b = attrs.get("transB", 0)
        out_axis = 0 if trans_b else 1
        return ("out", -1) if waxis == out_axis else ("in", -1)
    if op == "MatMul" and wrank == 2:
        return ("out", -1) if waxis == 1 else ("in", -1)
    return None


def _one_node(node: Any, x_shape: list[int], w_shape: list[int], has_bias: bool, depthwise: bool,
              opset: int) -> onnx.ModelProto:
    """A model of one weighted node with random weights."""
    rng = np.random.default_rng(0)
    attrs = dict(node.attrs)
    if depthwise:
        attrs["group"] = int(w_shape[0])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inits = [onnx.numpy_helper.from_array(rng.standard_normal(w_shape).astype(np.float32) * 0.01, "w")]
    inputs = ["x", "w"]
    if has_bias:
        out = w_shape[0] if node.op == "Conv" or attrs.get("transB", 0) else w_shape[-1]
        inits.append(onnx.numpy_helper.from_array(np.zeros([out], np.float32), "b"))
        inputs.append("b")
    clean = {k: v for k, v in attrs.items() if isinstance(v, (int, float, str, list, tuple)) or v is None}
    n = helper.make_node(node.op, inputs, ["y"], **{k: v for k, v in clean.items() if v is not None})
    graph = helper.make_graph([n], "layer", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


class LatencyModel:
    """Measured per-layer latency tables and their calibration against the whole graph."""

    def __init__(self, layers: list[_Layer], t_full: float, kappa: float, info: dict[str, Any],
                 residuals: Mapping[str, Mapping[str, float]] | None = None) -> None:
        self.layers, self.t_full, self.kappa, self.info = layers, t_full, kappa, info
        #: group name -> {"removed": channels, "ms": saving}: what removing that many channels of
        #: the group saved in the whole graph beyond what its layers predict (measured
        #: differentially: attention heads also shrink ops no layer table holds)
        self.residuals = {k: dict(v) for k, v in (residuals or {}).items()}
        self._s_full = sum(layer.t0 for layer in layers)

    def layer_sum(self, dims: Mapping[str, Mapping[int, int]]) -> float:
        """Sum of the isolated layer times at the given kept weight dims (layer name -> axis -> dim)."""
        return sum(layer.predict(dims.get(layer.name, {})) for layer in self.layers)

    def savings(self, dims: Mapping[str, Mapping[int, int]], removed: Mapping[str, int] | None = None
                ) -> tuple[float, float]:
        """(isolated layer ms saved, residual ms saved) at the given kept dims and removed counts."""
        extra = sum(r["ms"] * removed.get(name, 0) / r["removed"] for name, r in self.residuals.items()
                    if r["removed"] > 0) if removed else 0.0
        return self._s_full - self.layer_sum(dims), extra

    def predict_ms(self, dims: Mapping[str, Mapping[int, int]], removed: Mapping[str, int] | None = None) -> float:
        """The whole model's latency (ms) at the given kept weight dims, less the measured residual
        savings of the groups in ``removed`` (group name -> channels removed), in proportion."""
        layers, extra = self.savings(dims, removed)
        return max(self.t_full - self.kappa * layers - extra, 0.0)

    def refit(self, points: list[tuple[float, float, float]]) -> LatencyModel:
        """The model with its calibration refitted (least squares through the origin) to whole-model
        measurements: ``points`` of (isolated layer ms saved, residual ms saved, measured ms saved)."""
        num = sum(s * (m - r) for s, r, m in points if s > 1e-9)
        den = sum(s * s for s, r, m in points if s > 1e-9)
        kappa = min(max(num / den, 0.2), 5.0) if den > 0 and num > 0 else self.kappa
        return LatencyModel(self.layers, self.t_full, kappa, self.info, self.residuals)

    def shares(self, macs: Mapping[str, float], total_macs: float) -> list[dict[str, Any]]:
        """Where the whole model's time goes: each timed layer's calibrated time (``kappa`` x its
        isolated time), its share of the latency and, from ``macs`` (layer name -> MACs), its share
        of the FLOPs, slowest first; then the remainder no width changes in this model (other ops,
        layers not pruned, per-call overhead). Where the calibrated layers add up to more than the
        whole model (fused ops, overhead taken off each), the remainder is 0, the shares are of
        their sum, and the remainder row's ``excess_ms`` says by how much."""
        total = max(float(total_macs), 1e-12)
        layer_ms = self.kappa * self._s_full
        whole = max(self.t_full, layer_ms, 1e-12)
        rows = [{"layer": la.name, "ms": self.kappa * la.t0, "latency": self.kappa * la.t0 / whole,
                 "flops": float(macs.get(la.name, 0.0)) / total} for la in self.layers]
        rows.sort(key=lambda r: (-r["ms"], r["layer"]))
        rest = self.t_full - layer_ms
        rows.append({"layer": None, "ms": max(rest, 0.0), "latency": max(rest, 0.0) / whole,
                     "flops": max(0.0, 1.0 - sum(r["flops"] for r in rows)), "excess_ms": max(-rest, 0.0)})
        return rows

    def as_dict(self) -> dict[str, Any]:
        return {"version": MODEL_VERSION, "t_full_ms": self.t_full, "kappa": self.kappa, "info": self.info,
                "layers": [{"name": la.name, "op": la.op, "weight": la.weight, "shape": la.shape, "t0_ms": la.t0,
                            "both": la.both,
                            "axes": {str(a): {"widths": ax.widths, "ms": ax.ms, "err": ax.err}
                                     for a, ax in la.axes.items()}} for la in self.layers],
                "residuals": self.residuals}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> LatencyModel:
        layers = [_Layer(la["name"], la["op"], la["weight"], list(la["shape"]), la["t0_ms"],
                         {int(a): _Axis(int(a), ax["widths"], ax["ms"], ax["err"]) for a, ax in la["axes"].items()},
                         la.get("both", False)) for la in d["layers"]]
        return LatencyModel(layers, d["t_full_ms"], d["kappa"], d.get("info", {}), d.get("residuals"))


def _session_runner(model: onnx.ModelProto | bytes, feeds: dict[str, np.ndarray], options: LatencyModelOptions
                    ) -> Callable[[int, int], list[float]]:
    from npcompile.runtime.verify import make_session

    session = make_session(model if isinstance(model, bytes) else model.SerializeToString(), options.threads,
                           optimize=True, providers=[options.provider])

    def run(runs: int, warmup: int) -> list[float]:
        for _ in range(warmup):
            session.run(None, feeds)
        out = []
        for _ in range(runs):
            t = time.perf_counter()
            session.run(None, feeds)
            out.append((time.perf_counter() - t) * 1e3)
        return out

    return run


def ort_runner(threads: int = 0, provider: str = "CPUExecutionProvider") -> Any:
    """A runner factory: ``factory(model, feeds)(runs, warmup)`` times an optimized ONNX Runtime session."""

    def factory(model: Any, feeds: dict) -> Any:
        return _session_runner(model, feeds, LatencyModelOptions(threads=threads, provider=provider))

    return factory


#: ``factory(model, feeds)`` -> ``run(runs, warmup)`` -> milliseconds per call
RunnerFactory = Callable[[Any, dict], Callable[[int, int], list[float]]]


def time_model(model: onnx.ModelProto | bytes, feeds: dict[str, np.ndarray], options: LatencyModelOptions,
               runs: int | None = None, max_seconds: float | None = None,
               runner: RunnerFactory | None = None) -> tuple[float, float]:
    """p50 milliseconds of a model, and half its 95 % interval: on ONNX Runtime with the options'
    session options, or on the engine ``runner`` builds."""
    sopts = StableOptions(runs=runs or options.runs, warmup=options.warmup, precision=options.precision,
                          min_rounds=1, max_rounds=options.max_rounds,
                          max_seconds=options.max_seconds if max_seconds is None else max_seconds)
    run = runner(model, feeds) if runner is not None else _session_runner(model, feeds, options)
    samples, _ = stable_samples(run, sopts)
    lo, hi = median_interval(samples)
    return float(np.median(samples)), (hi - lo) / 2


def weight_axes(analysis: Any) -> dict[str, dict[int, tuple[Any, int]]]:
    """Weighted layer name -> weight axis -> (layout, blocks) of the groups that prune it."""
    out: dict[str, dict[int, tuple[Any, int]]] = {}
    for g in analysis.groups:
        if not g.prunable:
            continue
        for site in g.sites:
            if site.node.op in ("Conv", "Gemm", "MatMul") and site.index == 1:
                out.setdefault(site.node.name, {}).setdefault(site.axis, (site.layout, site.blocks))
    return out


def kept_dims(analysis: Any, axes: Mapping[str, Mapping[int, tuple[Any, int]]],
              removal: Mapping[int, np.ndarray]) -> dict[str, dict[int, int]]:
    """Kept weight dims of every pruned layer axis under ``removal`` (group id -> mask)."""
    find = analysis.find
    roots = {find(g): np.asarray(m, bool) for g, m in removal.items()}
    if getattr(analysis, "links", None):
        roots = analysis.close_removal(roots)
    return {name: {a: layout.kept_size(roots, find) // blocks for a, (layout, blocks) in ax.items()}
            for name, ax in axes.items()}


def removed_counts(analysis: Any, removal: Mapping[int, np.ndarray]) -> dict[str, int]:
    """Group name -> channels removed, for :meth:`LatencyModel.predict_ms`'s residuals."""
    by_id = {g.id: g for g in analysis.groups}
    return {by_id[gid].name: int(np.count_nonzero(m)) for gid, m in removal.items() if gid in by_id}


def build_latency_model(ctx: Any, feeds: dict[str, np.ndarray], options: LatencyModelOptions,
                        half_removal: Mapping[int, np.ndarray], progress: Callable[[str], None] | None = None,
                        runner: RunnerFactory | None = None,
                        differential: Mapping[int, np.ndarray] | None = None) -> LatencyModel:
    """Measure the table for ``ctx.model`` (its analysis and static shapes) at ``feeds``' batch, and
    calibrate it with the whole model unpruned and pruned by ``half_removal``. Every model (the
    one-node layers and the whole graph) is timed on ONNX Runtime with ``options``' session
    options, or, with ``runner``, on the engine it builds (a deployment target's: TensorRT).
    Each group of ``differential`` (group id -> a removal of it) is also removed alone in the
    whole graph and measured: what it saves beyond the layers' prediction is its residual."""
    from npcompile.channels.masked import prune_copy

    def make(model: Any, x: dict[str, np.ndarray]) -> Callable[[int, int], list[float]]:
        return runner(model, x) if runner is not None else _session_runner(model, x, options)

    whole: list[Callable[[int, int], list[float]]] = []

    def unpruned() -> Callable[[int, int], list[float]]:  # one session (or engine) for every comparison
        if not whole:
            whole.append(make(ctx.model, feeds))
        return whole[0]

    t_start = time.perf_counter()
    graph, shapes = ctx.analysis.graph, ctx.shapes
    opset = next((o.version for o in ctx.model.opset_import if o.domain in ("", "ai.onnx")), 13)
    axes = weight_axes(ctx.analysis)
    memo: dict[tuple, tuple[float, float]] = {}
    layers: list[_Layer] = []
    measured = 0

    def timed(node: Any, x_shape: list[int], w_shape: list[int], has_bias: bool, depthwise: bool
              ) -> tuple[float, float]:
        nonlocal measured
        attrs = tuple(sorted((k, str(v)) for k, v in node.attrs.items()))
        key = (node.op, attrs, tuple(x_shape), tuple(w_shape), has_bias, depthwise)
        if key not in memo:
            model = _one_node(node, x_shape, w_shape, has_bias, depthwise, opset)
            x = np.random.default_rng(0).standard_normal(x_shape).astype(np.float32)
            memo[key] = time_model(model, {"x": x}, options, runner=runner)
            measured += 1
        return memo[key]

    # the per-call cost of a session (input copy, dispatch) is in every isolated time but paid once
    # by the whole model: taken off each layer
    tiny = helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "empty",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]),
        opset_imports=[helper.make_opsetid("", opset)])
    overhead, _ = time_model(tiny, {"x": np.zeros([1], np.float32)}, options, runs=max(options.runs, 20),
                             runner=runner)

    for node in graph.nodes:
        if node.name not in axes or node.op not in ("Conv", "Gemm", "MatMul"):
            continue
        x_shape = shapes.get(node.inputs[0].name)
        w = node.inputs[1]
        w_shape = list(getattr(w, "shape", None) or [])
        if x_shape is None or not w_shape or not hasattr(w, "values") or any(int(d) <= 0 for d in x_shape):
            continue
        x_shape = [int(d) for d in x_shape]
        group = int(node.attrs.get("group", 1)) if node.op == "Conv" else 1
        depthwise = node.op == "Conv" and group > 1 and w_shape[1] == 1 and group == w_shape[0] == x_shape[1]
        if group > 1 and not depthwise:
            continue  # grouped (not depthwise) convolutions stay in the calibrated remainder
        has_bias = len(node.inputs) > 2 and node.inputs[2] is not None and hasattr(node.inputs[2], "values")
        if node.op == "Gemm" and has_bias and len(getattr(node.inputs[2], "shape", [])) != 1:
            has_bias = False
        t0 = max(timed(node, x_shape, w_shape, has_bias, depthwise)[0] - overhead, 1e-6)
        layer = _Layer(node.name, node.op, w.name, w_shape, t0, both=depthwise)
        for waxis in sorted(axes[node.name]):
            if depthwise and waxis != 0:
                continue
            side = ("out", 1) if depthwise else _x_axis(node.op, dict(node.attrs), waxis, len(w_shape))
            if side is None:
                continue
            widths = width_grid(w_shape[waxis], options.step, options.levels, options.half_steps)
            ms, err = [], []
            for width in widths:
                ws = list(w_shape)
                ws[waxis] = width
                xs = list(x_shape)
                if side[0] == "in" or depthwise:
                    xs[side[1]] = width
                t, e = (t0, 0.0) if width == w_shape[waxis] else timed(node, xs, ws, has_bias, depthwise)
                ms.append(t if width == w_shape[waxis] else max(t - overhead, 1e-6))
                err.append(e)
            ms = isotonic(ms, [1.0] * (len(ms) - 1) + [1e3])  # the full width stays (about) t0
            layer.axes[waxis] = _Axis(waxis, widths, ms, err)
        layers.append(layer)
        if progress is not None:
            progress(node.name)
    probe = LatencyModel(layers, 1.0, 1.0, {})

    def layer_saving(removal: Mapping[int, np.ndarray]) -> float:  # isolated ms, not calibrated
        return probe._s_full - probe.layer_sum(kept_dims(ctx.analysis, axes, removal))

    # groups removed alone in the whole graph: (name, channels removed, ms saved, layer saving)
    alone: list[tuple[str, int, float, float]] = []
    by_id = {g.id: g for g in ctx.analysis.groups}
    for gid, mask in sorted((differential or {}).items()):
        if not np.any(mask):
            continue
        cmp = compare(unpruned(), make(prune_copy(ctx.model, ctx.analysis, {gid: mask}, ctx.probe), feeds),
                      StableOptions(runs=max(options.runs, 10), warmup=options.warmup, precision=0.02,
                                    max_rounds=6, max_seconds=5.0))
        before = float(np.median(cmp["before"]))
        alone.append((by_id[gid].name, int(np.count_nonzero(mask)), before * (1 - 1 / cmp["speedup"]),
                      layer_saving({gid: mask})))
        if progress is not None:
            progress(by_id[gid].name)
    kappa = 1.0
    t_half = None
    if not half_removal:
        t_full, e_full = time_model(ctx.model, feeds, options, runs=max(options.runs, 10), max_seconds=5.0,
                                    runner=runner)
    else:  # the full and the half-width model interleaved: their ratio survives a busy machine
        half = prune_copy(ctx.model, ctx.analysis, half_removal, ctx.probe)
        cmp = compare(unpruned(), make(half, feeds),
                      StableOptions(runs=max(options.runs, 10), warmup=options.warmup, precision=0.02,
                                    max_rounds=8, max_seconds=10.0))
        t_full = float(np.median(cmp["before"]))
        e_full = (cmp["speedup_high"] - cmp["speedup_low"]) / 2 / cmp["speedup"] * t_full
        t_half = t_full / cmp["speedup"]
        # the groups measured alone (at their half widths) leave the calibration: what they saved
        # beyond their layers is theirs, not a scale on every layer
        saved = layer_saving(half_removal) - sum(p for *_, p in alone)
        gained = t_full - t_half - sum(m for _, _, m, _ in alone)
        if saved > 1e-6 and gained > 0:
            kappa = min(max(gained / saved, 0.2), 5.0)
    residuals = {name: {"removed": n, "ms": max(m - kappa * p, -kappa * p), "measured_ms": m}
                 for name, n, m, p in alone}
    info = {"layers": len(layers), "timed_subgraphs": measured, "overhead_ms": overhead,
            "differential": len(residuals),
            "build_s": time.perf_counter() - t_start,
            "t_full_err_ms": e_full, "t_half_ms": t_half, "batch": next(iter(feeds.values())).shape[0] if feeds else 1}
    log.info("latency model: %d layers, %d subgraphs timed in %.1f s; whole model %.3f ms, calibration %.2f",
             len(layers), measured, info["build_s"], t_full, kappa)
    return LatencyModel(layers, t_full, kappa, info, residuals)
