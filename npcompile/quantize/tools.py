"""ONNX Runtime's quantization tooling and ONNX's float16 converter, on in-memory models.

The tools want file paths; every call here writes its input into a private temporary folder,
runs the tool there and reads the result back, so callers only see ``ModelProto`` s. Nothing here
does quantization arithmetic: ranges, scales, zero points and the QDQ graph come from
``onnxruntime.quantization``; float16 conversion from ``onnxruntime.transformers.float16`` (ONNX's
float16 converter, as ``onnxconverter-common`` ships it).
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx

from npcompile.errors import UserError
from npcompile.quantize.options import QuantizeOptions

__all__ = ["preprocess", "quantize_qdq", "quantize_dynamic", "convert_fp16", "supported_ops", "fp16_blocked_ops",
           "dynamic_op_types", "DYNAMIC_OPS"]

log = logging.getLogger(__name__)

#: op types quantized dynamically by default: the MatMul-heavy parts (Conv becomes ConvInteger,
#: which ONNX Runtime's CPU runs slower than float; ask for it with ``op_types``)
DYNAMIC_OPS = ("MatMul", "Attention", "LSTM")


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="npcompile-quant-") as tmp:
        yield Path(tmp)


class _FromOrt(logging.Filter):
    """Drops records ONNX Runtime's tools log through the root logger (advice, progress), keeping
    them at debug level under this module's logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "onnxruntime" in (record.pathname or ""):
            log.debug("onnxruntime: %s", record.getMessage())
            return False
        return True


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ONNX Runtime's quantization tools log advice as warnings and print progress; keep both out of
    the user's terminal (at debug level in this module's log)."""
    root, ort_log = logging.getLogger(), logging.getLogger("onnxruntime")
    flt, old = _FromOrt(), ort_log.level
    root.addFilter(flt)
    ort_log.setLevel(logging.ERROR)
    printed = io.StringIO()  # the histogram calibrators print their progress
    try:
        with contextlib.redirect_stdout(printed):
            yield
    finally:
        root.removeFilter(flt)
        ort_log.setLevel(old)
        for line in printed.getvalue().splitlines():
            log.debug("onnxruntime: %s", line)


def _save(model: onnx.ModelProto, path: Path) -> None:
    external = model.ByteSize() > 2**31 - 1
    onnx.save_model(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
                    location=path.name + ".data")


def _load(path: Path) -> onnx.ModelProto:
    return onnx.load_model(str(path), load_external_data=True)


def preprocess(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """ONNX Runtime's recommended pre-processing (``quant_pre_process``: symbolic shape inference,
    basic graph optimisation, ONNX shape inference). Returns the model and what ran; a model the
    symbolic shape inference cannot handle is retried without it."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    attempts = (({}, "symbolic shape inference, optimisation, shape inference"),
                ({"skip_symbolic_shape": True}, "optimisation, shape inference (symbolic shape inference failed)"))
    error: Exception | None = None
    for kwargs, what in attempts:
        with _workdir() as tmp, _quiet():
            src, dst = tmp / "in.onnx", tmp / "pre.onnx"
            _save(model, src)
            try:
                quant_pre_process(str(src), str(dst), **kwargs)
                return _load(dst), what
            except Exception as e:  # the tool raises many kinds; retry with less, then report
                log.debug("quant_pre_process %s failed: %s", kwargs, e, exc_info=True)
                error = e
    raise UserError(f"ONNX Runtime's quantization pre-processing failed: {_first_line(error)}; "
                    "give preprocess=false to quantize without it")


def _first_line(e: BaseException | None) -> str:
    text = str(e).strip() if e is not None else ""
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


def supported_ops(scheme: str) -> set[str]:
    """Op types ONNX Runtime's quantizer handles for ``scheme`` (``int8``: QDQ; ``int8-dynamic``)."""
    from onnxruntime.quantization import registry

    if scheme == "int8":
        return set(registry.QLinearOpsRegistry) | set(registry.QDQRegistry)
    return set(registry.IntegerOpsRegistry)


