"""Evaluators: one number that says how good a (pruned) model is; higher is better.

An evaluator runs a model over evaluation data and returns a float. What it runs is a *runner*:
anything with ``run(output_names, feeds)`` like an ONNX Runtime ``InferenceSession`` (selection
passes hand it the masked model of :mod:`npcompile.channels.masked`, which adds its mask feeds), or an
``onnx.ModelProto`` (a session is made for it).

- :class:`AccuracyEvaluator`: top-k accuracy against labels, in percent.
- :class:`FidelityEvaluator`: agreement with the original model's outputs (computed once) when
  there are no labels: ``top1`` (percent of samples whose arg-max class is unchanged), ``cosine``
  (mean per-sample cosine similarity, in [-1, 1]) or ``neg_mse`` (minus the mean squared error).
- :class:`~npcompile.runtime.verification.VerificationEvaluator` (``verification``): pair
  verification accuracy of an embedding output (cosine similarity, a threshold chosen on
  validation pairs; EER beside it), from a pairs file (format in :mod:`npcompile.runtime.verification`).
- :class:`CallableEvaluator`: a user function ``module:function`` (or ``path/to/file.py:function``)
  given the pruned ``onnx.ModelProto``, returning a float.

:func:`make_evaluator` builds one by kind. Evaluation data is split into batches once, when the
evaluator is made; every evaluation reuses them.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import onnx

from npcompile.errors import UserError
from npcompile.graph.shapes import input_specs
from npcompile.runtime.data import Dataset
from npcompile.runtime.stream import batches

__all__ = [
    "Runner",
    "Evaluator",
    "AccuracyEvaluator",
    "FidelityEvaluator",
    "CallableEvaluator",
    "FIDELITY_KINDS",
    "KINDS",
    "make_evaluator",
    "model_outputs",
    "model_batch_size",
]

log = logging.getLogger(__name__)

FIDELITY_KINDS = ("top1", "cosine", "neg_mse")
#: kinds :func:`make_evaluator` knows (a ``module:function`` spec is a callable evaluator too)
KINDS = ("auto", "accuracy", *FIDELITY_KINDS, "verification", "callable")


class Runner(Protocol):
    """What evaluators run: an ONNX Runtime session or anything with the same ``run``."""

    def run(self, output_names: Sequence[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


def _session(model: onnx.ModelProto, threads: int = 0) -> Any:
    from npcompile.runtime.verify import make_session

    return make_session(model, threads)


class _Batches:
    """Evaluation data split into batches once; a fixed batch dimension pads the last batch."""

    def __init__(self, dataset: Dataset, batch_size: int, fixed_batch: bool = False) -> None:
        if batch_size < 1:
            raise UserError(f"evaluation batch size must be >= 1, got {batch_size}")
        if len(dataset) == 0:
            raise UserError("evaluation data holds no samples")
        self.n = len(dataset)
        self.feeds: list[dict[str, np.ndarray]] = []
        self.sizes: list[int] = []
        for batch in batches(dataset, batch_size, pad_to=batch_size if fixed_batch else None, contiguous=True):
            self.feeds.append(batch.feeds)
            self.sizes.append(batch.size)

    def subset(self, start: int, stop: int) -> _Batches:
        """Batches ``start:stop`` (the same batches, not re-split: each runs exactly as here)."""
        out = object.__new__(_Batches)
        out.feeds, out.sizes = self.feeds[start:stop], self.sizes[start:stop]
        out.n = int(sum(out.sizes))
        return out

    def sample_range(self, start: int, stop: int) -> tuple[int, int]:
        """The samples batches ``start:stop`` hold (first, one past the last)."""
        return int(sum(self.sizes[:start])), int(sum(self.sizes[:stop]))

    def outputs(self, runner: Runner, output: int | str) -> np.ndarray:
        """The selected output over the whole data set (concatenated batches)."""
        parts = []
        names = [output] if isinstance(output, str) else None
        for feeds, real in zip(self.feeds, self.sizes, strict=True):
            out = runner.run(names, feeds)
            if not isinstance(output, str) and not -len(out) <= output < len(out):
                raise UserError(f"evaluation output index {output} out of range: the model has {len(out)} "
                                "output(s)")
            parts.append(np.asarray(out[0 if names else output])[:real])
        return np.concatenate(parts) if len(parts) > 1 else parts[0]


def model_outputs(model: onnx.ModelProto | Runner, dataset: Dataset, output: int | str = 0,
                  batch_size: int = 256, threads: int = 0) -> np.ndarray:
    """Run ``model`` (a model or a runner) over ``dataset`` in batches; the selected output."""
    runner = _session(model, threads) if isinstance(model, onnx.ModelProto) else model
    fixed = model_batch_size(model) if isinstance(model, onnx.ModelProto) else None
    return _Batches(dataset, fixed or batch_size, fixed is not None).outputs(runner, output)


def model_batch_size(model: onnx.ModelProto) -> int | None:
    """The fixed batch size of ``model``'s first input, or ``None`` when it is dynamic."""
    specs = input_specs(model)
    if not specs:
        return None
    dims = specs[0].type.tensor_type.shape.dim
    if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
        return int(dims[0].dim_value)
    return None


