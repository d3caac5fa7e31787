"""Pair verification: is the embedding of two images the same identity (class) or not?

The protocol of face verification (LFW): a model maps an image to an embedding; two images are
judged "same" when the cosine similarity of their embeddings is at least a threshold. The
threshold is chosen on *validation* pairs (the one with the highest pair accuracy there) and the
figure reported is the pair accuracy at that threshold on *test* pairs, in percent, with the
equal error rate (EER) of the test pairs beside it.

Pairs file (``.npz``, loaded with ``allow_pickle=False``):

- one array per model input, named as the input, batch first: the images (each image once; pairs
  refer to them by index);
- ``pairs``: integer ``[P, 2]``, indices of the two images of each pair;
- ``same``: ``[P]``, 1 (or True) where both images show the same identity, 0 where not;
- ``split`` (optional): ``[P]``, 0 for a validation pair (chooses the threshold), 1 for a test
  pair (is scored). Without it every pair does both (an optimistic figure: say so when you
  report it). Both parts need at least one same and one different pair.

Definitions (exact, so that figures can be checked by hand):

- score of a pair: cosine similarity of the two embeddings (flattened; a zero embedding has
  similarity 0 with everything);
- a pair is predicted "same" when its score ``>= threshold``;
- threshold: among the midpoints between consecutive distinct validation scores, and one below
  the lowest and one above the highest, the one with the highest validation pair accuracy
  (ties: the lowest such threshold);
- EER: the false accept rate (different pairs predicted same) and false reject rate (same pairs
  predicted different) of the test pairs, at every threshold between distinct scores, form a
  curve; the EER is where it crosses FAR = FRR, linearly interpolated between the two points
  either side of the crossing, in percent.
"""

from __future__ import annotations

import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from npcompile.errors import UserError
from npcompile.runtime.data import Dataset
from npcompile.runtime.evaluate import Evaluator, Runner, _Batches

__all__ = ["Pairs", "load_pairs", "cosine_scores", "best_threshold", "pair_accuracy", "equal_error_rate",
           "verification_metrics", "VerificationEvaluator", "EMBEDDING_OUTPUT"]

log = logging.getLogger(__name__)

#: the model output the evaluator reads when the model has one of this name (else output 0)
EMBEDDING_OUTPUT = "embedding"


@dataclass
class Pairs:
    """Image pairs: ``index`` ``[P, 2]`` into the images, ``same`` ``[P]`` bool, ``test`` ``[P]``
    bool (True: a test pair; False: a validation pair that chooses the threshold)."""

    index: np.ndarray
    same: np.ndarray
    test: np.ndarray

    def __post_init__(self) -> None:
        self.index = np.asarray(self.index, np.int64)
        self.same = np.asarray(self.same).astype(bool)
        self.test = np.asarray(self.test).astype(bool)

    @property
    def split(self) -> bool:
        """Whether validation and test pairs differ (False: every pair does both)."""
        return bool(self.test.any() and (~self.test).any())

    def part(self, test: bool) -> np.ndarray:
        """Pair indices of the test (or validation) part; all pairs when there is no split."""
        if not self.split:
            return np.arange(len(self.same))
        return np.flatnonzero(self.test if test else ~self.test)


def _check_pairs(index: np.ndarray, same: np.ndarray, split: np.ndarray | None, images: int, where: str) -> Pairs:
    if not np.issubdtype(index.dtype, np.integer) or index.ndim != 2 or index.shape[1] != 2 or not len(index):
        raise UserError(f"{where}: 'pairs' must be a non-empty integer [P, 2] array, got {index.dtype} "
                        f"{list(index.shape)}")
    if index.min() < 0 or index.max() >= images:
        raise UserError(f"{where}: 'pairs' indices must lie in [0, {images}) (the images), found "
                        f"[{int(index.min())}, {int(index.max())}]")
    p = len(index)
    if same.shape != (p,) or not (np.issubdtype(same.dtype, np.integer) or same.dtype == bool) \
            or not np.isin(same, (0, 1)).all():
        raise UserError(f"{where}: 'same' must be [P] of 0/1 (one per pair, P = {p}), got {same.dtype} "
                        f"{list(same.shape)}")
    if split is None:
        test = np.zeros(p, bool)
    else:
        if split.shape != (p,) or not np.issubdtype(split.dtype, np.integer) or not np.isin(split, (0, 1)).all():
            raise UserError(f"{where}: 'split' must be [P] of 0 (validation) / 1 (test), got {split.dtype} "
                            f"{list(split.shape)}")
        test = split.astype(bool)
    pairs = Pairs(index, same, test)
    for name, part in (("validation", pairs.part(False)), ("test", pairs.part(True))):
        s = pairs.same[part]
        if s.all() or not s.any():
            raise UserError(f"{where}: the {name} pairs need at least one same and one different pair")
    return pairs


