"""ONNX Runtime's error messages, shortened to their useful part on one line."""

from __future__ import annotations

import re

__all__ = ["ort_message"]

_PREFIX = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*[A-Z_]+\s*:\s*")


def ort_message(error: BaseException) -> str:
    """``[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input: x for the
    following indices\\n index: 2 Got: 27 Expected: 28\\n Please fix ...`` -> ``Got invalid dimensions
    for input: x for the following indices index: 2 Got: 27 Expected: 28`` (every line kept, the
    status prefix and the closing advice dropped)."""
    text = " ".join(str(error).split())
    text = _PREFIX.sub("", text)
    text = re.sub(r"\s*Please fix either the inputs(/| or )the model\.?\s*$", "", text)
    return text or type(error).__name__
