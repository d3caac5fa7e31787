"""Masked models: evaluate many channel removals with one ONNX Runtime session.

Deleting a channel means deleting it wherever it is *consumed*: every weight that reads it (the
``in`` sites of its group: Conv, ConvTranspose, Gemm and MatMul inputs) stops seeing it, and
everything that only produced it becomes unused. Multiplying the consumer's data input by 0 at
that channel does exactly the same to the network's outputs. A :class:`MaskedModel` is the
original graph with a ``Mul`` by a new graph input (a 0/1 mask broadcast along the channel axis)
in front of every consumer that reads a maskable group, so one session evaluates any removal by
changing the mask feeds; nothing is rebuilt between evaluations.

Masks are built from group removal masks with the consumer's :class:`~npcompile.channels.layout.Layout`
(concatenations, flattens into fully connected layers and repeats are handled the way the rewrite
handles them). Channels of frozen groups are never masked. The equivalence rests on the channel
analysis: a rule that let one channel influence another outside a consumer weight would break it,
so :meth:`MaskedModel.max_rel_diff` compares against a really pruned model, and the selection
passes run that check once before they trust the fast path.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from npcompile.channels.analysis import ChannelAnalysis, Site
from npcompile.channels.layout import Layout
from npcompile.graph.model_io import to_model
from npcompile.graph.weighted_ops import WEIGHTED_OPS
from npcompile.rules.quant import site_consumer, site_values

__all__ = ["MaskedModel", "MaskedRunner", "MaskInput", "RemovalEvaluator", "prune_copy", "CONSUMER_OPS", "NotMaskable"]

log = logging.getLogger(__name__)

#: ops whose ``in`` sites read the group's channels on data input 0
CONSUMER_OPS = WEIGHTED_OPS


class NotMaskable(ValueError):
    """A consumer whose input cannot be masked by a multiplication (an integer op)."""


@dataclass
class MaskInput:
    """One mask graph input: multiplies ``tensor`` (channel layout ``layout``) before its consumers."""

    name: str
    tensor: str
    layout: Layout
    shape: tuple[int, ...]
    dtype: np.dtype
    consumers: list[str] = field(default_factory=list)
    #: group id -> (channel index per masked position, position in the axis)
    positions: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    #: an ``Add`` of a very negative number in front of a maximum (maxout neurons) instead of a
    #: ``Mul`` by 0
    additive: bool = False

    def values(self, removal: Mapping[int, np.ndarray]) -> np.ndarray:
        if self.additive:
            mask = np.zeros(self.layout.size, self.dtype)
            fill = -float(np.finfo(self.dtype).max) / 8
        else:
            mask = np.ones(self.layout.size, self.dtype)
            fill = 0.0
        for gid, (channel, pos) in self.positions.items():
            removed = removal.get(gid)
            if removed is not None:
                mask[pos[removed[channel]]] = fill
        return mask.reshape(self.shape)


def _trailing_ones(site: Site) -> int:
    """How many axes follow the channel axis of the consumer's data input."""
    if site_consumer(site)[0].op in ("Conv", "ConvTranspose"):
        return site.node.inputs[site.index].values.ndim - 2  # the weight (its int8 tensor in a QDQ model)
    return 0  # Gemm (axis 1 of 2) and MatMul (last axis)


