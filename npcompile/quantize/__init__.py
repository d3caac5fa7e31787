"""Quantization after pruning: static int8 (QDQ), dynamic int8 and float16, with ONNX Runtime's tooling.

- :mod:`~npcompile.quantize.options` - :class:`QuantizeOptions` (scheme, calibration method,
  activation type, exclude patterns, ...), checked with one-line errors.
- :mod:`~npcompile.quantize.calibration` - a ``CalibrationDataReader`` over npcompile's datasets.
- :mod:`~npcompile.quantize.tools` - ``quant_pre_process``, ``quantize_static`` (QDQ),
  ``quantize_dynamic`` and the float16 converter on in-memory models.
- :mod:`~npcompile.quantize.census` - nodes quantized or left in float and why, scales, sizes.
- :mod:`~npcompile.quantize.fidelity` - the quantized model against the float one.
- :mod:`~npcompile.quantize.core` - :func:`quantize_model`, all of the above in order.

``onnxruntime.quantization`` is imported only when a quantization runs.
"""

from npcompile.quantize.core import QuantizeResult, missing_calib_message, quantize_model, quantized_nodes
from npcompile.quantize.options import ACTIVATIONS, METHODS, SCHEMES, QuantizeOptions

__all__ = ["ACTIVATIONS", "METHODS", "SCHEMES", "QuantizeOptions", "QuantizeResult", "missing_calib_message",
           "quantize_model", "quantized_nodes"]
