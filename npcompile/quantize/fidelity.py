"""How close the quantized model stays to the float model it came from, on real or probe inputs.

Per output: the largest absolute difference, the relative L2 error ``||q - f|| / ||f||`` and, for a
``[batch, classes]`` output with at least 3 classes, the share of samples whose top-1 class is the
same (``top1_agreement``). On real data (the calibration set) an agreement at chance level means
the quantization collapsed: :func:`check_collapse` makes that a one-line error instead of a model
that silently predicts one class.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx

from npcompile.errors import UserError

__all__ = ["compare_models", "check_collapse"]


def _run(model: onnx.ModelProto, batches: list[dict[str, np.ndarray]], threads: int) -> list[np.ndarray]:
    from npcompile.runtime.verify import make_session

    session = make_session(model, threads, optimize=True)
    types = {i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type) for i in model.graph.input}
    outs: list[list[np.ndarray]] = []
    for feeds in batches:  # a float16 model without float32 I/O takes float16 inputs
        outs.append(session.run(None, {k: v.astype(types.get(k, v.dtype), copy=False) for k, v in feeds.items()}))
    return [np.concatenate([o[i] for o in outs]) if outs[0][i].ndim else outs[0][i] for i in range(len(outs[0]))]


def compare_models(float_model: onnx.ModelProto, quant_model: onnx.ModelProto,
                   batches: Iterable[dict[str, np.ndarray]], source: str, threads: int = 0) -> dict[str, Any]:
    """Output differences of ``quant_model`` against ``float_model`` on ``batches``."""
    batches = list(batches)
    ref = _run(float_model, batches, threads)
    got = _run(quant_model, batches, threads)
    names = [o.name for o in float_model.graph.output]
    outputs = []
    for name, a, b in zip(names, ref, got, strict=True):
        a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
        row: dict[str, Any] = {"name": name, "finite": bool(np.isfinite(b64).all())}
        if a64.shape == b64.shape and a64.size:
            diff = np.abs(a64 - b64)
            norm = float(np.linalg.norm(a64))
            row["max_abs_diff"] = float(np.nanmax(diff)) if row["finite"] else float("inf")
            row["rel_l2"] = float(np.linalg.norm(a64 - b64) / norm) if norm > 0 and row["finite"] else None
            if a64.ndim == 2 and a64.shape[1] >= 3:
                row["top1_agreement"] = float((a64.argmax(1) == b64.argmax(1)).mean())
                row["classes"] = int(a64.shape[1])
        outputs.append(row)
    samples = sum(next(iter(f.values())).shape[0] for f in batches) if batches else 0
    return {"source": source, "samples": samples, "outputs": outputs}


def check_collapse(fidelity: dict[str, Any], scheme: str, real_data: bool) -> None:
    """Raise when the quantized model produces non-finite outputs (where the float one did not), or
    when, on real data, its top-1 agreement with the float model is at chance level."""
    for row in fidelity["outputs"]:
        if not row["finite"]:
            raise UserError(f"the {scheme} model produces NaN or infinite values on output {row['name']} "
                            f"({fidelity['source']}); keep the affected nodes in float with an exclude pattern")
        agree, classes = row.get("top1_agreement"), row.get("classes")
        if real_data and agree is not None and fidelity["samples"] >= 20 and agree < min(0.5, 2.0 / classes):
            raise UserError(f"the {scheme} model collapsed: its top-1 class agrees with the float model on "
                            f"{100 * agree:.1f} % of {fidelity['samples']} samples (chance is {100 / classes:.0f} %); "
                            "try another calibration method, exclude sensitive nodes, or int8-dynamic/fp16")