class Evaluator:
    """Base class: ``evaluate(runner_or_model) -> float``, higher is better.

    ``name`` says which evaluator ran (for the report), ``unit`` the unit of its figures
    (``"%"`` or ``""``); :meth:`describe` gives both and the evaluator's settings.
    """

    kind: ClassVar[str] = ""
    unit: ClassVar[str] = ""
    #: True when the evaluator needs a real (pruned) ``onnx.ModelProto``, not just a runner
    needs_model: ClassVar[bool] = False

    def __init__(self, threads: int = 0) -> None:
        self.threads = threads
        self.calls = 0

    @property
    def name(self) -> str:
        return self.kind

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "unit": self.unit}

    def evaluate(self, target: Runner | onnx.ModelProto) -> float:
        """The metric of ``target``: a runner (``run(None, feeds)``) or a model."""
        runner = _session(target, self.threads) if isinstance(target, onnx.ModelProto) else target
        self.calls += 1
        value = float(self._evaluate(runner))
        log.debug("%s: %.6g", self.name, value)
        return value

    def _evaluate(self, runner: Runner) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- sharding: evaluators whose metric is a mean of per-sample scores ---------------------
    @property
    def shardable(self) -> bool:
        """Whether :meth:`shard`, :meth:`sample_scores` and :meth:`reduce` are available: the metric
        is a mean of per-sample scores, so shards of the data combine exactly."""
        return hasattr(self, "_batches")

    @property
    def num_batches(self) -> int:
        """Batches of the evaluation data (shards are made of whole batches)."""
        return len(self._batches.sizes)

    def sample_scores(self, runner: Runner) -> np.ndarray:  # pragma: no cover - abstract
        """Per-sample scores (float64, in data order) whose :meth:`reduce` is the metric."""
        raise NotImplementedError

    def reduce(self, scores: np.ndarray) -> float:  # pragma: no cover - abstract
        """The metric from the per-sample scores of the whole data set (concatenated shards)."""
        raise NotImplementedError

    def shard(self, index: int, count: int) -> Evaluator:
        """An evaluator over the ``index``-th of ``count`` contiguous runs of whole batches: the
        concatenation of every shard's :meth:`sample_scores`, in index order, equals this one's."""
        if not self.shardable:
            raise TypeError(f"{self.name} cannot be sharded")
        if not 0 <= index < count:
            raise ValueError(f"shard {index} of {count}")
        n = self.num_batches
        start, stop = index * n // count, (index + 1) * n // count
        lo, hi = self._batches.sample_range(start, stop)
        out = copy.copy(self)
        out._batches = self._batches.subset(start, stop)
        out._slice_samples(lo, hi)
        out.calls = 0
        return out

    def _slice_samples(self, lo: int, hi: int) -> None:
        """Keep the per-sample data (labels, references) of samples ``lo:hi`` (for :meth:`shard`)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


class AccuracyEvaluator(Evaluator):
    """Top-``top_k`` accuracy (percent) of output ``output`` (logits ``[N, classes]``) against the
    data set's labels."""

    kind = "accuracy"
    unit = "%"

    def __init__(self, dataset: Dataset, top_k: int = 1, batch_size: int = 256, output: int | str = 0,
                 fixed_batch: bool = False, threads: int = 0) -> None:
        super().__init__(threads)
        if dataset.labels is None:
            src = f" {dataset.source}" if dataset.source else ""
            raise UserError(f"accuracy needs labels: the evaluation data{src} has no 'labels' array")
        if top_k < 1:
            raise UserError(f"top-k must be >= 1, got {top_k}")
        labels = np.asarray(dataset.labels)
        if labels.size and int(labels.min()) < 0:
            raise UserError(f"evaluation labels must be >= 0, found {int(labels.min())}")
        self.labels = labels.astype(np.int64)
        self.top_k = top_k
        self.output = output
        self.samples = len(dataset)
        self._batches = _Batches(dataset, batch_size, fixed_batch)
        self._checked = False

    @property
    def name(self) -> str:
        return "accuracy" if self.top_k == 1 else f"top{self.top_k}-accuracy"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "top_k": self.top_k, "samples": self.samples}

    def _check(self, logits: np.ndarray) -> np.ndarray:
        if logits.ndim > 2 and all(d == 1 for d in logits.shape[2:]):
            logits = logits.reshape(logits.shape[0], logits.shape[1])
        if logits.ndim != 2:
            raise UserError(f"accuracy needs a [N, classes] output, the model gives shape {list(logits.shape)}")
        if not self._checked:
            classes = logits.shape[1]
            if self.labels.size and int(self.labels.max()) >= classes:
                raise UserError(f"evaluation label {int(self.labels.max())} is out of range: the model "
                                f"outputs {classes} classes")
            if self.top_k > classes:
                raise UserError(f"top-k {self.top_k} exceeds the model's {classes} classes")
            self._checked = True
        return logits

    def _evaluate(self, runner: Runner) -> float:
        return self.reduce(self.sample_scores(runner))

    def sample_scores(self, runner: Runner) -> np.ndarray:
        """1.0 where the label is among the top-k classes, else 0.0."""
        logits = self._check(self._batches.outputs(runner, self.output))
        if self.top_k == 1:
            hit = np.argmax(logits, axis=1) == self.labels
        else:
            top = np.argpartition(-logits, self.top_k - 1, axis=1)[:, : self.top_k]
            hit = (top == self.labels[:, None]).any(axis=1)
        return hit.astype(np.float64)

    def reduce(self, scores: np.ndarray) -> float:
        return 100.0 * float(np.mean(scores))

    def _slice_samples(self, lo: int, hi: int) -> None:
        self.labels = self.labels[lo:hi]
        self.samples = hi - lo


