"""Probe evaluation on a backend: many removals of one model, evaluated by workers.

A worker gets, once, the masked model (:mod:`npcompile.channels.masked`: one session evaluates any
removal by its mask feeds) and a shard of the evaluator (whole batches of the evaluation data, with
their labels or reference outputs); it builds its ONNX Runtime session on its first probe and
keeps it. A probe task carries only the mask feeds (a few kilobytes), never the model.

Each task returns the per-sample scores of its shard; the driver concatenates the shards in data
order and reduces them with the evaluator's own :meth:`~npcompile.runtime.evaluate.Evaluator.reduce`,
the same computation a single process does, so the metric is identical whatever the sharding and
the backend (correct counts are integers; metric sums are taken over the same array in the same
order). Several probes at once run one task each; a single probe, or fewer probes than workers, is
split over shards of the data so that every worker helps.

Evaluators that need the really pruned model (``module:function``), or a model whose masked session
could not be trusted, are evaluated in this process, probe after probe.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from npcompile.channels.analysis import ChannelAnalysis
from npcompile.channels.masked import RemovalEvaluator
from npcompile.execution import backend_of
from npcompile.execution.backend import Backend, Shared

__all__ = ["ProbeEvaluator", "MaskedSession", "ProbeTask", "run_probe", "probe_evaluator"]

log = logging.getLogger(__name__)


class MaskedSession:
    """The masked model as shared with the workers: serialized once; the session is made on the
    worker's first probe and kept (it is not pickled)."""

    def __init__(self, model: onnx.ModelProto, threads: int) -> None:
        self.data = model.SerializeToString()
        self.threads = threads
        self._session: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"data": self.data, "threads": self.threads, "_session": None}

    @property
    def session(self) -> Any:
        if self._session is None:
            from npcompile.runtime.verify import make_session

            self._session = make_session(self.data, self.threads)
        return self._session


class _FeedRunner:
    """``run(names, feeds)`` on the masked session with the probe's mask feeds added."""

    def __init__(self, session: Any, masks: dict[str, np.ndarray]) -> None:
        self.session, self.masks = session, masks

    def run(self, output_names: Sequence[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(output_names, {**feeds, **self.masks})


@dataclass
class ProbeTask:
    """One probe on one shard: handles of the masked model and of the evaluator shard, the masks."""

    model: Shared
    shard: Shared
    masks: dict[str, np.ndarray]


def run_probe(task: ProbeTask) -> np.ndarray:
    """Per-sample scores of the shard with the task's masks (runs on a worker)."""
    masked: MaskedSession = task.model.resolve()
    evaluator = task.shard.resolve()
    return np.asarray(evaluator.sample_scores(_FeedRunner(masked.session, task.masks)), np.float64)


class ProbeEvaluator(RemovalEvaluator):
    """A :class:`~npcompile.channels.masked.RemovalEvaluator` whose probes run on ``backend``:
    :meth:`many` evaluates independent removals at once; a single call shards the data."""

    def __init__(self, backend: Backend, model: onnx.ModelProto, analysis: ChannelAnalysis, evaluator: Any,
                 groups: Iterable[int] | None, probe: dict[str, tuple[int, ...]], threads: int = 0,
                 check_removal: Mapping[int, np.ndarray] | None = None) -> None:
        super().__init__(model, analysis, evaluator, groups, probe, threads, check_removal)
        self.backend = backend
        self._model_handle: Shared | None = None
        self._shards: dict[int, list[Shared]] = {}
        self.distributed = bool(backend.remote and self.fast and getattr(evaluator, "shardable", False))
        if backend.remote and not self.distributed:
            why = "needs the really pruned model" if not self.fast else "cannot be split over the data"
            log.info("the %s evaluator %s: its probes run in this process", getattr(evaluator, "name", "?"), why)

    @property
    def width(self) -> int:
        """How many probes are worth evaluating at once."""
        return self.backend.workers if self.distributed else 1

    def _handles(self, count: int) -> tuple[Shared, list[Shared]]:
        if self._model_handle is None:
            threads = self.backend.worker_threads(self.threads)
            self._model_handle = self.backend.share(MaskedSession(self.masked.model, threads))
        if count not in self._shards:
            shards = [self.evaluator] if count == 1 else [self.evaluator.shard(i, count) for i in range(count)]
            self._shards[count] = [self.backend.share(s) for s in shards]
        return self._model_handle, self._shards[count]

    def __call__(self, removal: Mapping[int, np.ndarray]) -> float:
        if not self.distributed:
            return super().__call__(removal)
        return self.many([removal])[0]

    def many(self, removals: Sequence[Mapping[int, np.ndarray]]) -> list[float]:
        """The metric of each removal (independent probes), in order."""
        if not self.distributed:
            return [self(r) for r in removals]
        if not removals:
            return []
        n = len(removals)
        count = 1 if n >= self.backend.workers else min(self.evaluator.num_batches,
                                                        math.ceil(self.backend.workers / n))
        model_h, shards = self._handles(count)
        tasks = [ProbeTask(model_h, s, self.masked.feeds(r)) for r in removals for s in shards]
        scores = self.backend.map(run_probe, tasks)
        self.evaluations += n
        self.evaluator.calls += n
        out = []
        for i in range(n):
            out.append(float(self.evaluator.reduce(np.concatenate(scores[i * count:(i + 1) * count]))))
        return out


def probe_evaluator(ctx: Any, evaluator: Any, groups: Iterable[int], threads: int = 0,
                    check_removal: Mapping[int, np.ndarray] | None = None) -> ProbeEvaluator:
    """The probe evaluator of a pipeline context's current model, on the context's backend."""
    return ProbeEvaluator(backend_of(ctx), ctx.model, ctx.analysis, evaluator, groups, dict(ctx.probe), threads,
                          check_removal)
