"""Quantization, the last rewrite: static int8 (QDQ), dynamic int8 or float16 with ONNX Runtime's tooling.

Runs after channel pruning, recovery and weight sparsity (it turns the float weights those passes
edit into int8 or float16 ones; passes that rewrite float weights cannot follow it):

- ``scheme="int8"`` - static QDQ (``onnxruntime.quantization.quantize_static``): symmetric int8
  weights, per output channel by default; activations calibrated on ``calib`` (an ``.npz`` as
  ``--calib``) by ``method`` ``minmax`` | ``entropy`` | ``percentile`` (``percentile``, default
  99.999), in batches of ``batch_size`` (``samples`` caps the samples used); ``activations``
  ``uint8`` (asymmetric, what ONNX Runtime's CPU kernels want) or ``int8`` (symmetric, zero point
  0, biases kept in float: what TensorRT runs; ``quantize_bias`` overrides the bias choice). The
  model is pre-processed first as ONNX Runtime recommends (``preprocess``).
- ``scheme="int8-dynamic"`` - ``quantize_dynamic``: int8 weights, activations quantized at run
  time; for MatMul-heavy graphs (MatMul/Gemm, Attention, LSTM by default; ``op_types`` to change),
  no calibration data needed.
- ``scheme="fp16"`` - ONNX's float16 converter; graph inputs and outputs stay float32 with
  ``keep_io_types`` (default).

``exclude``: fnmatch patterns (a list or a comma-separated string, like the pruning passes') on
node names; matching nodes stay in float. A pattern that matches no node is an error.

The quantized model is checked: ONNX checker, every scale finite and > 0 (a NaN/inf scale after
calibration is an error naming the tensor), outputs finite, and on the calibration data the
top-1 agreement with the float model above chance (``check``). ``PassResult.data`` (also the
report's ``quantization`` section) holds the scheme, calibration (method, samples, batches),
sizes before/after (serialized and weight bytes, ratios), the nodes quantized and left in float
with the reasons (counts per reason and per op type, and the list of float nodes), the scale
range, and the fidelity figures against the float model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from npcompile.errors import UserError
from npcompile.pipeline import Context, Pass, PassOptions, PassResult, option, register_pass
from npcompile.quantize import QuantizeOptions, missing_calib_message, quantize_model
from npcompile.runtime.data import Dataset

__all__ = ["QuantizePass"]

log = logging.getLogger(__name__)


@register_pass
class QuantizePass(Pass):
    """Quantize the model (int8 QDQ, int8-dynamic or fp16) with ONNX Runtime's tooling; the last rewrite."""

    name = "quantize"
    kind = "rewrite"
    description = ("quantize: int8 (static QDQ, calibrated on --calib), int8-dynamic or fp16, with ONNX Runtime's "
                   "tooling; runs after pruning, recovery and sparsity")
    produces = frozenset({"model"})
    exact = False
    section = "quantization"
    data_options: ClassVar[dict[str, str]] = {"calib": "ignore"}

    @dataclass(frozen=True)
    class Options(PassOptions):
        scheme: str = "int8"
        method: str = "minmax"
        calib: Dataset | None = None
        batch_size: int = 32
        exclude: str | Sequence[str] | None = None
        per_channel: bool = True
        keep_io_types: bool = True
        activations: str = "uint8"
        samples: int | None = None
        percentile: float = 99.999
        preprocess: bool = True
        reduce_range: bool = False
        op_types: str | Sequence[str] | None = None
        quantize_bias: bool | None = None
        threads: int = 0
        check: bool = True
        #: the checked and normalised :class:`QuantizeOptions`
        opts: QuantizeOptions | None = option(None, init=False)

        def __post_init__(self) -> None:
            opts = QuantizeOptions.make(scheme=self.scheme, method=self.method, per_channel=self.per_channel,
                                        activations=self.activations, exclude=self.exclude,
                                        keep_io_types=self.keep_io_types, batch_size=self.batch_size,
                                        samples=self.samples, percentile=self.percentile, preprocess=self.preprocess,
                                        reduce_range=self.reduce_range, op_types=self.op_types,
                                        quantize_bias=self.quantize_bias)
            if opts.calibrated and self.calib is None:
                raise UserError(missing_calib_message("--calib") + " (pipeline option calib)")
            if self.calib is not None and not isinstance(self.calib, Dataset):
                raise UserError(f"quantize: calib must be a data file path or a Dataset, got "
                                f"{type(self.calib).__name__}")
            self._set(opts=opts, threads=int(self.threads), check=bool(self.check))

    def recorded_options(self) -> dict[str, Any]:
        """The normalised options (from :class:`QuantizeOptions`), ``calib`` by its source, last."""
        opts, calib = self.opts, self.calib
        return dict(scheme=opts.scheme, method=opts.method, batch_size=opts.batch_size,
                    exclude=list(opts.exclude) or None, per_channel=opts.per_channel,
                    keep_io_types=opts.keep_io_types, activations=opts.activations, samples=opts.samples,
                    percentile=opts.percentile, preprocess=opts.preprocess, reduce_range=opts.reduce_range,
                    op_types=list(opts.op_types) or None, quantize_bias=opts.quantize_bias, check=self.check,
                    calib=calib.source if calib is not None else None)

    def run(self, ctx: Context) -> PassResult:
        result = quantize_model(ctx.model, self.opts, self.calib if self.opts.calibrated else None,
                                probe=dict(ctx.probe), threads=self.threads, seed=ctx.seed, check=self.check)
        ctx.set_model(result.model)
        if result.data["opset"]["before"] != result.data["opset"]["after"]:
            ctx.notes.append(f"quantization raised the opset from {result.data['opset']['before']} to "
                             f"{result.data['opset']['after']}")
        return PassResult(True, result.summary, result.data, report=result.data)
