"""Calibration data for ONNX Runtime's quantizer, read through npcompile's own data loading.

:class:`DatasetReader` is an ``onnxruntime.quantization.CalibrationDataReader`` over a
:class:`~npcompile.runtime.data.Dataset` (a ``--calib`` ``.npz``): consecutive batches, in file
order, so that the same data always gives the same ranges. :func:`check_calibration` checks the
data against the model being quantized (names, dtypes, shapes besides the batch) with one-line
errors.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import onnx

from npcompile.errors import UserError
from npcompile.graph.shapes import input_specs
from npcompile.runtime.data import Dataset

__all__ = ["DatasetReader", "check_calibration", "fixed_batch"]

log = logging.getLogger(__name__)


def fixed_batch(model: onnx.ModelProto) -> int | None:
    """The batch size the model's inputs fix (dimension 0), or ``None`` when it is dynamic."""
    sizes = set()
    for spec in input_specs(model):
        dims = spec.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            sizes.add(int(dims[0].dim_value))
    return sizes.pop() if len(sizes) == 1 else None


def check_calibration(dataset: Dataset, model: onnx.ModelProto, what: str = "calibration data") -> None:
    """``dataset`` must hold every model input, with the model's dtype and fixed dimensions."""
    source = f" {dataset.source}" if dataset.source else ""
    for spec in input_specs(model):
        a = dataset.inputs.get(spec.name)
        if a is None:
            raise UserError(f"{what}{source} lacks model input {spec.name!r} (it has {sorted(dataset.inputs)})")
        want = onnx.helper.tensor_dtype_to_np_dtype(spec.type.tensor_type.elem_type)
        if a.dtype != want:
            raise UserError(f"{what}{source}: input {spec.name} has dtype {a.dtype}, the model wants {want}")
        dims = list(spec.type.tensor_type.shape.dim)
        bad = len(dims) != a.ndim or any(
            i > 0 and d.HasField("dim_value") and d.dim_value > 0 and d.dim_value != s
            for i, (d, s) in enumerate(zip(dims, a.shape, strict=False)))
        if bad:
            want_shape = ["N" if i == 0 else (d.dim_value if d.HasField("dim_value") else "?")
                          for i, d in enumerate(dims)]
            raise UserError(f"{what}{source}: input {spec.name} has shape {list(a.shape)}, the model wants "
                            f"{want_shape}")
    if len(dataset) == 0:
        raise UserError(f"{what}{source} holds no samples")


def _reader_base() -> type:
    from onnxruntime.quantization import CalibrationDataReader

    return CalibrationDataReader


class DatasetReader:
    """Batches of a dataset as ONNX Runtime calibration feeds (built by :func:`make_reader`)."""

    def __init__(self, dataset: Dataset, names: list[str], batch_size: int, samples: int | None = None,
                 fixed: int | None = None) -> None:
        n = len(dataset) if samples is None else min(samples, len(dataset))
        if fixed is not None:
            if n < fixed:
                raise UserError(f"the model's batch size is fixed at {fixed}; the calibration data holds only "
                                f"{n} sample(s)")
            if batch_size != fixed:
                log.info("calibration batches of %d: the model fixes its batch size", fixed)
            batch_size = fixed
            n -= n % fixed
        self.dataset = dataset.take(n)
        self.names = names
        self.batch_size = batch_size
        self.samples = n
        self._it: Iterator[dict[str, np.ndarray]] | None = None

    @property
    def batches(self) -> int:
        return -(-self.samples // self.batch_size)

    def _iter(self) -> Iterator[dict[str, np.ndarray]]:
        for feeds, _ in self.dataset.batches(self.batch_size):
            yield {k: np.ascontiguousarray(feeds[k]) for k in self.names}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = self._iter()
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None

    def __len__(self) -> int:
        return self.samples

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self._iter()


def make_reader(dataset: Dataset, model: onnx.ModelProto, batch_size: int, samples: int | None = None):
    """A ``CalibrationDataReader`` (a :class:`DatasetReader` subclassing ONNX Runtime's base class)
    over ``dataset`` for ``model``, checked first."""
    check_calibration(dataset, model)
    base = _reader_base()
    cls = type("NpcompileCalibrationReader", (DatasetReader, base), {})
    return cls(dataset, [s.name for s in input_specs(model)], batch_size, samples, fixed_batch(model))