class FidelityEvaluator(Evaluator):
    """Fidelity to the original model's outputs ``reference_outputs`` (of output ``output`` over
    ``dataset``, computed once; see :meth:`from_model`)."""

    kind = "fidelity"

    def __init__(self, dataset: Dataset, reference_outputs: np.ndarray, kind: str = "top1",
                 batch_size: int = 256, output: int | str = 0, fixed_batch: bool = False,
                 threads: int = 0) -> None:
        super().__init__(threads)
        if kind not in FIDELITY_KINDS:
            raise UserError(f"unknown fidelity kind {kind!r}; use one of {', '.join(FIDELITY_KINDS)}")
        ref = np.asarray(reference_outputs)
        if ref.shape[0] != len(dataset):
            raise UserError(f"reference outputs hold {ref.shape[0]} samples, the evaluation data {len(dataset)}")
        if kind == "top1" and ref.ndim < 2:
            raise UserError(f"top-1 fidelity needs a [N, classes] output, got shape {list(ref.shape)}")
        self.fidelity = kind
        self.reference = ref.astype(np.float64)
        self.output = output
        self.samples = len(dataset)
        self._batches = _Batches(dataset, batch_size, fixed_batch)
        if kind == "top1":
            self._ref_top = np.argmax(self.reference.reshape(ref.shape[0], ref.shape[1], -1), axis=1)
        flat = self.reference.reshape(ref.shape[0], -1)
        self._ref_flat = flat
        self._ref_norm = np.linalg.norm(flat, axis=1)

    @classmethod
    def from_model(cls, dataset: Dataset, model: onnx.ModelProto | Runner, kind: str = "top1",
                   batch_size: int = 256, output: int | str = 0, threads: int = 0) -> FidelityEvaluator:
        """Compute the reference outputs once from the original ``model`` (or its session)."""
        fixed = model_batch_size(model) if isinstance(model, onnx.ModelProto) else None
        ref = model_outputs(model, dataset, output, fixed or batch_size, threads)
        return cls(dataset, ref, kind, fixed or batch_size, output, fixed is not None, threads)

    @property
    def unit(self) -> str:  # type: ignore[override]
        return "%" if self.fidelity == "top1" else ""

    @property
    def name(self) -> str:
        return f"fidelity-{self.fidelity}"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "fidelity": self.fidelity, "samples": self.samples}

    def _evaluate(self, runner: Runner) -> float:
        return self.reduce(self.sample_scores(runner))

    def sample_scores(self, runner: Runner) -> np.ndarray:
        """Per sample: 1.0 / 0.0 for an unchanged / changed top-1 class, the cosine, or minus the
        mean squared error."""
        out = self._batches.outputs(runner, self.output).astype(np.float64)
        if out.shape != self.reference.shape:
            raise UserError(f"output shape {list(out.shape)} differs from the original's "
                            f"{list(self.reference.shape)}")
        n = out.shape[0]
        if self.fidelity == "top1":
            top = np.argmax(out.reshape(n, out.shape[1], -1), axis=1)
            return (top == self._ref_top).mean(axis=1)
        flat = out.reshape(n, -1)
        if self.fidelity == "neg_mse":
            return -np.mean(np.square(flat - self._ref_flat), axis=1)
        norm = np.linalg.norm(flat, axis=1)
        both = norm * self._ref_norm
        dots = np.einsum("ij,ij->i", flat, self._ref_flat)
        # a zero output matches a zero reference exactly, and nothing else
        return np.where(both > 0, dots / np.where(both > 0, both, 1.0), ((norm == 0) & (self._ref_norm == 0)) * 1.0)

    def reduce(self, scores: np.ndarray) -> float:
        value = float(np.mean(scores))
        return 100.0 * value if self.fidelity == "top1" else value

    def _slice_samples(self, lo: int, hi: int) -> None:
        self.reference = self.reference[lo:hi]
        self._ref_flat, self._ref_norm = self._ref_flat[lo:hi], self._ref_norm[lo:hi]
        if self.fidelity == "top1":
            self._ref_top = self._ref_top[lo:hi]
        self.samples = hi - lo


