"""Calibration, training and evaluation data: ``.npz`` files, one array per model input (named as
the input, batch first), plus ``labels`` for labelled data. Loaded with ``allow_pickle=False`` and
checked against the model; read in batches.
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from npcompile.errors import UserError
from npcompile.graph.shapes import input_specs

__all__ = ["Dataset", "load_data"]

LABELS = "labels"

log = logging.getLogger(__name__)


@dataclass
class Dataset:
    """Arrays per model input (same first dimension) and optional integer ``labels``."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    source: str = ""

    def __len__(self) -> int:
        return next(iter(self.inputs.values())).shape[0]

    def batches(self, batch_size: int) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
        """Consecutive batches of inputs (and labels)."""
        n = len(self)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            feeds = {k: v[start:stop] for k, v in self.inputs.items()}
            yield feeds, (self.labels[start:stop] if self.labels is not None else None)

    def take(self, n: int) -> Dataset:
        """The first ``n`` samples."""
        return Dataset({k: v[:n] for k, v in self.inputs.items()},
                       None if self.labels is None else self.labels[:n], self.source)


def _dims_ok(spec_dims: list, shape: tuple[int, ...]) -> bool:
    if len(spec_dims) != len(shape):
        return False
    for i, (d, s) in enumerate(zip(spec_dims, shape, strict=True)):
        if i == 0:
            continue
        if d.HasField("dim_value") and d.dim_value > 0 and d.dim_value != s:
            return False
    return True


def load_data(path: str | os.PathLike, model: onnx.ModelProto, labels: str = "optional",
              what: str = "data") -> Dataset:
    """Load and check a data file for ``model``.

    ``labels``: ``"required"``, ``"optional"`` or ``"ignore"``. Every problem (missing file,
    pickled arrays, wrong names, shapes or dtypes, NaN, mismatched lengths) is a
    :class:`UserError` with one line naming the file.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} file not found: {p}")
    with open(p, "rb") as f:
        magic = f.read(6)
    if magic == b"\x93NUMPY":
        raise UserError(f"{what} file {p} is a single .npy array; save an .npz with one array per model input "
                        "(np.savez(path, input=x, labels=y))")
    if magic[:4] != b"PK\x03\x04" and magic[:4] != b"PK\x05\x06":
        raise UserError(f"{what} file {p} is not an .npz archive (np.savez writes one)")
    try:
        with np.load(p, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except ValueError as e:
        if "pickle" in str(e).lower() or "object" in str(e).lower():
            raise UserError(f"{what} file {p} holds pickled objects; save plain numeric arrays") from None
        raise UserError(f"{what} file {p} is not a valid .npz: {e}") from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise UserError(f"{what} file {p} is not a valid .npz ({type(e).__name__})") from None
    specs = input_specs(model)
    names = [s.name for s in specs]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise UserError(f"{what} file {p} lacks array(s) {missing} for model input(s); it has "
                        f"{sorted(arrays)}")
    inputs: dict[str, np.ndarray] = {}
    n = None
    for spec in specs:
        a = arrays[spec.name]
        want = onnx.helper.tensor_dtype_to_np_dtype(spec.type.tensor_type.elem_type)
        if a.dtype != want:
            if np.issubdtype(want, np.floating) and np.issubdtype(a.dtype, np.floating):
                log.warning("%s file %s: input %s is %s, converted to the model's %s", what, p, spec.name,
                            a.dtype, np.dtype(want))
                a = a.astype(want)
            else:
                raise UserError(f"{what} file {p}: input {spec.name} has dtype {a.dtype}, the model wants {want}")
        dims = list(spec.type.tensor_type.shape.dim)
        if a.ndim == 0 or not _dims_ok(dims, a.shape):
            want_shape = ["N" if i == 0 else (d.dim_value if d.HasField("dim_value") else "?")
                          for i, d in enumerate(dims)]
            raise UserError(f"{what} file {p}: input {spec.name} has shape {list(a.shape)}, the model wants "
                            f"{want_shape}")
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            raise UserError(f"{what} file {p}: input {spec.name} contains NaN or infinite values")
        if n is None:
            n = a.shape[0]
        elif a.shape[0] != n:
            raise UserError(f"{what} file {p}: inputs have different numbers of samples")
        inputs[spec.name] = a
    if n == 0:
        raise UserError(f"{what} file {p} holds no samples")
    y = None
    if labels != "ignore":
        if LABELS in arrays:
            y = arrays[LABELS]
            if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1 or y.shape[0] != n:
                raise UserError(f"{what} file {p}: labels must be a 1-D integer array with one label per "
                                f"sample ({n}), got {y.dtype} {list(y.shape)}")
        elif labels == "required":
            raise UserError(f"{what} file {p} has no 'labels' array")
    return Dataset(inputs, y, str(p))


def sample_shapes(paths: list[object]) -> dict[str, tuple[int, ...]]:
    """The shape of every array in the first of ``paths`` (``.npz`` files; missing or unreadable
    ones are skipped: :func:`load_data` reports them) that holds it, read from the array headers
    only. Gives the probe the sizes of dynamic axes (a sequence length) the data already fixes."""
    out: dict[str, tuple[int, ...]] = {}
    for path in paths:
        if not isinstance(path, (str, os.PathLike)) or not Path(path).is_file():
            continue
        try:
            with zipfile.ZipFile(path) as z:
                for info in z.infolist():
                    name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                    if name in out:
                        continue
                    with z.open(info) as f:
                        version = np.lib.format.read_magic(f)
                        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                            np.lib.format.read_array_header_2_0
                        shape, _, _ = read(f)
                    out[name] = tuple(int(s) for s in shape)
        except (OSError, ValueError, zipfile.BadZipFile, EOFError):
            continue
    return out
