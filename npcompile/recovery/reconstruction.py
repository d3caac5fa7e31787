"""Training-free accuracy recovery: least-squares reconstruction of the layers that read pruned
channels (and of the layers after them), reconstruction-aware channel selection, bias
compensation and BatchNorm re-estimation (the passes are in :mod:`npcompile.passes.reconstruct`).

Everything here works on *layers*: a Conv (plain, grouped or depthwise), a Gemm or a MatMul with
a constant weight, seen as a linear map from *columns* (the input features a weight row reads: the
``C·K`` entries of a convolution patch, with ``K`` the kernel size, or the features of a fully
connected input) to the layer's outputs, ``y = xᵀW + b``. A grouped convolution is ``blocks``
independent maps (block ``j`` reads its own input channels and makes its own outputs).

Statistics are *streamed*: a :class:`LayerStats` folds each calibration batch into running sums
(``Σx``, ``Σxxᵀ``, ``Σy``, ``Σxyᵀ``, ``Σ‖y‖²`` per block, in float64), so its memory is
``blocks·(d² + d·o)`` for ``d`` columns and ``o`` outputs per block — never the activations
themselves (one batch of them at a time). For convolutions the patches are taken at a sample of
output positions per input sample (``positions``), chosen by a hash of the sample's index in the
data set, so the sums do not depend on the batch size.

From the sums, :func:`solve` computes the ridge least-squares fit with an intercept (the new
weights and the bias shift) and :func:`errors` the squared error of any ``(W, β)``; the greedy
selection (:func:`greedy_removal`) removes the channel whose removal least increases the optimal
least-squares error, with the block-deletion (Schur complement) update of the inverse Gram
matrix.
"""

from __future__ import annotations

import contextlib
import logging
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from npcompile.channels.analysis import ChannelAnalysis, Group, Site
from npcompile.graph.weighted_ops import REFIT_OPS
from npcompile.runtime.data import Dataset
from npcompile.runtime.stream import TensorStream, batches

__all__ = ["Layer", "LayerStats", "MeanStats", "ChannelMoments", "layer_from_node", "removal_layers",
           "downstream_layers", "layer_levels", "stream", "solve", "errors", "greedy_removal",
           "group_columns", "write_layer", "sample_positions", "blas_threads", "Names", "bn_nodes", "LAYER_OPS"]

log = logging.getLogger(__name__)

#: ops whose weights can be refit (the weighted ops but ConvTranspose)
LAYER_OPS = REFIT_OPS


def blas_threads(n: int = 1) -> contextlib.AbstractContextManager:
    """Limit NumPy's BLAS to ``n`` threads while the normal equations are accumulated (with
    ``threadpoolctl``, when installed). The products are many mid-sized ones between ONNX Runtime
    runs; on a busy machine a multi-threaded OpenBLAS spends far more time synchronising its
    threads than computing (measured 30x slower on 2 shared cores)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional
        return contextlib.nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


def _splitmix(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def sample_positions(first: int, n: int, per_sample: int, k: int, salt: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows to take from a batch of ``n`` samples (global indices ``first..first+n-1``) with
    ``per_sample`` positions each: ``k`` of them per sample (all when ``k <= 0`` or ``k >=
    per_sample``), chosen by a hash of (salt, sample index, position) — the same positions whatever
    the batch size. Returns (sample index within the batch, position), both of length ``rows``."""
    if k <= 0 or k >= per_sample:
        return np.repeat(np.arange(n), per_sample), np.tile(np.arange(per_sample), n)
    samples = np.arange(first, first + n, dtype=np.uint64)
    base = _splitmix(samples ^ _splitmix(np.asarray([salt], np.uint64)))
    keys = _splitmix(base[:, None] ^ np.arange(per_sample, dtype=np.uint64)[None, :])
    pos = np.sort(np.argpartition(keys, k - 1, axis=1)[:, :k], axis=1)
    return np.repeat(np.arange(n), k), pos.ravel()