def _load_callable(spec: str) -> Callable[[onnx.ModelProto], Any]:
    mod_name, sep, attr = spec.rpartition(":")
    if not sep or not mod_name or not attr:
        raise UserError(f"bad evaluator {spec!r}: expected module:function or path/to/file.py:function")
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name)
            if not path.is_file():
                raise UserError(f"evaluator {spec}: file {path} not found")
            mspec = importlib.util.spec_from_file_location(f"npcompile_user_eval_{path.stem}", path)
            if mspec is None or mspec.loader is None:
                raise UserError(f"evaluator {spec}: cannot import {path}")
            module = importlib.util.module_from_spec(mspec)
            mspec.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
    except UserError:
        raise
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else ""
        raise UserError(f"evaluator {spec}: cannot import {mod_name}: {type(e).__name__}: {msg}") from None
    if not hasattr(module, attr):
        raise UserError(f"evaluator {spec}: {mod_name} has no attribute {attr!r}")
    fn = getattr(module, attr)
    if not callable(fn):
        raise UserError(f"evaluator {spec}: {mod_name}.{attr} is not callable")
    return fn


class CallableEvaluator(Evaluator):
    """A user function ``module:function`` (or ``path/to/file.py:function``, or a callable) that
    takes the pruned ``onnx.ModelProto`` and returns a float, higher is better."""

    kind = "callable"
    needs_model = True

    def __init__(self, spec: str | Callable[[onnx.ModelProto], Any], threads: int = 0) -> None:
        super().__init__(threads)
        if callable(spec):
            self.spec = f"{getattr(spec, '__module__', '?')}:{getattr(spec, '__qualname__', repr(spec))}"
            self.fn = spec
        else:
            self.spec = str(spec)
            self.fn = _load_callable(self.spec)

    @property
    def name(self) -> str:
        return f"callable:{self.spec}"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "function": self.spec}

    def evaluate(self, target: Runner | onnx.ModelProto) -> float:
        if isinstance(target, onnx.ModelProto):
            model = target
        else:
            model = getattr(target, "model", None)
            if not isinstance(model, onnx.ModelProto):
                raise TypeError(f"{self.name} needs a model; got a runner without one ({type(target).__name__})")
        self.calls += 1
        try:
            value = self.fn(model)
        except Exception as e:  # the user's code failed: a user error, reported on one line
            raise UserError(f"evaluator {self.spec} raised {type(e).__name__}: {e}".splitlines()[0]) from e
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise UserError(f"evaluator {self.spec} returned {type(value).__name__}, not a float")
        value = float(value)
        if not math.isfinite(value):
            raise UserError(f"evaluator {self.spec} returned {value}")
        log.debug("%s: %.6g", self.name, value)
        return value


