"""Verification: the checker, shape inference, and ONNX Runtime outputs against the original."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx

from npcompile.errors import UserError, VerificationError
from npcompile.graph.shapes import probe_inputs
from npcompile.runtime.ort_errors import ort_message

__all__ = ["probe_inputs", "make_session", "run_session", "compare", "Verification"]

log = logging.getLogger(__name__)


def make_session(model: onnx.ModelProto | str | bytes, threads: int = 0, optimize: bool = True,
                 optimized_path: str | None = None, providers: list[str] | None = None):
    import onnxruntime as ort

    ort.set_default_logger_severity(4)  # errors come back as exceptions; keep stderr to one line
    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    data = model if isinstance(model, (str, bytes)) else model.SerializeToString()
    return ort.InferenceSession(data, so, providers=providers or ["CPUExecutionProvider"])


def run_session(session, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return session.run(None, feeds)


@dataclass
class Verification:
    """Outcome of comparing a compiled model with its original on probe inputs."""

    max_abs_diff: float
    max_rel_diff: float
    outputs: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"max_abs_diff": self.max_abs_diff, "max_rel_diff": self.max_rel_diff,
                "outputs": self.outputs}


def compare(original: onnx.ModelProto, compiled: onnx.ModelProto, feeds: dict[str, np.ndarray],
            threads: int = 0, compiled_bytes: bytes | None = None) -> Verification:
    """Run both models on ``feeds``; shapes must match, differences are reported.
    ``compiled_bytes``: ``compiled`` already serialized (saves serializing a large model again)."""
    try:
        # once, for the checker and the session
        data = compiled_bytes if compiled_bytes is not None else compiled.SerializeToString()
        onnx.checker.check_model(data)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        try:
            onnx.checker.check_model(original)
        except Exception as orig_error:
            # The flaw came in with the input (a corrupt name, a bad attribute): the user's to fix.
            line = str(orig_error).splitlines()[0] if str(orig_error) else type(orig_error).__name__
            raise UserError(f"the input model fails the ONNX checker: {line}") from orig_error
        raise VerificationError(f"compiled model fails the ONNX checker: {first}") from e
    try:
        ref = run_session(make_session(original, threads), feeds)
    except Exception as e:
        raise UserError(f"ONNX Runtime cannot run the original model: {ort_message(e)}") from e
    try:
        got = run_session(make_session(data, threads), feeds)
    except Exception as e:
        raise VerificationError(f"ONNX Runtime cannot run the compiled model: {ort_message(e)}") from e
    names = [o.name for o in original.graph.output]
    rows = []
    worst_abs = worst_rel = 0.0
    for name, a, b in zip(names, ref, got, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            raise VerificationError(f"output {name} changed shape: {a.shape} -> {b.shape}")
        if a.size == 0 or not np.issubdtype(a.dtype, np.number):
            rows.append({"name": name, "shape": list(a.shape), "max_abs_diff": 0.0, "max_rel_diff": 0.0})
            continue
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        diff = float(np.max(np.abs(a64 - b64)))
        rel = diff / max(float(np.max(np.abs(a64))), 1e-12)
        worst_abs, worst_rel = max(worst_abs, diff), max(worst_rel, rel)
        rows.append({"name": name, "shape": list(a.shape), "max_abs_diff": diff, "max_rel_diff": rel})
    return Verification(worst_abs, worst_rel, rows)