@dataclass
class Layer:
    """One layer whose weights are refit (or whose bias is compensated).

    ``w`` and ``bias`` are the reference (unpruned) values: ``bias`` is the effective per-output
    offset (Gemm: ``beta·C``; none: zeros). ``in_keep`` are the kept positions of the weight's
    input axis (conv: input channels, else features), ``out_keep`` the kept outputs.
    """

    node: gs.Node
    name: str
    op: str
    x: str
    y: str
    w: np.ndarray
    bias: np.ndarray
    in_keep: np.ndarray
    out_keep: np.ndarray
    n_in: int  # width of the input's channel/feature axis in the reference
    groups: int = 1  # reference conv groups
    alpha: float = 1.0
    trans_b: bool = False
    kernel: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    auto_pad: str = "NOTSET"
    skip: str | None = None
    #: filled by :meth:`bind` from the pruned node: kept blocks (reference block of each)
    kept_blocks: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    salt: int = 0

    # -- geometry ---------------------------------------------------------------------------
    @property
    def ksize(self) -> int:
        return int(np.prod(self.kernel)) if self.kernel else 1

    def ref_matrix(self) -> np.ndarray:
        """Reference weights as ``[blocks, d, o]`` (d columns, o outputs per block)."""
        return _as_matrix(self, self.w, self.groups)

    def kept_matrix(self, w: np.ndarray, groups: int) -> np.ndarray:
        return _as_matrix(self, w, groups)

    def bind(self, pruned_w: np.ndarray, pruned_groups: int) -> None:
        """Check the pruned weight against the kept positions; record the kept blocks."""
        if self.op == "Conv":
            cout_g = self.w.shape[0] // self.groups
            blocks = np.unique(self.out_keep // cout_g)
            if len(blocks) != pruned_groups:
                raise ValueError(f"{self.name}: {len(blocks)} kept blocks, the pruned node has {pruned_groups}")
            want = (len(self.out_keep), len(self.in_keep) // max(pruned_groups, 1), *self.kernel)
        else:
            blocks = np.zeros(1, np.int64)
            m = pruned_w if not self.trans_b else pruned_w.T
            want = (len(self.in_keep), len(self.out_keep))
            pruned_w = m
        if tuple(pruned_w.shape) != want:
            raise ValueError(f"{self.name}: pruned weight {tuple(pruned_w.shape)}, expected {want}")
        self.kept_blocks = blocks

    @property
    def blocks(self) -> int:
        return max(len(self.kept_blocks), 1)

    # -- rows of one batch ------------------------------------------------------------------
    def x_rows(self, x: np.ndarray, n_idx: np.ndarray, pos: np.ndarray, out_spatial: tuple[int, ...]) -> np.ndarray:
        """``[rows, blocks, d]``: the columns at the sampled positions (x: this layer's input,
        holding exactly the channels the weights read, in order)."""
        if self.op == "Conv":
            p = conv_patches(x, self, n_idx, pos, out_spatial)  # [rows, C, K]
            rows = p.shape[0]
            return p.reshape(rows, self.blocks, -1)
        f = x.shape[-1]
        return x.reshape(x.shape[0], -1, f)[n_idx, pos].reshape(len(n_idx), 1, f)

    def y_rows(self, y: np.ndarray, n_idx: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """``[rows, blocks, o]``: the reference outputs (kept ones, pre-bias) at the positions."""
        if self.op == "Conv":
            yy = y.reshape(y.shape[0], y.shape[1], -1)[n_idx, :, pos]  # [rows, Cout]
        else:
            yy = y.reshape(y.shape[0], -1, y.shape[-1])[n_idx, pos]
        yy = yy[:, self.out_keep] - self.bias[self.out_keep].astype(yy.dtype)
        return yy.reshape(len(n_idx), self.blocks, -1)

    def per_sample(self, x_shape: tuple[int, ...], y_shape: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
        """(positions per sample, output spatial shape) for a batch."""
        if self.op == "Conv":
            sp = tuple(int(s) for s in y_shape[2:])
            return int(np.prod(sp)) if sp else 1, sp
        if self.op == "MatMul" and len(x_shape) > 2:
            return int(np.prod(x_shape[1:-1])), ()
        return 1, ()


def _as_matrix(layer: Layer, w: np.ndarray, groups: int) -> np.ndarray:
    if layer.op == "Conv":
        cout = w.shape[0]
        g = max(groups, 1)
        return np.ascontiguousarray(w.reshape(g, cout // g, -1).transpose(0, 2, 1))
    m = w.T if layer.trans_b else w
    return (m * layer.alpha)[None] if layer.op == "Gemm" else m[None]


def _conv_pads(layer: Layer, in_sp: Sequence[int], out_sp: Sequence[int]) -> tuple[list[int], list[int]]:
    nd = len(in_sp)
    if layer.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for i in range(nd):
            total = max(0, (out_sp[i] - 1) * layer.strides[i] + (layer.kernel[i] - 1) * layer.dilations[i] + 1
                        - in_sp[i])
            small = total // 2
            b = small if layer.auto_pad == "SAME_UPPER" else total - small
            begin.append(b)
            end.append(total - b)
        return begin, end
    if layer.auto_pad == "VALID" or not layer.pads:
        return [0] * nd, [0] * nd
    return list(layer.pads[:nd]), list(layer.pads[nd:])


def conv_patches(x: np.ndarray, layer: Layer, n_idx: np.ndarray, pos: np.ndarray,
                 out_sp: tuple[int, ...]) -> np.ndarray:
    """im2col at sampled output positions: ``[rows, C, K]`` (C the input channels of ``x``)."""
    sp = x.shape[2:]
    begin, end = _conv_pads(layer, sp, out_sp)
    if any(begin) or any(end):
        x = np.pad(x, [(0, 0), (0, 0), *zip(begin, end, strict=True)])
    xl = np.moveaxis(x, 1, -1)  # [n, *S, C] (a view)
    coords = np.unravel_index(pos, out_sp)
    nd = len(sp)
    idx: list[np.ndarray] = [n_idx.reshape(-1, *([1] * nd))]
    for j in range(nd):
        shape = [1] * nd
        shape[j] = layer.kernel[j]
        k = (np.arange(layer.kernel[j]) * layer.dilations[j]).reshape(shape)
        idx.append(coords[j].reshape(-1, *([1] * nd)) * layer.strides[j] + k[None])
    patches = xl[tuple(idx)]  # [rows, *K, C]
    rows = patches.shape[0]
    return np.moveaxis(patches.reshape(rows, layer.ksize, -1), 2, 1)  # [rows, C, K]


def conv_column_sums(x: np.ndarray, layer: Layer, channels: np.ndarray, out_sp: tuple[int, ...]) -> np.ndarray:
    """Sum over every output position (and sample) of the patch entries of ``channels`` of
    ``x``: ``[len(channels), K]`` — exact column means of the im2col matrix, padding included."""
    xs = x[:, channels]
    sp = xs.shape[2:]
    begin, end = _conv_pads(layer, sp, out_sp)
    if any(begin) or any(end):
        xs = np.pad(xs, [(0, 0), (0, 0), *zip(begin, end, strict=True)])
    out = np.zeros((len(channels), layer.ksize))
    for k, offs in enumerate(np.ndindex(*layer.kernel)):
        sl = tuple(slice(o * d, o * d + (n - 1) * s + 1, s)
                   for o, d, n, s in zip(offs, layer.dilations, out_sp, layer.strides, strict=True))
        out[:, k] = xs[(slice(None), slice(None), *sl)].sum(axis=(0, *range(2, 2 + len(sp))), dtype=np.float64)
    return out


def layer_from_node(node: gs.Node, in_keep: np.ndarray | None, out_keep: np.ndarray | None,
                    shapes: dict[str, tuple[int, ...]]) -> Layer:
    """A :class:`Layer` of ``node`` (reference values copied); ``skip`` says why one cannot be
    refit."""
    name = node.name or node.outputs[0].name
    x, y = node.inputs[0], node.outputs[0]
    wt = node.inputs[1] if len(node.inputs) > 1 else None
    skip = None
    if node.op not in LAYER_OPS or not isinstance(wt, gs.Constant):
        why = f"{node.op} layers are not reconstructed" if node.op not in LAYER_OPS else \
            f"{name} has non-constant weights"
        return Layer(node, name, node.op, x.name, y.name, np.zeros((1, 1)), np.zeros(1), np.zeros(0, np.int64),
                     np.zeros(0, np.int64), 0, skip=why)
    w = np.array(wt.values, copy=True)
    kw: dict[str, Any] = {}
    if node.op == "Conv":
        groups = int(node.attrs.get("group", 1))
        nd = w.ndim - 2
        kw = {"groups": groups, "kernel": tuple(int(k) for k in w.shape[2:]),
              "strides": tuple(node.attrs.get("strides", [1] * nd)),
              "dilations": tuple(node.attrs.get("dilations", [1] * nd)),
              "pads": tuple(node.attrs.get("pads", [0] * 2 * nd)),
              "auto_pad": str(node.attrs.get("auto_pad", "NOTSET") or "NOTSET")}
        if isinstance(kw["auto_pad"], bytes):
            kw["auto_pad"] = kw["auto_pad"].decode()
        n_out, n_in = w.shape[0], w.shape[1] * groups
        b = node.inputs[2] if len(node.inputs) > 2 else None
        if b is not None and b.name and not isinstance(b, gs.Constant):
            skip = skip or f"{name} has a non-constant bias"
        bias = np.asarray(b.values, np.float64).reshape(-1) if isinstance(b, gs.Constant) else np.zeros(n_out)
    elif node.op == "Gemm":
        trans_b = bool(node.attrs.get("transB", 0))
        alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
        kw = {"trans_b": trans_b, "alpha": alpha}
        n_in, n_out = (w.shape[1], w.shape[0]) if trans_b else w.shape
        c = node.inputs[2] if len(node.inputs) > 2 else None
        bias = np.zeros(n_out)
        if c is not None and c.name:
            if not isinstance(c, gs.Constant):
                skip = skip or f"{name} has a non-constant C"
            else:
                cv = np.asarray(c.values, np.float64)
                if cv.size in (1, n_out) and (cv.ndim < 2 or cv.shape[0] == 1):
                    bias = beta * np.broadcast_to(cv.reshape(-1), (n_out,)).astype(np.float64)
                else:
                    skip = skip or f"{name}: C of shape {list(cv.shape)} is not a per-output bias"
        if node.attrs.get("transA", 0):
            skip = skip or f"{name} has transA"
    else:  # MatMul
        if w.ndim != 2:
            skip = skip or f"{name}: batched MatMul weight"
        n_in, n_out = w.shape[-2], w.shape[-1]
        bias = np.zeros(n_out)
    in_keep = np.arange(n_in) if in_keep is None else np.asarray(in_keep, np.int64)
    out_keep = np.arange(n_out) if out_keep is None else np.asarray(out_keep, np.int64)
    layer = Layer(node, name, node.op, x.name, y.name, w, bias, in_keep, out_keep, int(n_in), skip=skip,
                  salt=zlib.crc32(name.encode()), **kw)
    if node.op == "MatMul" and not skip:
        rank = len(shapes.get(x.name, ()))
        if rank < 2:
            layer.skip = f"{name}: unknown rank of its input"
    return layer


def _out_sites(analysis: ChannelAnalysis) -> dict[int, Site]:
    out: dict[int, Site] = {}
    for g in analysis.groups:
        for s in g.sites:
            if s.role == "out" and s.index == 1:
                out.setdefault(id(s.node), s)
    return out


def _in_sites(analysis: ChannelAnalysis) -> dict[int, Site]:
    out: dict[int, Site] = {}
    for g in analysis.groups:
        for s in g.sites:
            if s.role == "in" and s.index == 1:
                out.setdefault(id(s.node), s)
    return out


def _keeps(analysis: ChannelAnalysis, node: gs.Node, removal: dict[int, np.ndarray],
           ins: dict[int, Site], outs: dict[int, Site]) -> tuple[np.ndarray | None, np.ndarray | None]:
    find = analysis.find
    si, so = ins.get(id(node)), outs.get(id(node))
    in_keep = si.layout.keep_positions(removal, find) if si is not None else None
    out_keep = so.layout.keep_positions(removal, find) if so is not None else None
    groups = int(node.attrs.get("group", 1)) if node.op == "Conv" else 1
    w = node.inputs[1].values if isinstance(node.inputs[1], gs.Constant) else None
    if si is None and groups > 1 and out_keep is not None and w is not None:
        # depthwise: its input channels go with its outputs (an ``out`` site); keep the inputs of
        # the kept blocks
        cout_g, cin_g = w.shape[0] // groups, w.shape[1]
        blocks = np.unique(out_keep // cout_g)
        in_keep = (blocks[:, None] * cin_g + np.arange(cin_g)[None, :]).ravel()
    return in_keep, out_keep


def removal_layers(analysis: ChannelAnalysis, removal: dict[int, np.ndarray]) -> list[Layer]:
    """The layers that read channels ``removal`` removes (the ``in`` sites of the removed groups),
    in graph order, reference values copied (call before the removal is applied)."""
    ins, outs = _in_sites(analysis), _out_sites(analysis)
    nodes: dict[int, gs.Node] = {}
    for gid, mask in removal.items():
        if not np.asarray(mask).any():
            continue
        for site in analysis.group(gid).sites_of("in"):
            nodes.setdefault(id(site.node), site.node)
    order = {id(n): i for i, n in enumerate(analysis.graph.nodes)}
    layers = []
    for node in sorted(nodes.values(), key=lambda n: order.get(id(n), 0)):
        in_keep, out_keep = _keeps(analysis, node, removal, ins, outs)
        layers.append(layer_from_node(node, in_keep, out_keep, analysis.shapes))
    return layers


def downstream_layers(analysis: ChannelAnalysis, removal: dict[int, np.ndarray], start: Iterable[Layer]) -> list[Layer]:
    """Every Conv/Gemm/MatMul with constant weights that reads, directly or not, the output of a
    layer in ``start`` (the layers whose input changed), besides those in ``start``."""
    ins, outs = _in_sites(analysis), _out_sites(analysis)
    graph = analysis.graph
    have = {id(layer.node) for layer in start}
    tainted = {layer.y for layer in start}
    found: list[Layer] = []
    for node in graph.nodes:
        if not any(t.name in tainted for t in node.inputs if not isinstance(t, gs.Constant)):
            continue
        tainted.update(t.name for t in node.outputs)
        if id(node) in have or node.op not in LAYER_OPS or len(node.inputs) < 2 \
                or not isinstance(node.inputs[1], gs.Constant):
            continue
        if isinstance(node.inputs[0], gs.Constant):
            continue
        in_keep, out_keep = _keeps(analysis, node, removal, ins, outs)
        found.append(layer_from_node(node, in_keep, out_keep, analysis.shapes))
    return found


def layer_levels(graph: gs.Graph, layers: Sequence[Any],
                 node: Callable[[Any], gs.Node] | None = None) -> list[list[Any]]:
    """Layers (or anything ``node`` maps to a graph node) in waves: one comes after every one it
    reads from, directly or not, so each wave's inputs are final when it is processed; one
    calibration pass per wave."""
    node = node or (lambda layer: layer.node)
    by_node = {id(node(layer)): layer for layer in layers}
    level: dict[str, int] = {}
    waves: dict[int, list[Any]] = {}
    for n in graph.nodes:
        lv = max((level.get(t.name, 0) for t in n.inputs if not isinstance(t, gs.Constant)), default=0)
        layer = by_node.get(id(n))
        if layer is not None:
            lv += 1
            waves.setdefault(lv, []).append(layer)
        for t in n.outputs:
            level[t.name] = lv
    return [waves[k] for k in sorted(waves)]


# ---------------------------------------------------------------------------------------------
# Streaming statistics
# ---------------------------------------------------------------------------------------------


class LayerStats:
    """Running sums of one layer's normal equations, per block (float64).

    ``x`` rows (``[rows, blocks, d]``) and optional targets ``y`` (``[rows, blocks, o]``):
    ``n``, ``sx [b, d]``, ``sxx [b, d, d]``, ``sy [b, o]``, ``sxy [b, d, o]``, ``syy [b]``.
    """

    def __init__(self, layer: Layer, x_name: str, y_name: str | None, positions: int) -> None:
        self.layer, self.x_name, self.y_name, self.positions = layer, x_name, y_name, positions
        self.n = 0
        self.sx = self.sxx = self.sy = self.sxy = self.syy = None
        self.seconds = 0.0

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in (("sx", self.sx), ("sxx", self.sxx), ("sy", self.sy), ("sxy", self.sxy),
                                  ("syy", self.syy)) if v is not None}

    def update(self, first: int, x: np.ndarray, y: np.ndarray | None, y_shape: tuple[int, ...]) -> None:
        t0 = time.perf_counter()
        layer = self.layer
        per, out_sp = layer.per_sample(x.shape, y_shape)
        n_idx, pos = sample_positions(first, x.shape[0], per, self.positions, layer.salt)
        xr = layer.x_rows(x, n_idx, pos, out_sp).astype(np.float64)
        rows, b, d = xr.shape
        if self.sx is None:
            self.sx, self.sxx = np.zeros((b, d)), np.zeros((b, d, d))
        self.n += rows
        self.sx += xr.sum(axis=0)
        yr = layer.y_rows(y, n_idx, pos).astype(np.float64) if y is not None else None
        if yr is not None and self.sy is None:
            o = yr.shape[2]
            self.sy, self.sxy, self.syy = np.zeros((b, o)), np.zeros((b, d, o)), np.zeros(b)
        if b == 1 or d > 32:
            for j in range(b):  # contiguous 2-D products: BLAS (syrk for xᵀx)
                xj = np.ascontiguousarray(xr[:, j, :])
                self.sxx[j] += xj.T @ xj
                if yr is not None:
                    self.sxy[j] += xj.T @ np.ascontiguousarray(yr[:, j, :])
        else:  # many small blocks (depthwise): one einsum
            self.sxx += np.einsum("rbi,rbj->bij", xr, xr)
            if yr is not None:
                self.sxy += np.einsum("rbi,rbo->bio", xr, yr)
        if yr is not None:
            self.sy += yr.sum(axis=0)
            self.syy += np.einsum("rbo,rbo->b", yr, yr)
        self.seconds += time.perf_counter() - t0


class MeanStats:
    """Exact means of one layer's input columns (every sample and output position) for the
    input channels/features ``channels`` (reference indices): ``sums [len(channels), K]``."""

    def __init__(self, layer: Layer, channels: np.ndarray) -> None:
        self.layer, self.channels = layer, np.asarray(channels, np.int64)
        self.sums = np.zeros((len(self.channels), layer.ksize if layer.op == "Conv" else 1))
        self.count = 0

    def update(self, x: np.ndarray, y_shape: tuple[int, ...]) -> None:
        layer = self.layer
        if layer.op == "Conv":
            out_sp = tuple(int(s) for s in y_shape[2:])
            self.sums += conv_column_sums(x, layer, self.channels, out_sp)
            self.count += x.shape[0] * int(np.prod(out_sp))
        else:
            f = x.shape[-1]
            rows = x.reshape(-1, f)
            self.sums[:, 0] += rows[:, self.channels].sum(axis=0, dtype=np.float64)
            self.count += rows.shape[0]

    def means(self) -> np.ndarray:
        return self.sums / max(self.count, 1)


class ChannelMoments:
    """Per-channel mean and (population) variance of ``tensor`` along ``axis``, merged batch by
    batch with Chan's parallel formula (an accumulator for :class:`~npcompile.runtime.calibrate.Calibrator`)."""

    def __init__(self, tensor: str, axis: int = 1) -> None:
        self.tensor, self.axis = tensor, axis
        self.tensors = (tensor,)
        self.count = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None

    def update(self, values: dict[str, np.ndarray]) -> None:
        x = values[self.tensor]
        a = np.moveaxis(x, self.axis, 0).reshape(x.shape[self.axis], -1).astype(np.float64)
        m = a.shape[1]
        if m == 0:
            return
        mean_b = a.mean(axis=1)
        m2_b = ((a - mean_b[:, None]) ** 2).sum(axis=1)
        if self.mean is None:
            self.count, self.mean, self.m2 = m, mean_b, m2_b
            return
        n = self.count + m
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (m / n)
        self.m2 = self.m2 + m2_b + delta**2 * (self.count * m / n)
        self.count = n

    @property
    def var(self) -> np.ndarray:
        return self.m2 / max(self.count, 1)


def stream(dataset: Dataset, batch_size: int, sessions: Sequence[tuple[Any, Sequence[str]]],
           fn: Callable[[int, list[dict[str, np.ndarray]]], None]) -> tuple[int, list[float]]:
    """Run every batch of ``dataset`` through each ``(calibrator, tensors)`` (a
    :class:`~npcompile.runtime.calibrate.Calibrator` exposing them) and call ``fn(first, values)`` with
    the index of the batch's first sample and one dict of tensors per session. Only one batch of
    activations is held at a time. Returns (samples, seconds spent in each session)."""
    streams = [TensorStream(cal.session, cal.inputs) for cal, _ in sessions]
    first = 0
    for batch in batches(dataset, batch_size):
        values = [ts.run(names, batch.feeds) for ts, (_, names) in zip(streams, sessions, strict=True)]
        fn(batch.first, values)
        first += batch.size
    return first, [ts.seconds for ts in streams]


# ---------------------------------------------------------------------------------------------
# Solving
# ---------------------------------------------------------------------------------------------


def regularised(cxx: np.ndarray, ridge: float) -> np.ndarray:
    """``G + diag(λ)`` for Gram matrices ``[..., d, d]``: ``λ_i = ridge·(G_ii + 10⁻³·tr(G)/d)``,
    relative to each column's own second moment (so rescaling an input does not change its
    shrinkage) plus a small share of the mean diagonal (columns that never vary, such as removed
    or dead channels, stay solvable); at ``ridge=0`` a 10⁻⁹ share of the mean keeps it regular."""
    diag = np.diagonal(cxx, axis1=-2, axis2=-1)
    mean = diag.mean(axis=-1, keepdims=True)
    lam = ridge * diag + max(ridge, 1e-6) * 1e-3 * mean + 1e-30
    d = cxx.shape[-1]
    out = cxx.copy()
    idx = np.arange(d)
    out[..., idx, idx] += lam
    return out


def centered(stats: LayerStats, intercept: bool = True) -> tuple[np.ndarray, np.ndarray | None, np.ndarray,
                                                                 np.ndarray | None]:
    """(Cxx, Cxy, x̄, ȳ) per block; uncentered second moments when ``intercept`` is False."""
    n = max(stats.n, 1)
    xm = stats.sx / n
    cxx = stats.sxx / n
    ym = stats.sy / n if stats.sy is not None else None
    cxy = stats.sxy / n if stats.sxy is not None else None
    if intercept:
        cxx = cxx - xm[:, :, None] * xm[:, None, :]
        if cxy is not None:
            cxy = cxy - xm[:, :, None] * ym[:, None, :]
    return cxx, cxy, xm, ym


def _solve_spd(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.solve(a, b)
    except np.linalg.LinAlgError:
        return np.stack([np.linalg.lstsq(a[i], b[i], rcond=None)[0] for i in range(a.shape[0])])


def solve(stats: LayerStats, ridge: float, intercept: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Ridge least squares ``min ‖XW + 1βᵀ − Y‖² + n·Σ_i λ_i‖W_i‖²`` per block (λ: see
    :func:`regularised`; β unpenalised, zero without ``intercept``) from the streamed sums:
    returns ``W [b, d, o]`` and ``β [b, o]``."""
    cxx, cxy, xm, ym = centered(stats, intercept)
    w = _solve_spd(regularised(cxx, ridge), cxy)
    beta = ym - np.einsum("bdo,bd->bo", w, xm) if intercept else np.zeros_like(ym)
    return w, beta


def errors(stats: LayerStats, w: np.ndarray, beta: np.ndarray | None = None) -> float:
    """``Σ‖y − Wᵀx − β‖²`` over the streamed rows, all blocks (from the sums alone)."""
    beta = np.zeros(stats.sy.shape) if beta is None else beta
    e = stats.syy.sum() - 2 * np.einsum("bdo,bdo->", w, stats.sxy) + np.einsum("bdo,bde,beo->", w, stats.sxx, w)
    resid = stats.sy - np.einsum("bdo,bd->bo", w, stats.sx)  # Σ(y − Wᵀx)
    e += -2 * np.einsum("bo,bo->", beta, resid) + stats.n * float((beta**2).sum())
    return max(float(e), 0.0)


def output_energy(stats: LayerStats, bias: np.ndarray) -> float:
    """``Σ‖y + b‖²``: the reference output's energy (``bias``: per block ``[b, o]``)."""
    return float(stats.syy.sum() + 2 * (bias * stats.sy).sum() + stats.n * (bias**2).sum())


# ---------------------------------------------------------------------------------------------
# Greedy reconstruction-aware selection
# ---------------------------------------------------------------------------------------------


def group_columns(analysis: ChannelAnalysis, group: Group, site: Site, ksize: int) -> dict[int, np.ndarray]:
    """Channel of ``group`` -> the columns of the consumer ``site`` that it feeds (positions of
    the weight's input axis times the kernel)."""
    lay = site.layout
    idx = np.arange(lay.size).reshape(lay.outer, lay.channels, lay.inner)
    out: dict[int, list[np.ndarray]] = {}
    off = 0
    for piece in lay.pieces:
        if piece.group is not None and analysis.find(piece.group) == group.id:
            for c in range(piece.start, piece.stop):
                pos = idx[:, off + c - piece.start, :].ravel()
                cols = (pos[:, None] * ksize + np.arange(ksize)[None, :]).ravel()
                out.setdefault(c, []).append(cols)
        off += len(piece)
    return {c: np.unique(np.concatenate(v)) for c, v in out.items()}


@dataclass
class _Consumer:
    h: np.ndarray  # inverse of the (ridged) Gram matrix over the kept columns (zeros elsewhere)
    w: np.ndarray  # current optimal weights over the kept columns
    cols: dict[int, np.ndarray]
    norm: float


def consumer_state(cxx: np.ndarray, w_ref: np.ndarray, ridge: float, cols: dict[int, np.ndarray]) -> _Consumer:
    """Start of the greedy for one consumer: the full (centered) Gram matrix ``cxx [d, d]`` and
    reference weights ``w_ref [d, o]`` (targets ``y = xᵀW_ref``)."""
    h = np.linalg.inv(regularised(cxx, ridge))
    h = (h + h.T) / 2
    w = h @ (cxx @ w_ref)
    norm = float(np.einsum("do,de,eo->", w_ref, cxx, w_ref))
    return _Consumer(h, w, cols, max(norm, 1e-30))


def _deltas(c: _Consumer, chans: Sequence[int]) -> np.ndarray:
    """Relative error increase of removing each of ``chans`` (alone) from consumer ``c``: the
    block-deletion formula ``tr(W_Iᵀ (H_II)⁻¹ W_I)`` with ``H`` the current inverse Gram matrix,
    batched over channels with the same number of columns."""
    out = np.zeros(len(chans))
    by_len: dict[int, list[int]] = {}
    for i, ch in enumerate(chans):
        cols = c.cols.get(ch)
        if cols is not None and len(cols):
            by_len.setdefault(len(cols), []).append(i)
    for idxs in by_len.values():
        idx = np.stack([c.cols[chans[i]] for i in idxs])  # [m, k]
        hs = c.h[idx[:, :, None], idx[:, None, :]]  # [m, k, k]
        ws = c.w[idx]  # [m, k, o]
        try:
            z = np.linalg.solve(hs, ws)
        except np.linalg.LinAlgError:
            z = np.stack([np.linalg.lstsq(h, w, rcond=None)[0] for h, w in zip(hs, ws, strict=True)])
        out[idxs] = (ws * z).sum(axis=(1, 2)) / c.norm
    return out


def _remove(c: _Consumer, cols: np.ndarray) -> None:
    hii = c.h[np.ix_(cols, cols)]
    try:
        inv = np.linalg.inv(hii)
    except np.linalg.LinAlgError:
        inv = np.linalg.pinv(hii)
    hi = c.h[:, cols]
    c.w -= hi @ (inv @ c.w[cols])
    c.h -= hi @ inv @ hi.T
    c.h[cols, :] = 0.0
    c.h[:, cols] = 0.0
    c.w[cols] = 0.0


def greedy_removal(size: int, blocks: int, per_block: int, consumers: Sequence[_Consumer],
                   forced: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Remove ``per_block`` channels from each of ``blocks`` equal blocks of a group of ``size``,
    one at a time, each time the channel whose removal least increases the sum over consumers of
    the relative least-squares error (with every kept column refit). Returns the mask and the
    predicted relative error increase. ``forced``: channels removed first (dead ones)."""
    mask = np.zeros(size, bool)
    bsize = size // blocks
    left = np.full(blocks, per_block)
    total = 0.0

    def take(ch: int) -> None:
        nonlocal total
        mask[ch] = True
        left[ch // bsize] -= 1
        for c in consumers:
            cols = c.cols.get(ch)
            if cols is not None and len(cols):
                total += float(_deltas(c, [ch])[0])
                _remove(c, cols)

    if forced is not None:
        for ch in np.flatnonzero(forced):
            if left[ch // bsize] > 0:
                take(int(ch))
    while left.sum() > 0:
        cand = [ch for ch in range(size) if not mask[ch] and left[ch // bsize] > 0]
        if not cand:
            break
        d = np.zeros(len(cand))
        for c in consumers:
            d += _deltas(c, cand)
        take(cand[int(np.argmin(d))])  # ties: the lowest index
    return mask, total


# ---------------------------------------------------------------------------------------------
# Writing refit weights into the graph
# ---------------------------------------------------------------------------------------------


class Names:
    """Fresh tensor names for a graph."""

    def __init__(self, graph: gs.Graph) -> None:
        self.used = set(graph.tensors().keys())

    def __call__(self, base: str) -> str:
        i = 0
        while f"{base}_npc_rec{i}" in self.used:
            i += 1
        name = f"{base}_npc_rec{i}"
        self.used.add(name)
        return name


def write_layer(graph: gs.Graph, layer: Layer, w: np.ndarray | None, beta: np.ndarray | None,
                names: Callable[[str], str] | None = None) -> None:
    """Set the (pruned) node's weights to ``w [b, d, o]`` (``None``: leave them) and add ``beta
    [b, o]`` (``None``: nothing) to its bias, creating one where it has none (a Conv bias, a Gemm
    ``C``, an ``Add`` after a MatMul)."""
    names = names or Names(graph)
    if w is not None:
        _write_weights(layer, w, names)
    if beta is not None and np.any(beta):
        _write_bias(graph, layer, beta, names)


def _write_weights(layer: Layer, w: np.ndarray, names: Callable[[str], str]) -> None:
    node = layer.node
    old = node.inputs[1]
    dtype = old.values.dtype
    if layer.op == "Conv":
        blocks, _, o = w.shape
        cin = old.values.shape[1]
        new_w = w.transpose(0, 2, 1).reshape(blocks * o, cin, *layer.kernel)
    else:
        m = w[0]
        if layer.op == "Gemm":
            m = m / layer.alpha
            new_w = m.T if layer.trans_b else m
        else:
            new_w = m
    node.inputs[1] = gs.Constant(names(old.name), np.ascontiguousarray(new_w.astype(dtype)))


def _write_bias(graph: gs.Graph, layer: Layer, beta: np.ndarray, names: Callable[[str], str]) -> None:
    node = layer.node
    dtype = node.inputs[1].values.dtype
    shift = beta.reshape(-1)
    kept_bias = layer.bias[layer.out_keep]
    if layer.op == "Conv":
        b = (kept_bias + shift).astype(dtype)
        const = gs.Constant(names(f"{layer.name}_bias"), b)
        if len(node.inputs) > 2:
            node.inputs[2] = const
        else:
            node.inputs.append(const)
    elif layer.op == "Gemm":
        const = gs.Constant(names(f"{layer.name}_C"), (kept_bias + shift).astype(dtype))
        if len(node.inputs) > 2:
            node.inputs[2] = const
        else:
            node.inputs.append(const)
        node.attrs["beta"] = 1.0
    else:
        _matmul_bias(graph, layer, shift.astype(dtype), names)


def _matmul_bias(graph: gs.Graph, layer: Layer, shift: np.ndarray, names: Callable[[str], str]) -> None:
    node = layer.node
    out = node.outputs[0]
    users = list(out.outputs)
    if len(users) == 1 and users[0].op == "Add" and out not in graph.outputs:
        add = users[0]
        other = [i for i, t in enumerate(add.inputs) if t is not out]
        if len(other) == 1 and isinstance(add.inputs[other[0]], gs.Constant):
            c = add.inputs[other[0]]
            cv = c.values
            n = shift.shape[0]
            if cv.size == n and cv.shape[-1] == n:
                add.inputs[other[0]] = gs.Constant(names(c.name), (cv + shift.reshape(cv.shape)).astype(cv.dtype))
                return
            if cv.size == 1 and cv.ndim <= 1:
                add.inputs[other[0]] = gs.Constant(names(c.name), (cv.reshape(-1) + shift).astype(cv.dtype))
                return
    mid = gs.Variable(names(f"{out.name}_mm"), dtype=out.dtype)
    node.outputs[0] = mid
    add = gs.Node("Add", name=names(f"{layer.name}_bias"), inputs=[mid, gs.Constant(names(f"{layer.name}_b"), shift)],
                  outputs=[out])
    graph.nodes.append(add)


def bn_nodes(graph: gs.Graph, names: Iterable[str] | None = None) -> list[gs.Node]:
    """BatchNormalization nodes in inference mode with constant statistics."""
    want = None if names is None else set(names)
    out = []
    for n in graph.nodes:
        if n.op != "BatchNormalization" or len(n.inputs) < 5 or int(n.attrs.get("training_mode", 0)):
            continue
        if not all(isinstance(t, gs.Constant) for t in n.inputs[1:5]):
            continue
        if want is not None and n.name not in want and n.outputs[0].name not in want:
            continue
        out.append(n)
    return out