def fp16_blocked_ops() -> set[str]:
    """Op types the float16 converter keeps in float32 by default."""
    from onnxruntime.transformers import float16

    return set(float16.DEFAULT_OP_BLOCK_LIST)


def _calibration_method(opts: QuantizeOptions) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[opts.method]


def quantize_qdq(model: onnx.ModelProto, reader: Any, opts: QuantizeOptions, exclude: list[str]) -> onnx.ModelProto:
    """Static QDQ quantization (``quantize_static``, ``QuantFormat.QDQ``): symmetric int8 weights
    (per channel with ``per_channel``), activations calibrated on ``reader`` by ``opts.method``;
    ``uint8`` activations are asymmetric, ``int8`` ones symmetric (zero point 0)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    extra: dict[str, Any] = {"WeightSymmetric": True, "QuantizeBias": opts.quantize_bias}
    if opts.activations == "int8":
        extra["ActivationSymmetric"] = True
    if opts.method == "percentile":
        extra["CalibPercentile"] = opts.percentile
    act = QuantType.QUInt8 if opts.activations == "uint8" else QuantType.QInt8
    with _workdir() as tmp, _quiet():
        src, dst = tmp / "float.onnx", tmp / "int8.onnx"
        _save(model, src)
        try:
            quantize_static(str(src), str(dst), reader, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(opts.op_types) or None, per_channel=opts.per_channel,
                            reduce_range=opts.reduce_range, activation_type=act, weight_type=QuantType.QInt8,
                            nodes_to_exclude=exclude or None, calibrate_method=_calibration_method(opts),
                            extra_options=extra)
        except UserError:
            raise
        except (ValueError, RuntimeError) as e:
            raise UserError(f"ONNX Runtime's static quantization failed: {_first_line(e)}") from None
        return _load(dst)


def dynamic_op_types(opts: QuantizeOptions) -> list[str]:
    """The op types a dynamic quantization handles: ``opts.op_types``, or MatMul (Gemm included:
    the tool rewrites it as MatMul + Add), Attention and LSTM."""
    return list(opts.op_types) or list(DYNAMIC_OPS)


def quantize_dynamic(model: onnx.ModelProto, opts: QuantizeOptions, exclude: list[str]) -> onnx.ModelProto:
    """Dynamic quantization (``quantize_dynamic``): int8 weights, activations quantized at run time.
    By default only MatMul, Attention and LSTM (Conv gets ConvInteger, which ONNX Runtime's CPU runs
    slower than float; ask for it with ``op_types``)."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_dynamic

    op_types = dynamic_op_types(opts)
    with _workdir() as tmp, _quiet():
        src, dst = tmp / "float.onnx", tmp / "int8.onnx"
        _save(model, src)
        try:
            ort_dynamic(str(src), str(dst), op_types_to_quantize=op_types, per_channel=opts.per_channel,
                        reduce_range=opts.reduce_range, weight_type=QuantType.QInt8,
                        nodes_to_exclude=exclude or None)
        except (ValueError, RuntimeError) as e:
            raise UserError(f"ONNX Runtime's dynamic quantization failed: {_first_line(e)}") from None
        return _load(dst)


def convert_fp16(model: onnx.ModelProto, opts: QuantizeOptions, exclude: list[str]) -> onnx.ModelProto:
    """float16 weights and math (ONNX's float16 converter); float32 graph inputs and outputs with
    ``keep_io_types``; ops on the converter's block list and ``exclude`` stay float32."""
    from onnxruntime.transformers import float16

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    with _quiet():
        try:
            return float16.convert_float_to_float16(copy, keep_io_types=opts.keep_io_types,
                                                    node_block_list=exclude or None)
        except (ValueError, RuntimeError) as e:
            raise UserError(f"float16 conversion failed: {_first_line(e)}") from None
