"""Helpers for testing compiled models: planting dead channels in a model; an evaluator whose
worker process dies once (fault tests of :mod:`npcompile.execution`)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import onnx

from npcompile.channels.analysis import analyze
from npcompile.graph.model_io import to_graph, to_model
from npcompile.graph.shapes import static_shapes

__all__ = ["plant_dead_channels", "CrashOnceEvaluator"]


def plant_dead_channels(model: onnx.ModelProto, probe: dict[str, tuple[int, ...]], fraction: float = 0.25,
                        seed: int = 0) -> tuple[onnx.ModelProto, int]:
    """Zero every producing weight and per-channel parameter of ``fraction`` of the channels of
    every prunable group. Returns the new model and the number of weights zeroed that removal
    of those channels should take out (the channels' out and param sites)."""
    rng = np.random.default_rng(seed)
    graph = to_graph(model)
    graph.toposort()
    analysis = analyze(graph, static_shapes(model, probe))
    planted = 0
    for group in analysis.prunable_groups():
        size = group.size // group.blocks
        n = int(size * fraction)
        if n == 0:
            continue
        chosen = np.zeros((group.blocks, size), bool)
        for block in chosen:  # grouped convolutions: the same count in every block
            block[rng.choice(size, n, replace=False)] = True
        chosen = chosen.ravel()
        # a maxout unit is zero when its neurons are: plant those too (closed under unit links)
        removed = analysis.close_removal({group.id: chosen})
        if any(analysis.group(g).frozen for g in removed):
            continue
        for gid in removed:
            for site in analysis.group(gid).sites:
                if site.role == "in" or (site.node.op == "Div" and site.index == 1):
                    continue  # consumers keep their weights; a divisor stays non-zero
                const = site.node.inputs[site.index]
                values = np.array(const.values)
                keep = site.layout.keep_positions(removed, analysis.find)
                width = values.shape[site.axis]
                # a blocked site (grouped convolutions): rows fall into blocks, block g holds window g
                rows = values.reshape(site.blocks, -1, *values.shape[1:]) if site.blocks > 1 else values[None]
                for g in range(site.blocks):
                    local = keep[(keep >= g * width) & (keep < (g + 1) * width)] - g * width
                    drop = np.setdiff1d(np.arange(width), local)
                    index = [g] + [slice(None)] * values.ndim
                    index[1 + site.axis] = drop
                    planted += int(np.count_nonzero(rows[tuple(index)]))
                    rows[tuple(index)] = 0
                const.values = rows.reshape(values.shape)
    return to_model(graph, model), planted


class CrashOnceEvaluator:
    """Wraps a shardable evaluator; the first worker process to evaluate a probe creates
    ``marker`` and dies on the spot (``os._exit``), as a killed worker does. Every later probe,
    and the retried one, is evaluated by the wrapped evaluator."""

    needs_model = False

    def __init__(self, inner: Any, marker: str) -> None:
        self.inner, self.marker = inner, str(marker)

    def __getattr__(self, name: str) -> Any:  # name, unit, calls, num_batches, reduce, describe...
        if name in ("inner", "marker"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def shardable(self) -> bool:
        return True

    def shard(self, index: int, count: int) -> CrashOnceEvaluator:
        return CrashOnceEvaluator(self.inner.shard(index, count), self.marker)

    def sample_scores(self, runner: Any) -> np.ndarray:
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return self.inner.sample_scores(runner)
        os.close(fd)
        os._exit(1)

    def evaluate(self, target: Any) -> float:
        return self.inner.evaluate(target)