def load_pairs(path: str | os.PathLike, images: int) -> Pairs:
    """The ``pairs``, ``same`` and ``split`` arrays of a pairs file over ``images`` images."""
    p = Path(path)
    where = f"pairs file {p}"
    try:
        with np.load(p, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in ("pairs", "same", "split") if k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise UserError(f"{where} cannot be read as an .npz of plain arrays ({type(e).__name__})") from None
    missing = [k for k in ("pairs", "same") if k not in arrays]
    if missing:
        raise UserError(f"{where} lacks {missing}: the verification evaluator needs 'pairs' [P, 2] and 'same' [P] "
                        "(and optionally 'split' [P]: 0 validation, 1 test)")
    return _check_pairs(arrays["pairs"], arrays["same"], arrays.get("split"), images, where)


def cosine_scores(embeddings: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Cosine similarity of the embeddings of each pair (0 where either embedding is zero)."""
    e = np.asarray(embeddings, np.float64).reshape(len(embeddings), -1)
    norm = np.linalg.norm(e, axis=1)
    unit = e / np.where(norm > 0, norm, 1.0)[:, None]
    return np.einsum("ij,ij->i", unit[index[:, 0]], unit[index[:, 1]])


def pair_accuracy(scores: np.ndarray, same: np.ndarray, threshold: float) -> float:
    """Percent of pairs judged right when ``score >= threshold`` means "same"."""
    return 100.0 * float(np.mean((np.asarray(scores) >= threshold) == np.asarray(same, bool)))


def best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """The threshold with the highest pair accuracy on these pairs (see the module docstring)."""
    s = np.unique(np.asarray(scores, np.float64))
    candidates = np.concatenate([[s[0] - 1.0], (s[:-1] + s[1:]) / 2, [s[-1] + 1.0]])
    same = np.asarray(same, bool)
    acc = [(np.asarray(scores) >= t) == same for t in candidates]
    correct = np.array([a.sum() for a in acc])
    return float(candidates[int(np.argmax(correct))])


def equal_error_rate(scores: np.ndarray, same: np.ndarray) -> float:
    """EER of these pairs, in percent (see the module docstring)."""
    scores = np.asarray(scores, np.float64)
    same = np.asarray(same, bool)
    s = np.unique(scores)
    thresholds = np.concatenate([[s[0] - 1.0], (s[:-1] + s[1:]) / 2, [s[-1] + 1.0]])
    far = np.array([np.mean(scores[~same] >= t) for t in thresholds])  # falls from 1 to 0
    frr = np.array([np.mean(scores[same] < t) for t in thresholds])  # rises from 0 to 1
    d = frr - far  # from -1 to +1, non-decreasing
    i = int(np.flatnonzero(d >= 0)[0])
    if d[i] == 0:
        return 100.0 * float(far[i])
    s_ = d[i - 1] / (d[i - 1] - d[i])  # the crossing between points i-1 and i
    return 100.0 * float(far[i - 1] + s_ * (far[i] - far[i - 1]))


def verification_metrics(embeddings: np.ndarray, pairs: Pairs) -> dict[str, float]:
    """Threshold (from the validation pairs), test accuracy at it, test EER, validation accuracy."""
    scores = cosine_scores(embeddings, pairs.index)
    val, test = pairs.part(False), pairs.part(True)
    t = best_threshold(scores[val], pairs.same[val])
    return {"accuracy": pair_accuracy(scores[test], pairs.same[test], t),
            "eer": equal_error_rate(scores[test], pairs.same[test]),
            "threshold": t, "val_accuracy": pair_accuracy(scores[val], pairs.same[val], t)}


class VerificationEvaluator(Evaluator):
    """Test-pair verification accuracy (percent) at the threshold chosen on the validation pairs,
    from the cosine similarity of output ``output`` (the embedding) over the images of ``dataset``.

    :meth:`metrics` gives the EER, the threshold and the validation accuracy too; after each
    evaluation :attr:`last` holds them. Not shardable: the threshold depends on every pair.
    """

    kind = "verification"
    unit = "%"

    def __init__(self, dataset: Dataset, pairs: Pairs, batch_size: int = 256, output: int | str = 0,
                 fixed_batch: bool = False, threads: int = 0) -> None:
        super().__init__(threads)
        n = len(dataset)
        if pairs.index.size and (pairs.index.min() < 0 or pairs.index.max() >= n):
            raise UserError(f"verification pairs refer to image {int(pairs.index.max())}, the data holds {n}")
        self.pairs = pairs
        self.output = output
        self.samples = n
        self._images = _Batches(dataset, batch_size, fixed_batch)
        self.last: dict[str, float] = {}

    @classmethod
    def from_file(cls, path: str | os.PathLike, model: onnx.ModelProto, batch_size: int = 256,
                  output: int | str | None = None, threads: int = 0) -> VerificationEvaluator:
        """Images and pairs from one pairs file; ``output`` defaults to :func:`embedding_output`."""
        from npcompile.runtime.data import load_data
        from npcompile.runtime.evaluate import model_batch_size

        dataset = load_data(path, model, labels="ignore", what="verification data")
        fixed = model_batch_size(model)
        return cls(dataset, load_pairs(path, len(dataset)), fixed or batch_size,
                   embedding_output(model) if output is None else output, fixed is not None, threads)

    @property
    def shardable(self) -> bool:
        return False

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "images": self.samples, "pairs": int(len(self.pairs.same)),
                "test_pairs": int(len(self.pairs.part(True))), "split": self.pairs.split,
                "output": self.output, **({"last": self.last} if self.last else {})}

    def embeddings(self, runner: Runner) -> np.ndarray:
        """The embedding of every image (in data order)."""
        return self._images.outputs(runner, self.output)

    def metrics(self, target: Runner | onnx.ModelProto) -> dict[str, float]:
        """Test accuracy, EER (percent), threshold and validation accuracy of ``target``."""
        from npcompile.runtime.evaluate import _session

        runner = _session(target, self.threads) if isinstance(target, onnx.ModelProto) else target
        self.last = verification_metrics(self.embeddings(runner), self.pairs)
        return dict(self.last)

    def _evaluate(self, runner: Runner) -> float:
        m = self.metrics(runner)
        log.debug("verification: accuracy %.4g %%, EER %.4g %%, threshold %.4g", m["accuracy"], m["eer"],
                  m["threshold"])
        return m["accuracy"]


def embedding_output(model: onnx.ModelProto) -> int | str:
    """The output named :data:`EMBEDDING_OUTPUT` when the model has one, else output 0."""
    names = [o.name for o in model.graph.output]
    return EMBEDDING_OUTPUT if EMBEDDING_OUTPUT in names else 0
