"""Training-free accuracy recovery passes (need unlabelled calibration data, ``--calib``).

- ``reconstruct`` (rewrite; runs after a selection, in place of ``prune``): removes the selected
  channels itself (:func:`~npcompile.channels.rewrite.apply_removal`), then refits, by ridge least squares,
  every Conv/Gemm/MatMul that read removed channels, so that its outputs match the model's
  outputs before this removal (the model the pass receives; He et al. 2017, ThiNet):
  ``W', β = argmin ‖X_kept W' + β − Y‖² + λ‖W'‖²``, with ``X_kept`` the layer's input in the
  *pruned* network (so it also compensates the errors of the layers refit before it) and ``Y`` the
  layer's output (before its bias) in the unpruned one; ``β`` is folded into the bias (created
  when the layer has none), which subsumes bias compensation. Convolutions use im2col patches at
  ``positions`` sampled output positions per sample; grouped and depthwise convolutions are fit
  per group. The normal equations are streamed (``Σxxᵀ``, ``Σxyᵀ`` per batch), never the
  activations. Layers are refit in waves (a layer after every layer it reads from): two
  calibration passes per wave, one through the pruned model, one through the unpruned. With
  ``scope="downstream"`` (the default) every later Conv/Gemm/MatMul is refit too (their inputs
  changed as well); ``scope="consumers"`` refits only the layers reading removed channels. A
  layer keeps its plain pruned weights (or only gets the bias shift) when the fit would not lower
  its error on the calibration data; ConvTranspose and layers with non-constant weights are
  skipped (the report says why).
- ``reconstruct-select`` (select; after ``select``/``budget`` or with its own ``ratio``): keeps
  the number of channels removed per group, but chooses them greedily (ThiNet-style) by the
  least-squares error their removal causes in the consumers' outputs, with the kept inputs refit,
  from Gram matrices of the consumers' inputs (one calibration pass).
- ``bias-compensate`` (rewrite; in place of ``prune``): removes the selected channels and adds
  each removed channel's mean contribution (its mean im2col column over the calibration data,
  padding included, times the consumer's weights) to the consumer's bias: exact where the removed
  channel is constant (and padding does not interfere).
- ``bn-recalibrate`` (rewrite; after pruning): re-estimates the running mean and (population)
  variance (``variance=false``: the mean only) of every inference-mode BatchNormalization (or of
  ``nodes``) from its input on the calibration data (Chan's parallel merge of per-batch moments),
  in waves: a BatchNorm is measured after every BatchNorm before it has its new statistics, so
  each ends up holding the statistics of its input in the returned model.

Each returns its part of the report's ``reconstruction`` section (``PassResult.report``; the
pipeline appends it to the section the passes before it started, ``ctx.report_extras``):
``layers`` (per refit layer: relative squared error of its outputs on the calibration data with
the plain pruned weights, with only the best bias shift, and after the refit; wave, columns,
rows, seconds; or why it was skipped), ``runs`` (per reconstruct pass: seconds, waves,
calibration passes, seconds in ONNX Runtime, one pass of the unpruned model), ``selection``,
``bias_compensation`` and ``bn_recalibration``.

Order in a pipeline: criterion → ``select``/``budget`` → [``reconstruct-select``] →
``reconstruct`` or ``bias-compensate`` (either removes the channels; a ``prune`` after them finds
nothing left to remove) → [``bn-recalibrate``].
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import KW_ONLY, dataclass
from typing import Any, ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from npcompile.channels.rewrite import apply_removal
from npcompile.channels.select import select_ratio
from npcompile.errors import OPT, OptionError, UserError
from npcompile.graph.model_io import to_model
from npcompile.importance.magnitude import group_magnitude
from npcompile.pipeline import Context, Pass, PassOptions, PassResult, option, register_pass
from npcompile.recovery.reconstruction import (
    ChannelMoments,
    Layer,
    LayerStats,
    MeanStats,
    Names,
    blas_threads,
    bn_nodes,
    centered,
    consumer_state,
    downstream_layers,
    errors,
    greedy_removal,
    group_columns,
    layer_from_node,
    layer_levels,
    output_energy,
    removal_layers,
    solve,
    stream,
    write_layer,
)
from npcompile.report.progress import progress
from npcompile.runtime.calibrate import Calibrator, check_shapes
from npcompile.runtime.data import Dataset

__all__ = ["ReconstructPass", "ReconstructSelectPass", "BiasCompensatePass", "BatchNormRecalibratePass"]

log = logging.getLogger(__name__)


def _need_calib(calib: Dataset | None, name: str, ctx: Context) -> Dataset:
    if calib is None:
        raise OptionError(f"pass {name} needs calibration data ({OPT:calib} DATA.npz)")
    check_shapes(calib, ctx.probe)
    return calib


def _fit_checks(positions: int, ridge: float) -> None:
    if positions < 0:
        raise UserError(f"positions must be >= 0 (0: every output position), got {positions}")
    if not ridge >= 0:
        raise UserError(f"ridge must be >= 0, got {ridge}")


def _plan(ctx: Context) -> tuple[gs.Graph, Any, dict[int, np.ndarray], list[Layer]]:
    """Layers reading removed channels (reference values), then apply the removal to ctx.graph."""
    graph, analysis = ctx.graph, ctx.analysis
    removal = analysis.close_removal(ctx.removal)
    layers = removal_layers(analysis, removal)
    return graph, analysis, removal, layers


def _apply(ctx: Context, graph: gs.Graph, analysis: Any, removal: dict[int, np.ndarray]) -> Any:
    stats = apply_removal(graph, analysis, removal)
    ctx.applied.append({analysis.group(gid).name: [int(i) for i in mask.nonzero()[0]]
                        for gid, mask in sorted(removal.items()) if mask.any()})
    return stats


def _bind(layers: list[Layer]) -> None:
    for layer in layers:
        if layer.skip:
            continue
        node = layer.node
        groups = int(node.attrs.get("group", 1)) if layer.op == "Conv" else 1
        try:
            layer.bind(node.inputs[1].values, groups)
        except ValueError as e:
            layer.skip = str(e)


def _finish(ctx: Context, graph: gs.Graph) -> None:
    ctx.set_graph(graph)  # the pipeline runs the ONNX checker on the new model


def _skipped(layers: list[Layer]) -> list[dict[str, str]]:
    return [{"layer": la.name, "op": la.op, "skipped": la.skip} for la in layers if la.skip]


class _RecoveryPass(Pass):
    """What the four passes share: calibration data ``calib`` (the first option; checked against the
    model's inputs before :meth:`recover` runs), their part of the report's ``reconstruction``
    section, and not exact. ``one_blas_thread``: NumPy's BLAS limited to one thread while the pass
    runs (:func:`~npcompile.recovery.stats.blas_threads`)."""

    exact = False
    section, accumulate = "reconstruction", True
    data_options: ClassVar[dict[str, str]] = {"calib": "ignore"}
    one_blas_thread: ClassVar[bool] = False

    @dataclass(frozen=True)
    class Options(PassOptions):
        """``calib`` (the one option given by position), then, keyword-only, the calibration
        sessions' ``batch_size`` and ``threads``; a subclass's ``record_order`` keeps its report's order."""

        calib: Dataset | None = option(None, record=False)
        _: KW_ONLY
        batch_size: int = 256
        threads: int = option(0, record=False)

        def __post_init__(self) -> None:
            if self.batch_size < 1:
                raise UserError(f"calibration batch size must be >= 1, got {self.batch_size}")

    def run(self, ctx: Context) -> PassResult:
        with blas_threads(1) if self.one_blas_thread else nullcontext():
            return self.recover(ctx, _need_calib(self.calib, self.name, ctx))

    def recover(self, ctx: Context, calib: Dataset) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def calibrator(self, model: Any, tensors: list[str] | tuple[str, ...] = (), **kw: Any) -> Calibrator:
        """A quiet calibration session of ``model`` exposing ``tensors``, in the pass's batch size and threads."""
        return Calibrator(model, tensors, self.batch_size, threads=self.threads, progress=False, **kw)

    def stream_once(self, calib: Dataset, model: Any, tensors: list[str], fold: Any) -> float:
        """Stream ``calib`` once through ``model``, ``fold(first, [values of tensors])`` per batch; the
        seconds spent in ONNX Runtime."""
        return stream(calib, self.batch_size, [(self.calibrator(model, tensors), tensors)], fold)[1][0]


@register_pass
class ReconstructPass(_RecoveryPass):
    """Remove the selected channels and refit the layers that read them by least squares."""

    name = "reconstruct"
    kind = "rewrite"
    description = ("remove the selected channels, then refit the layers reading them and the weight layers after "
                   "them by least squares to match the unpruned outputs on calibration data (needs --calib)")
    requires = frozenset({"removal"})
    produces = frozenset({"model"})
    one_blas_thread = True

    @dataclass(frozen=True)
    class Options(_RecoveryPass.Options):
        record_order = ("ridge", "positions", "batch_size", "intercept", "scope")
        ridge: float = 1e-3
        positions: int = 16
        _: KW_ONLY
        intercept: bool = True
        scope: str = "downstream"

        def __post_init__(self) -> None:
            super().__post_init__()
            _fit_checks(self.positions, self.ridge)
            if self.scope not in ("consumers", "downstream"):
                raise UserError(f"reconstruct: scope must be consumers or downstream, got {self.scope!r}")

    def recover(self, ctx: Context, calib: Dataset) -> PassResult:
        if not ctx.removal:
            return PassResult(False, "nothing to remove")
        t_start = time.perf_counter()
        reference = ctx.model
        graph, analysis, removal, layers = _plan(ctx)
        if self.scope == "downstream":
            layers = layers + downstream_layers(analysis, removal, layers)
        for layer in layers:
            if not layer.skip and layer.op == "Conv" and analysis.shapes.get(layer.y) is None:
                layer.skip = f"{layer.name}: unknown output shape"
        stats = _apply(ctx, graph, analysis, removal)
        _bind(layers)
        active = [la for la in layers if not la.skip]
        waves = layer_levels(graph, active)
        names = Names(graph)
        rows: list[dict[str, Any]] = []
        session_s = [0.0, 0.0]
        one_pass = None
        ref_cal = self.calibrator(reference, [la.y for la in active]) if active else None
        with progress("reconstruction", total=len(waves)) as tick:
            for wave_no, wave in enumerate(waves, 1):
                tick(1, f"layers {', '.join(la.name for la in wave)[:60]}")
                pruned = to_model(graph, ctx.original)
                p_cal = self.calibrator(pruned, [la.x for la in wave])
                accs = [LayerStats(la, la.x, la.y, self.positions) for la in wave]

                def fold(first: int, values: list[dict[str, np.ndarray]], accs=accs) -> None:
                    ref, now = values
                    for acc in accs:
                        y = ref[acc.layer.y]
                        acc.update(first, now[acc.layer.x], y, y.shape)

                sessions = [(ref_cal, [la.y for la in wave]), (p_cal, [la.x for la in wave])]
                _, spent = stream(calib, self.batch_size, sessions, fold)
                session_s[0] += spent[0]
                session_s[1] += spent[1]
                one_pass = spent[0] if one_pass is None else one_pass
                for acc in accs:
                    rows.append(self._refit(graph, acc, wave_no, names))
        _finish(ctx, graph)
        total = time.perf_counter() - t_start
        report = {"layers": rows + _skipped(layers), "runs": [{
            "pass": self.name, "seconds": total, "waves": len(waves), "calibration_passes": 2 * len(waves),
            "samples": len(calib), "session_seconds": sum(session_s), "one_pass_seconds": one_pass,
            "ridge": self.ridge, "positions": self.positions, "scope": self.scope}]}
        fitted = [r for r in rows if r.get("applied") == "refit"]
        before = float(np.mean([r["error_before"] for r in rows])) if rows else 0.0
        after = float(np.mean([r["error_after"] for r in rows])) if rows else 0.0
        return PassResult(True, f"removed {stats.channels_removed} channels from {stats.groups} groups; refit "
                                f"{len(fitted)} of {len(layers)} layers in {len(waves)} waves (mean relative error "
                                f"{before:.3g} -> {after:.3g}, {total:.2f} s)",
                          {"channels": stats.channels_removed, "groups": stats.groups, "layers": len(rows),
                           "refit": len(fitted), "skipped": len(layers) - len(rows), "waves": len(waves),
                           "seconds": total}, report=report)

    def _refit(self, graph: gs.Graph, acc: LayerStats, wave: int, names: Names) -> dict[str, Any]:
        t0 = time.perf_counter()
        layer = acc.layer
        node = layer.node
        groups = int(node.attrs.get("group", 1)) if layer.op == "Conv" else 1
        w_plain = layer.kept_matrix(np.asarray(node.inputs[1].values, np.float64), groups)
        bias_kept = layer.bias[layer.out_keep].reshape(layer.blocks, -1)
        energy = max(output_energy(acc, bias_kept), 1e-30)
        e_plain = errors(acc, w_plain)
        _, _, xm, ym = centered(acc, True)
        beta_b = ym - np.einsum("bdo,bd->bo", w_plain, xm)  # the best bias shift with the plain weights
        e_bias = errors(acc, w_plain, beta_b)
        w, beta = solve(acc, self.ridge, self.intercept)
        ok = np.isfinite(w).all() and np.isfinite(beta).all()
        e_fit = errors(acc, w, beta) if ok else np.inf
        if ok and e_fit <= min(e_plain, e_bias if self.intercept else e_plain):
            write_layer(graph, layer, w, beta if self.intercept else None, names)
            applied, e_after = "refit", e_fit
        elif self.intercept and e_bias < e_plain:
            write_layer(graph, layer, None, beta_b, names)
            applied, e_after = "bias", e_bias
        else:
            applied, e_after = "none", e_plain
        return {"layer": layer.name, "op": layer.op, "wave": wave, "blocks": layer.blocks,
                "columns": int(acc.sx.shape[1]), "outputs": int(acc.sy.shape[1]) * layer.blocks, "rows": acc.n,
                "error_before": e_plain / energy, "error_bias_only": e_bias / energy, "error_after": e_after / energy,
                "applied": applied, "seconds": acc.seconds + time.perf_counter() - t0}


@register_pass
class BiasCompensatePass(_RecoveryPass):
    """Remove the selected channels and fold their mean contribution into the consumers' biases."""

    name = "bias-compensate"
    kind = "rewrite"
    description = ("remove the selected channels and fold their mean contribution on calibration data into the "
                   "consumers' biases (needs --calib)")
    requires = frozenset({"removal"})
    produces = frozenset({"model"})

    def recover(self, ctx: Context, calib: Dataset) -> PassResult:
        if not ctx.removal:
            return PassResult(False, "nothing to remove")
        t0 = time.perf_counter()
        reference = ctx.model
        graph, analysis, removal, layers = _plan(ctx)
        accs: list[MeanStats] = []
        for layer in layers:
            if layer.skip:
                continue
            if layer.op == "Conv" and analysis.shapes.get(layer.y) is None:
                layer.skip = f"{layer.name}: unknown output shape"
                continue
            gone = np.setdiff1d(np.arange(layer.n_in), layer.in_keep)
            if len(gone):
                accs.append(MeanStats(layer, gone))
        if accs:
            def fold(first: int, values: list[dict[str, np.ndarray]]) -> None:
                for a in accs:
                    a.update(values[0][a.layer.x], analysis.shapes.get(a.layer.y, ()))

            self.stream_once(calib, reference, [a.layer.x for a in accs], fold)
        shifts = {id(a.layer): _mean_shift(a) for a in accs}
        stats = _apply(ctx, graph, analysis, removal)
        _bind(layers)
        names = Names(graph)
        rows = []
        for a in accs:
            layer = a.layer
            if layer.skip:
                continue
            delta = shifts[id(layer)][layer.out_keep].reshape(layer.blocks, -1)
            write_layer(graph, layer, None, delta, names)
            rows.append({"layer": layer.name, "op": layer.op, "channels": len(a.channels),
                         "max_abs_shift": float(np.abs(delta).max()) if delta.size else 0.0})
        _finish(ctx, graph)
        dt = time.perf_counter() - t0
        return PassResult(True, f"removed {stats.channels_removed} channels from {stats.groups} groups; compensated "
                                f"the biases of {len(rows)} layers ({dt:.2f} s)",
                          {"channels": stats.channels_removed, "groups": stats.groups, "layers": len(rows),
                           "seconds": dt}, report={"bias_compensation": rows + _skipped(layers)})


def _mean_shift(a: MeanStats) -> np.ndarray:
    """Per reference output: Σ over removed columns of (mean column value × weight)."""
    layer = a.layer
    means = a.means()  # [removed, K]
    if layer.op == "Conv":
        w = layer.w.astype(np.float64)
        cout, cin_g = w.shape[0], w.shape[1]
        cout_g = cout // layer.groups
        out = np.zeros(cout)
        wk = w.reshape(cout, cin_g, -1)
        for i, c in enumerate(a.channels):
            b, local = divmod(int(c), cin_g)
            rows = slice(b * cout_g, (b + 1) * cout_g)
            out[rows] += wk[rows, local, :] @ means[i]
        return out
    m = layer.ref_matrix()[0].astype(np.float64)  # [features, outputs], alpha applied
    return means[:, 0] @ m[a.channels]


@register_pass
class ReconstructSelectPass(_RecoveryPass):
    """Choose the channels to remove by the least-squares reconstruction error they cause."""

    name = "reconstruct-select"
    kind = "select"
    description = ("choose which channels to remove (as many per group as the ratio or the previous selection) "
                   "greedily by the reconstruction error of the consumers' outputs (needs --calib)")
    produces = frozenset({"removal"})  # from its ratio or the selection before it
    one_blas_thread = True

    @dataclass(frozen=True)
    class Options(_RecoveryPass.Options):
        record_order = ("ratio", "round_to", "min_channels", "ridge", "positions", "batch_size", "max_columns")
        ratio: float | None = None
        round_to: int = 1
        min_channels: int = 1
        ridge: float = 1e-3
        positions: int = 16
        _: KW_ONLY
        max_columns: int = 4096

        def __post_init__(self) -> None:
            super().__post_init__()
            _fit_checks(self.positions, self.ridge)
            if self.ratio is not None and not 0.0 <= self.ratio < 1.0:
                raise UserError(f"reconstruct-select: ratio must be in [0, 1), got {self.ratio}")
            if self.round_to < 1 or self.min_channels < 1 or self.max_columns < 1:
                raise UserError("reconstruct-select: round_to, min_channels and max_columns must be >= 1")

    def _counts(self, ctx: Context) -> dict[int, np.ndarray]:
        analysis = ctx.analysis
        if self.ratio is not None:
            groups = analysis.prunable_groups()
            scores = {g.id: ctx.scores[g.id] if g.id in ctx.scores else group_magnitude(analysis, g) for g in groups}
            return select_ratio(groups, scores, self.ratio, self.round_to, self.min_channels)
        if not ctx.removal:
            raise UserError("reconstruct-select needs a ratio or a selection before it (select, budget)")
        return {analysis.find(g): np.asarray(m, bool) for g, m in ctx.removal.items()}

    def recover(self, ctx: Context, calib: Dataset) -> PassResult:
        t0 = time.perf_counter()
        analysis = ctx.analysis
        base = self._counts(ctx)
        linked = {analysis.find(lk.units) for lk in analysis.links} | {analysis.find(lk.neurons)
                                                                        for lk in analysis.links}
        targets = [analysis.group(g) for g, m in base.items() if m.any() and g not in linked
                   and analysis.group(g).prunable]
        target_ids = {g.id for g in targets}
        # consumers: plain (ungrouped) Conv, Gemm, MatMul reading a target group
        consumers: dict[int, tuple[Layer, Any]] = {}
        uses: dict[int, list[tuple[int, Any]]] = {}
        for g in targets:
            for site in g.sites_of("in"):
                node = site.node
                if node.op not in ("Conv", "Gemm", "MatMul") or site.blocks > 1:
                    continue
                if id(node) not in consumers:
                    layer = layer_from_node(node, None, None, analysis.shapes)
                    if layer.op == "Conv" and (layer.groups != 1 or analysis.shapes.get(layer.y) is None):
                        layer.skip = layer.skip or "grouped or unknown output shape"
                    if not layer.skip:
                        d = layer.n_in * layer.ksize
                        if d > self.max_columns:
                            layer.skip = f"{d} columns > max_columns {self.max_columns}"
                    layer.kept_blocks = np.zeros(1, np.int64)
                    consumers[id(node)] = (layer, site)
                if not consumers[id(node)][0].skip:
                    uses.setdefault(g.id, []).append((id(node), site))
        active = {k: v for k, v in consumers.items() if not v[0].skip}
        accs = {k: LayerStats(la, la.x, None, self.positions) for k, (la, _) in active.items()}
        session_s = 0.0
        if accs:
            def fold(first: int, values: list[dict[str, np.ndarray]]) -> None:
                for a in accs.values():
                    a.update(first, values[0][a.x_name], None, (0, *analysis.shapes.get(a.layer.y, ())[1:]))

            session_s = self.stream_once(calib, ctx.model, [a.x_name for a in accs.values()], fold)
        grams = {k: centered(a, True)[0][0] for k, a in accs.items()}
        removal: dict[int, np.ndarray] = {}
        rows = []
        for g, mask in base.items():
            grp = analysis.group(g)
            use = uses.get(g, [])
            if g not in target_ids or not use:
                removal[g] = mask
                continue
            states = []
            for key, site in use:
                layer = active[key][0]
                cols = group_columns(analysis, grp, site, layer.ksize)
                states.append(consumer_state(grams[key], layer.ref_matrix()[0].astype(np.float64), self.ridge, cols))
            per_block = int(mask.sum()) // grp.blocks
            new, err = greedy_removal(grp.size, grp.blocks, per_block, states, grp.dead)
            removal[g] = new
            rows.append({"group": grp.name, "width": grp.size, "removed": int(new.sum()), "consumers": len(states),
                         "predicted_error": err, "changed": int((new & ~mask).sum())})
        ctx.removal = analysis.close_removal(removal)
        ctx.criterion = ctx.criterion or "reconstruction"
        dt = time.perf_counter() - t0
        report = {"selection": rows, "selection_runs": [{"seconds": dt, "session_seconds": session_s,
                                                         "consumers": len(accs), "groups": len(rows),
                                                         "skipped": [{"layer": la.name, "skipped": la.skip}
                                                                     for la, _ in consumers.values() if la.skip]}]}
        n = int(sum(m.sum() for m in ctx.removal.values()))
        return PassResult(False, f"selected {n} channels in {len(ctx.removal)} groups ({len(rows)} by reconstruction "
                                 f"error, {len(accs)} consumers, {dt:.2f} s)",
                          {"channels": n, "groups": len(ctx.removal), "by_reconstruction": len(rows), "seconds": dt},
                          report=report)


@register_pass
class BatchNormRecalibratePass(_RecoveryPass):
    """Re-estimate BatchNormalization running statistics on calibration data."""

    name = "bn-recalibrate"
    kind = "rewrite"
    description = "re-estimate BatchNormalization running mean/variance on calibration data (needs --calib)"
    produces = frozenset({"model"})

    @dataclass(frozen=True)
    class Options(_RecoveryPass.Options):
        _: KW_ONLY
        nodes: list[str] | None = None
        variance: bool = True

    def recover(self, ctx: Context, calib: Dataset) -> PassResult:
        t0 = time.perf_counter()
        graph = ctx.graph
        nodes = bn_nodes(graph, self.nodes)
        if not nodes:
            return PassResult(False, "no BatchNormalization to re-estimate")
        names = Names(graph)
        shifts = []
        samples, passes = 0, 0
        # in waves: a BatchNorm is measured after every BatchNorm before it has been re-estimated
        for wave in layer_levels(graph, nodes, node=lambda n: n):
            moments: dict[str, ChannelMoments] = {}
            for n in wave:
                moments.setdefault(n.inputs[0].name, ChannelMoments(n.inputs[0].name, 1))
            cal = self.calibrator(to_model(graph, ctx.original), accumulators=list(moments.values()))
            samples = cal.run(calib).samples
            passes += 1
            for n in wave:
                m = moments[n.inputs[0].name]
                old_mean, old_var = n.inputs[3].values, n.inputs[4].values
                if m.mean is None or m.mean.shape != old_mean.reshape(-1).shape:
                    raise UserError(f"bn-recalibrate: {n.name} input has {0 if m.mean is None else m.mean.size} "
                                    f"channels, its statistics {old_mean.size}")
                n.inputs[3] = gs.Constant(names(n.inputs[3].name),
                                          m.mean.reshape(old_mean.shape).astype(old_mean.dtype))
                if self.variance:
                    n.inputs[4] = gs.Constant(names(n.inputs[4].name),
                                              m.var.reshape(old_var.shape).astype(old_var.dtype))
                shifts.append({"node": n.name, "channels": int(m.mean.size),
                               "mean_shift": float(np.abs(m.mean - old_mean.reshape(-1)).max()),
                               "var_ratio": float(np.median((m.var + 1e-12) / (old_var.reshape(-1) + 1e-12)))})
        ctx.set_graph(graph)
        dt = time.perf_counter() - t0
        report = {"bn_recalibration": [{"nodes": shifts, "samples": samples, "calibration_passes": passes,
                                        "seconds": dt}]}
        return PassResult(True, f"re-estimated {len(nodes)} BatchNormalization nodes on {samples} samples in "
                                f"{passes} passes ({dt:.2f} s)",
                          {"nodes": len(nodes), "samples": samples, "passes": passes, "seconds": dt},
                          report=report)
