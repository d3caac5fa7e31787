"""Helpers for the quantization tests: zoo models exported once per session, quantized by ONNX
Runtime's own tooling (``quantize_static`` / ``quantize_dynamic``, not npcompile's pass), and run."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import numpy as np
import onnx

from npcompile.graph.model_io import load_model
from npcompile.graph.shapes import probe_shapes
from npcompile.runtime.data import Dataset
from npcompile.runtime.verify import make_session
from npcompile.testing import plant_dead_channels

ROOT = Path(__file__).resolve().parents[2]
LENET = ROOT / "examples" / "lenet_mnist"


@functools.cache
def zoo_model(name: str) -> onnx.ModelProto:
    """A zoo model (tests/zoo.py) with random BatchNorm statistics, exported by the legacy exporter."""
    import zoo

    builder, shape = zoo.ZOO[name]
    import torch

    torch.manual_seed(0)
    module = zoo.randomize_bn(builder(), 0)
    with tempfile.TemporaryDirectory() as tmp:
        path = zoo.export(module, shape, Path(tmp) / f"{name}.onnx", dynamo=False)
        return load_model(path)


def input_shape(name: str) -> tuple[int, ...]:
    import zoo

    return zoo.ZOO[name][1]


def data(model: onnx.ModelProto, n: int = 32, seed: int = 0) -> Dataset:
    """Random calibration data for every input of ``model`` (normal, batch ``n``)."""
    rng = np.random.default_rng(seed)
    probe = probe_shapes(model)
    return Dataset({k: rng.standard_normal((n, *v[1:])).astype(np.float32) for k, v in probe.items()}, None,
                   "random")


def with_dead_channels(model: onnx.ModelProto, fraction: float = 0.25) -> onnx.ModelProto:
    return plant_dead_channels(model, probe_shapes(model), fraction, seed=1)[0]


def ort_quantize(model: onnx.ModelProto, calib: Dataset | None = None, fmt: str = "qdq", per_channel: bool = True,
                 op_types: list[str] | None = None) -> onnx.ModelProto:
    """``model`` quantized by ONNX Runtime's tooling: ``qdq`` / ``qop`` static (calibrated on
    ``calib``), ``dynamic``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        quant_pre_process,
        quantize_dynamic,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([dict(f) for f, _ in calib.batches(8)])

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, pre, dst = Path(tmp) / "f.onnx", Path(tmp) / "p.onnx", Path(tmp) / "q.onnx"
        onnx.save(model, src)
        quant_pre_process(str(src), str(pre))
        if fmt == "dynamic":
            quantize_dynamic(str(pre), str(dst), op_types_to_quantize=op_types or ["MatMul", "Conv"],
                             per_channel=per_channel)
        else:
            quantize_static(str(pre), str(dst), Reader(), per_channel=per_channel,
                            quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator)
        return load_model(dst)


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return make_session(model, 1).run(None, feeds)


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-12))
