"""Layers: what reconstruction refits, and their geometry.

A :class:`Layer` is one Conv (plain, grouped or depthwise), Gemm or MatMul with a constant weight
(:data:`LAYER_OPS`), seen as a linear map from *columns* (the ``C·K`` entries of a convolution
patch, or the features of a fully connected input) to outputs. :func:`layer_from_node` builds one
from a graph node; :func:`conv_patches` and :func:`conv_column_sums` take im2col columns, at the
output positions :func:`sample_positions` picks by a hash of each sample's index.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from npcompile.graph.weighted_ops import REFIT_OPS, WEIGHTED

__all__ = ["LAYER_OPS", "Layer", "layer_from_node", "bias_input", "set_bias_input", "sample_positions", "conv_patches",
           "conv_column_sums"]


#: ops whose weights can be refit (the weighted ops but ConvTranspose)
LAYER_OPS = REFIT_OPS


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


def bias_input(node: gs.Node) -> gs.Tensor | None:
    """The bias input of weighted ``node`` (Gemm's ``C``; the slot from the weighted-ops table),
    ``None`` when it has none."""
    slot = WEIGHTED[node.op].bias
    return node.inputs[slot] if slot is not None and len(node.inputs) > slot else None


def set_bias_input(node: gs.Node, const: gs.Constant) -> None:
    """Make ``const`` the bias input of weighted ``node``, in its slot (appended when missing)."""
    slot = WEIGHTED[node.op].bias
    if len(node.inputs) > slot:
        node.inputs[slot] = const
    else:
        node.inputs.append(const)


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
        b = bias_input(node)
        if b is not None and b.name and not isinstance(b, gs.Constant):
            skip = skip or f"{name} has a non-constant bias"
        bias = np.asarray(b.values, np.float64).reshape(-1) if isinstance(b, gs.Constant) else np.zeros(n_out)
    elif node.op == "Gemm":
        trans_b = bool(node.attrs.get("transB", 0))
        alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
        kw = {"trans_b": trans_b, "alpha": alpha}
        n_in, n_out = (w.shape[1], w.shape[0]) if trans_b else w.shape
        c = bias_input(node)
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
