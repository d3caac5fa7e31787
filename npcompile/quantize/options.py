"""Options of a quantization: the scheme, the calibration, which nodes stay in float.

Every check here is a :class:`~npcompile.errors.UserError` of one line, so a bad flag or pipeline
option exits 2 before any work is done.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from npcompile.errors import UserError
from npcompile.graph.names import name_patterns

__all__ = ["SCHEMES", "METHODS", "ACTIVATIONS", "QuantizeOptions"]

#: ``int8``: static QDQ with calibrated activations; ``int8-dynamic``: int8 weights, activations
#: quantized at run time (MatMul-heavy graphs, no calibration data); ``fp16``: float16 weights and math
SCHEMES = ("int8", "int8-dynamic", "fp16")
#: activation calibration methods of ONNX Runtime's calibrators
METHODS = ("minmax", "entropy", "percentile")
#: ``uint8``: asymmetric activations (what ONNX Runtime's CPU kernels want); ``int8``: symmetric
#: activations with zero point 0 (what TensorRT's explicit quantization needs)
ACTIVATIONS = ("uint8", "int8")


def _choice(what: str, value: Any, choices: Sequence[str], hint: str = "") -> str:
    text = str(value).strip().lower().replace("_", "-") if value is not None else ""
    if text not in choices:
        raise UserError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}{hint}")
    return text


@dataclass(frozen=True)
class QuantizeOptions:
    """What to quantize and how (see the module docstring of :mod:`npcompile.quantize`)."""

    scheme: str = "int8"
    method: str = "minmax"
    per_channel: bool = True
    activations: str = "uint8"
    exclude: tuple[str, ...] = ()
    keep_io_types: bool = True
    batch_size: int = 32
    samples: int | None = None
    percentile: float = 99.999
    preprocess: bool = True
    reduce_range: bool = False
    op_types: tuple[str, ...] = field(default_factory=tuple)
    quantize_bias: bool = True

    @classmethod
    def make(cls, scheme: str = "int8", method: str = "minmax", per_channel: bool = True,
             activations: str = "uint8", exclude: str | Sequence[str] | None = None, keep_io_types: bool = True,
             batch_size: int = 32, samples: int | None = None, percentile: float = 99.999, preprocess: bool = True,
             reduce_range: bool = False, op_types: str | Sequence[str] | None = None,
             quantize_bias: bool | None = None) -> QuantizeOptions:
        """Checked options from loose values (strings from a flag or a pipeline file).
        ``quantize_bias`` (static int8): biases as int32 through a DequantizeLinear (``True``, what
        ONNX Runtime's CPU kernels fuse) or kept in float (``False``, what TensorRT needs: its
        Q/DQ take int8 only); ``None``: int32 with ``uint8`` activations, float with ``int8`` ones."""
        scheme = _choice("quantization scheme", scheme, SCHEMES)
        method = _choice("calibration method", method, METHODS)
        activations = _choice("activation type", activations, ACTIVATIONS)
        if quantize_bias is None:
            quantize_bias = activations == "uint8"
        for name, flag in (("per_channel", per_channel), ("keep_io_types", keep_io_types),
                           ("preprocess", preprocess), ("reduce_range", reduce_range),
                           ("quantize_bias", quantize_bias)):
            if not isinstance(flag, bool):
                raise UserError(f"quantize option {name} must be true or false, got {flag!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"quantization calibration batch size must be an integer >= 1, got {batch_size!r}")
        if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
            raise UserError(f"quantization calibration samples must be an integer >= 1, got {samples!r}")
        try:
            pct = float(percentile)
        except (TypeError, ValueError):
            raise UserError(f"calibration percentile must be a number, got {percentile!r}") from None
        if not (math.isfinite(pct) and 50.0 < pct <= 100.0):
            raise UserError(f"calibration percentile must be in (50, 100], got {percentile!r}")
        return cls(scheme=scheme, method=method, per_channel=per_channel, activations=activations,
                   exclude=tuple(name_patterns(exclude)), keep_io_types=keep_io_types, batch_size=batch_size,
                   samples=samples, percentile=pct, preprocess=preprocess, reduce_range=reduce_range,
                   op_types=tuple(name_patterns(op_types)), quantize_bias=quantize_bias)

    @property
    def calibrated(self) -> bool:
        """Whether the scheme needs calibration data (static int8)."""
        return self.scheme == "int8"

    def describe(self) -> str:
        if self.scheme == "int8":
            acts = "uint8 asymmetric" if self.activations == "uint8" else "int8 symmetric"
            acts += "" if self.quantize_bias else ", float biases"
            method = f"percentile {self.percentile:g}" if self.method == "percentile" else self.method
            return (f"static int8 QDQ ({'per-channel' if self.per_channel else 'per-tensor'} symmetric int8 weights, "
                    f"{acts} activations, {method} calibration)")
        if self.scheme == "int8-dynamic":
            return f"dynamic int8 ({'per-channel' if self.per_channel else 'per-tensor'} int8 weights)"
        return f"float16 ({'float32' if self.keep_io_types else 'float16'} inputs and outputs)"
