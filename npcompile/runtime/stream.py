"""The data stream: ``dataset -> batches -> ONNX Runtime session -> fetched tensors``.

Every loop that runs data through a session goes through here: calibration
(:meth:`npcompile.runtime.calibrate.Calibrator.run`), evaluation (the batches of
:mod:`npcompile.runtime.evaluate`), reconstruction (:func:`npcompile.recovery.reconstruction.stream`)
and the distillation teacher of ``passes/finetune.py``.

- :func:`batches`: consecutive batches of a :class:`~npcompile.runtime.data.Dataset`, each with the
  index of its first sample and its real size (optionally padded to a fixed batch dimension, the
  last sample repeated, and made contiguous).
- :func:`fetch`: one session run on one batch: the feeds the session takes, the tensors asked for
  (graph inputs among them are handed through from the feeds, not fetched).
- :class:`TensorStream`: a session with its inputs, streaming a data set batch by batch and
  counting the seconds spent inside ONNX Runtime.

The batch boundaries are those of :meth:`Dataset.batches` (``[i, i + batch_size)``), so every
accumulation downstream sees the same batches, in the same order, as before this module existed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from npcompile.runtime.data import Dataset

__all__ = ["Batch", "batches", "fetch", "TensorStream"]


@dataclass
class Batch:
    """One batch: ``feeds`` (input name -> array), ``labels`` (or ``None``), the index of its first
    sample in the data set and ``size``, its real number of samples (before any padding)."""

    first: int
    size: int
    feeds: dict[str, np.ndarray]
    labels: np.ndarray | None = None


def batches(dataset: Dataset, batch_size: int, *, pad_to: int | None = None,
            contiguous: bool = False) -> Iterator[Batch]:
    """Consecutive batches of ``batch_size`` samples of ``dataset`` (the last one may be smaller).
    ``pad_to``: repeat the last sample until a smaller batch has that many (a model with a fixed
    batch dimension); ``contiguous``: C-contiguous arrays."""
    first = 0
    for feeds, labels in dataset.batches(batch_size):
        real = next(iter(feeds.values())).shape[0]
        if pad_to is not None and real < pad_to:
            pad = pad_to - real
            feeds = {k: np.concatenate([v, np.repeat(v[-1:], pad, axis=0)]) for k, v in feeds.items()}
        if contiguous:
            feeds = {k: np.ascontiguousarray(v) for k, v in feeds.items()}
        yield Batch(first, real, feeds, labels)
        first += real


def fetch(session: Any, names: Sequence[str], feeds: Mapping[str, np.ndarray],
          inputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Run ``session`` once and return ``names`` -> array. ``inputs``: the session's inputs (the
    feeds it is given; names among them are handed through from ``feeds``, not fetched);
    ``None``: every feed is an input and every name an output."""
    if inputs is None:
        names = list(dict.fromkeys(names))
        return dict(zip(names, session.run(names, dict(feeds)), strict=True)) if names else {}
    wanted = [t for t in dict.fromkeys(names) if t not in inputs]
    f = {k: feeds[k] for k in inputs}
    got = dict(zip(wanted, session.run(wanted, f), strict=True)) if wanted else {}
    for t in names:
        if t in inputs:
            got[t] = feeds[t]
    return got


class TensorStream:
    """An ONNX Runtime ``session`` (anything with its ``run``) and its ``inputs``: the tensors
    ``names`` of every batch of a data set (:meth:`run`, :meth:`each`). ``seconds`` adds up the
    time spent inside the session."""

    def __init__(self, session: Any, inputs: Sequence[str]) -> None:
        self.session = session
        self.inputs = list(inputs)
        self.seconds = 0.0

    def run(self, names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The tensors ``names`` for one batch of ``feeds`` (see :func:`fetch`)."""
        t0 = time.perf_counter()
        try:
            return fetch(self.session, names, feeds, self.inputs)
        finally:
            self.seconds += time.perf_counter() - t0

    def each(self, dataset: Dataset, batch_size: int,
             names: Sequence[str]) -> Iterator[tuple[Batch, dict[str, np.ndarray]]]:
        """Every batch of ``dataset`` with its tensors ``names``, one batch at a time."""
        for batch in batches(dataset, batch_size):
            yield batch, self.run(names, batch.feeds)