def _positions(layout: Layout, find, maskable: set[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    idx = np.arange(layout.size).reshape(layout.outer, layout.channels, layout.inner)
    parts: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    off = 0
    for piece in layout.pieces:
        n = len(piece)
        if piece.group is not None and find(piece.group) in maskable:
            pos = idx[:, off : off + n, :]
            channel = np.broadcast_to(np.arange(piece.start, piece.stop)[None, :, None], pos.shape)
            parts.setdefault(find(piece.group), []).append((channel.ravel(), pos.ravel()))
        off += n
    return {g: (np.concatenate([c for c, _ in ps]), np.concatenate([p for _, p in ps])) for g, ps in parts.items()}


class MaskedModel:
    """The graph ``analysis`` describes (its ``model``), with channel masks as extra inputs.

    ``groups`` limits masking to those groups (default: every prunable group); fewer masks make a
    faster session. ``probe`` (input shapes) is only needed by :meth:`pruned_model`; by default it
    comes from the analysis' static shapes.
    """

    def __init__(self, model: onnx.ModelProto, analysis: ChannelAnalysis, groups: Iterable[int] | None = None,
                 threads: int = 0, probe: dict[str, tuple[int, ...]] | None = None) -> None:
        self.original = model
        self.analysis = analysis
        self.threads = threads
        find = analysis.find
        prunable = {g.id for g in analysis.prunable_groups()}
        if groups is None:
            self.groups = prunable
        else:
            wanted = {find(g) for g in groups}
            bad = wanted - prunable
            if bad:
                names = ", ".join(analysis.group(g).name for g in sorted(bad))
                raise ValueError(f"cannot mask frozen or single-channel group(s): {names}")
            self.groups = wanted
        #: the masked groups and the groups their units remove (neurons of locked links: the
        #: query heads of a key/value head), whose consumers are masked too
        self.maskable = analysis.locked_under(self.groups)
        self.probe = probe if probe is not None else {
            t.name: tuple(analysis.shapes[t.name]) for t in analysis.graph.inputs if t.name in analysis.shapes}
        self.masks: list[MaskInput] = []
        self.model = self._build(model)
        self._session: Any = None
        log.debug("masked model: %d mask inputs over %d groups", len(self.masks), len(self.groups))

    @classmethod
    def from_context(cls, ctx: Any, groups: Iterable[int] | None = None, threads: int = 0) -> MaskedModel:
        """The masked model of a pipeline :class:`~npcompile.pipeline.Context`'s current model."""
        return cls(ctx.model, ctx.analysis, groups, threads, dict(ctx.probe))

    # -- building ---------------------------------------------------------------------------
    def _build(self, template: onnx.ModelProto) -> onnx.ModelProto:
        analysis, find = self.analysis, self.analysis.find
        graph = analysis.graph
        index = {id(n): i for i, n in enumerate(graph.nodes)}
        seen: set[int] = set()
        by_key: dict[tuple[str, Layout, int], tuple[MaskInput, list[int]]] = {}
        for group in analysis.groups:
            for site in group.sites:
                if site.role != "in" or id(site) in seen:
                    continue
                seen.add(id(site))
                if not (site.layout.groups(find) & self.maskable):
                    continue
                consumer, _ = site_consumer(site)  # the Conv/Gemm/MatMul reading a quantized weight
                if consumer.op not in CONSUMER_OPS or id(consumer) not in index:
                    raise NotMaskable(f"cannot mask the input of {consumer.op} {consumer.name}")
                data = consumer.inputs[0]
                trailing = _trailing_ones(site)
                key = (data.name, site.layout, trailing)
                if key not in by_key:
                    name = f"npc_mask_{len(by_key)}"
                    shape = (site.layout.size, *([1] * trailing))
                    dtype = np.dtype(site_values(site).dtype)
                    mi = MaskInput(name, data.name, site.layout, shape, dtype,
                                   positions=_positions(site.layout, find, self.maskable))
                    by_key[key] = (mi, [])
                mi, nodes = by_key[key]
                if index[id(consumer)] not in nodes:
                    nodes.append(index[id(consumer)])
                    mi.consumers.append(consumer.name)
        for mi, node in self._maxout_masks(index):
            by_key[(mi.tensor, mi.layout, -1 - len(by_key))] = (mi, [node])
        copy = graph.copy()
        for mi, nodes in by_key.values():
            data = copy.nodes[nodes[0]].inputs[0]
            mask = gs.Variable(mi.name, dtype=mi.dtype, shape=list(mi.shape))
            out = gs.Variable(f"{data.name}_npc_masked_{mi.name}", dtype=mi.dtype)
            op = "Add" if mi.additive else "Mul"
            copy.nodes.append(gs.Node(op, name=f"npc_mask_{op.lower()}_{mi.name}", inputs=[data, mask], outputs=[out]))
            copy.inputs.append(mask)
            for i in nodes:
                node = copy.nodes[i]
                assert node.inputs[0] is data, (node.name, data.name)
                node.inputs[0] = out
            self.masks.append(mi)
        return to_model(copy, template)

    def _maxout_masks(self, index: dict[int, int]) -> list[tuple[MaskInput, int]]:
        """Maxout neurons (:class:`~npcompile.channels.analysis.UnitLink`): a removed neuron must lose every
        maximum of its unit, so the maximum's input gets a very negative number added there."""
        analysis, find = self.analysis, self.analysis.find
        out: list[tuple[MaskInput, int]] = []
        for lk in getattr(analysis, "maxout_links", []):
            neurons = find(lk.neurons)
            if neurons not in self.groups:
                continue
            node = next((n for n in analysis.graph.nodes if n.name == lk.node and n.inputs
                         and n.inputs[0].name == lk.tensor), None)
            rank = analysis.rank(node.inputs[0]) if node is not None else None
            outs = analysis.group(neurons).sites_of("out")
            if node is None or rank is None or not outs:
                raise ValueError(f"cannot mask the neurons of maxout {lk.node}")
            layout = Layout.of_group(neurons, analysis.group(neurons).size)
            dtype = np.dtype(site_values(outs[0]).dtype)
            name = f"npc_maxout_mask_{len(out)}"
            mi = MaskInput(name, lk.tensor, layout, (layout.size, *([1] * (rank - 1 - lk.axis))), dtype,
                           [node.name], _positions(layout, find, self.groups), additive=True)
            out.append((mi, index[id(node)]))
        return out

    # -- running ----------------------------------------------------------------------------
    @property
    def session(self) -> Any:
        """One ONNX Runtime session of the masked model (made on first use)."""
        if self._session is None:
            from npcompile.runtime.verify import make_session

            self._session = make_session(self.model, self.threads)
        return self._session

    def _check(self, removal: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
        find = self.analysis.find
        asked = {find(g) for g, m in removal.items() if np.asarray(m).any()}
        close = getattr(self.analysis, "close_removal", None)
        closed = close(dict(removal)) if close is not None else removal
        out: dict[int, np.ndarray] = {}
        for gid, mask in closed.items():
            root = find(gid)
            mask = np.asarray(mask, bool)
            if not mask.any():
                continue
            if root not in self.maskable:
                if root not in asked:
                    continue  # neurons of removed maxout units: their consumers are masked already
                raise ValueError(f"group {self.analysis.group(root).name} is not masked in this model")
            size = self.analysis.group(root).size
            if mask.shape != (size,):
                raise ValueError(f"group {self.analysis.group(root).name}: mask of {mask.shape} for {size} channels")
            out[root] = mask
        return out

    def feeds(self, removal: Mapping[int, np.ndarray]) -> dict[str, np.ndarray]:
        """The mask feeds that remove ``removal[group] == True`` (group id -> boolean mask)."""
        removal = self._check(removal)
        return {mi.name: mi.values(removal) for mi in self.masks}

    def run(self, inputs: dict[str, np.ndarray], removal: Mapping[int, np.ndarray],
            output_names: Sequence[str] | None = None) -> list[np.ndarray]:
        """Outputs of the model with ``removal`` applied, on ``inputs``."""
        return self.session.run(output_names, {**inputs, **self.feeds(removal)})

    def runner(self, removal: Mapping[int, np.ndarray]) -> MaskedRunner:
        """A session-like object (``run(None, feeds)``) that applies ``removal``."""
        return MaskedRunner(self, removal)

    # -- the real thing ---------------------------------------------------------------------
    def pruned_model(self, removal: Mapping[int, np.ndarray]) -> onnx.ModelProto:
        """The model with ``removal`` really deleted (see :func:`prune_copy`)."""
        return prune_copy(self.original, self.analysis, removal, self.probe)

    def max_rel_diff(self, removal: Mapping[int, np.ndarray], inputs: dict[str, np.ndarray]) -> float:
        """Largest relative output difference, on ``inputs``, between this masked model and the
        really pruned model for ``removal`` (0 when the fast path is exact)."""
        from npcompile.runtime.verify import make_session

        got = self.run(inputs, removal)
        # an unoptimised session: made in a fraction of the time, and what it computes is the reference
        ref = make_session(self.pruned_model(removal), self.threads, optimize=False).run(None, inputs)
        worst = 0.0
        for a, b in zip(ref, got, strict=True):
            a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
            if a64.shape != b64.shape:
                return float("inf")
            if a64.size:
                worst = max(worst, float(np.max(np.abs(a64 - b64))) / max(float(np.max(np.abs(a64))), 1e-12))
        return worst


class MaskedRunner:
    """Runs a :class:`MaskedModel` with one removal: ``run(output_names, feeds)`` adds the mask
    feeds; ``model`` is the really pruned model (built on first use, for evaluators that need one)."""

    def __init__(self, masked: MaskedModel, removal: Mapping[int, np.ndarray]) -> None:
        self.masked = masked
        self.removal = dict(removal)
        self._feeds = masked.feeds(removal)
        self._model: onnx.ModelProto | None = None

    def run(self, output_names: Sequence[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.masked.session.run(output_names, {**feeds, **self._feeds})

    @property
    def model(self) -> onnx.ModelProto:
        if self._model is None:
            self._model = self.masked.pruned_model(self.removal)
        return self._model


def prune_copy(model: onnx.ModelProto, analysis: ChannelAnalysis, removal: Mapping[int, np.ndarray],
               probe: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """``model`` with ``removal`` (group ids of ``analysis``, which describes ``model``) deleted,
    leaving ``model`` and ``analysis`` untouched: a fresh analysis of the same model gives the same
    group ids, and the removal is applied to that."""
    from npcompile.channels.rewrite import apply_removal
    from npcompile.pipeline import Context

    ctx = Context(model, probe)
    fresh = ctx.analysis
    for gid in removal:
        a, b = analysis.group(gid), fresh.group(gid)
        if (a.name, a.size) != (b.name, b.size):
            raise RuntimeError(f"group {gid} differs between analyses ({a.name} vs {b.name})")
    if any(np.asarray(m).any() for m in removal.values()):
        apply_removal(ctx.graph, fresh, dict(removal))
        ctx.set_graph(ctx.graph)
    return ctx.model


class RemovalEvaluator:
    """Evaluate removals of one model with an evaluator (anything with ``evaluate(runner)`` and a
    ``needs_model`` flag), counting evaluations.

    The fast path runs the :class:`MaskedModel` of ``groups``: one session for every removal.
    Before it is trusted, its outputs for ``check_removal`` (when given) are compared once with
    those of the really pruned model on random probe inputs; if they differ by more than 1e-4
    (relative), every evaluation prunes a copy of the model instead, with a warning. Evaluators
    that need a model (``needs_model``) get the really pruned model.
    """

    def __init__(self, model: onnx.ModelProto, analysis: ChannelAnalysis, evaluator: Any,
                 groups: Iterable[int] | None, probe: dict[str, tuple[int, ...]], threads: int = 0,
                 check_removal: Mapping[int, np.ndarray] | None = None) -> None:
        self.evaluator = evaluator
        self.model, self.analysis, self.probe, self.threads = model, analysis, probe, threads
        self.groups = None if groups is None else [analysis.find(g) for g in groups]
        self.evaluations = 0
        self.exact: bool | None = None
        self.check_diff: float | None = None
        self._masked: MaskedModel | None = None
        self.needs_model = bool(getattr(evaluator, "needs_model", False))
        if check_removal and self.fast:
            from npcompile.runtime.verify import probe_inputs

            feeds = probe_inputs(model, probe, batch=2, seed=0)
            self.check_diff = self.masked.max_rel_diff(check_removal, feeds)
            self.exact = self.check_diff <= 1e-4
            if not self.exact:
                log.warning("masked evaluation differs from real pruning by %.3g (relative); evaluating "
                            "really pruned models instead (slower)", self.check_diff)

    @property
    def masked(self) -> MaskedModel:
        """The masked model (made on first use)."""
        if self._masked is None:
            self._masked = MaskedModel(self.model, self.analysis, self.groups, self.threads, self.probe)
        return self._masked

    @property
    def fast(self) -> bool:
        """Whether evaluations run on the masked session (not when a consumer cannot be masked)."""
        if self.exact is not False and not self.needs_model and self._masked is None:
            try:
                _ = self.masked
            except NotMaskable as e:
                log.warning("%s; evaluating really pruned models instead (slower)", e)
                self.exact = False
        return self.exact is not False and not self.needs_model

    def __call__(self, removal: Mapping[int, np.ndarray]) -> float:
        """The evaluator's metric for ``removal`` (group id -> boolean mask)."""
        self.evaluations += 1
        if not self.fast:
            return float(self.evaluator.evaluate(prune_copy(self.model, self.analysis, removal, self.probe)))
        return float(self.evaluator.evaluate(self.masked.runner(removal)))

    def many(self, removals: Sequence[Mapping[int, np.ndarray]]) -> list[float]:
        """The metric of each removal (independent probes, here one after the other; a
        :class:`~npcompile.execution.probes.ProbeEvaluator` runs them on a backend)."""
        return [self(r) for r in removals]