def make_evaluator(kind: str = "auto", *, dataset: Dataset | None = None, model: onnx.ModelProto | None = None,
                   reference_outputs: np.ndarray | None = None, spec: str | None = None, top_k: int = 1,
                   batch_size: int = 256, output: int | str = 0, threads: int = 0, pairs: Any = None) -> Evaluator:
    """Build an evaluator.

    ``kind``: ``auto`` (accuracy when ``dataset`` has labels, else top-1 fidelity), ``accuracy``,
    ``top1`` / ``cosine`` / ``neg_mse`` (fidelity to ``model``'s outputs, or to
    ``reference_outputs``), ``verification`` (pairs of the images of ``dataset``: ``pairs``, a
    :class:`~npcompile.runtime.verification.Pairs`, or read from the data file itself; the output
    named ``embedding`` when ``output`` is 0 and the model has one), ``callable`` (with ``spec``),
    or directly a ``module:function`` spec.
    ``model`` is the original model: it gives the fidelity reference and a fixed batch size.
    """
    if kind == "callable" or (kind not in KINDS and ":" in kind):
        target = spec if kind == "callable" else kind
        if not target:
            raise UserError("a callable evaluator needs a module:function spec")
        return CallableEvaluator(target, threads)
    if kind not in KINDS:
        raise UserError(f"unknown evaluator {kind!r}; use one of {', '.join(KINDS)} or module:function")
    if dataset is None:
        raise UserError(f"the {kind} evaluator needs evaluation data")
    fixed = model_batch_size(model) if model is not None else None
    bs, padded = (fixed, True) if fixed else (batch_size, False)
    if kind == "auto":
        kind = "accuracy" if dataset.labels is not None else "top1"
    if kind == "accuracy":
        return AccuracyEvaluator(dataset, top_k, bs, output, padded, threads)
    if kind == "verification":
        from npcompile.runtime.verification import VerificationEvaluator, embedding_output, load_pairs

        if pairs is None:
            if not dataset.source:
                raise UserError("the verification evaluator needs pairs (a pairs file: 'pairs', 'same', 'split')")
            pairs = load_pairs(dataset.source, len(dataset))
        if output == 0 and model is not None:
            output = embedding_output(model)
        return VerificationEvaluator(dataset, pairs, bs, output, padded, threads)
    if reference_outputs is None:
        if model is None:
            raise UserError(f"the {kind} fidelity evaluator needs the original model or reference outputs")
        reference_outputs = model_outputs(model, dataset, output, bs, threads)
    return FidelityEvaluator(dataset, reference_outputs, kind, bs, output, padded, threads)
