"""One quantization of an in-memory model: the tool run, the checks, and what to report.

:func:`quantize_model` takes a float ``ModelProto`` and returns the quantized one with a report
dict. The order: refuse a model that is already quantized; pre-process (ONNX Runtime's
``quant_pre_process``) for the int8 schemes; resolve ``exclude`` patterns to node names (a pattern
that matches nothing is an error: it is a typo); run the tool; normalise the result (unused opset
domains dropped, the graph sorted, so that the same inputs give a byte-identical model); check it
(ONNX checker, scales finite and positive, outputs finite and not collapsed); count nodes
quantized and left in float, and sizes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from npcompile.errors import UserError
from npcompile.graph.model_io import to_graph, to_model
from npcompile.quantize import census, fidelity, tools
from npcompile.quantize.calibration import make_reader
from npcompile.quantize.options import QuantizeOptions
from npcompile.runtime.data import Dataset

__all__ = ["QuantizeResult", "quantize_model", "quantized_nodes", "missing_calib_message"]

log = logging.getLogger(__name__)

#: how many calibration samples the fidelity check runs (both models)
FIDELITY_SAMPLES = 256


def missing_calib_message(flag: str = "--calib") -> str:
    """What static int8 without calibration data says (the CLI and the pass use the same words)."""
    return (f"--quantize int8 needs calibration data to set activation ranges: give {flag} DATA.npz, "
            "or use --quantize int8-dynamic (no data needed)")


@dataclass
class QuantizeResult:
    """The quantized model and the report of what was done (see :func:`quantize_model`)."""

    model: onnx.ModelProto
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        return str(self.data.get("summary", ""))


def quantized_nodes(model: onnx.ModelProto) -> int:
    """How many quantization or integer nodes ``model`` already has."""
    return sum(1 for n in model.graph.node if n.op_type in census.QUANT_OPS)


def _finish(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop opset imports no node uses and bring the graph into npcompile's normal form (folded
    constants, no unused tensors, topological order), so a later cleanup changes nothing."""
    used = {n.domain or "" for n in model.graph.node}
    keep = [o for o in model.opset_import if (o.domain or "") in used or (o.domain or "") in ("", "ai.onnx")]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    graph = to_graph(model)
    graph.cleanup().toposort()
    _short_names(graph)
    out = to_model(graph, model)
    del out.graph.value_info[:]  # stale after renaming; ONNX Runtime and npcompile infer shapes again
    return out


#: suffixes ONNX Runtime's quantizer appends to the names it creates, and shorter ones (the file
#: stores every name; on a small net the long ones cost several % of the file)
_SUFFIXES = (("_QuantizeLinear_Output", "_q"), ("_DequantizeLinear_Output", "_dq"), ("_QuantizeLinear_Input", "_qi"),
             ("_QuantizeLinear", "_Q"), ("_DequantizeLinear", "_DQ"), ("_quantized_scale", "_qs"),
             ("_quantized_zero_point", "_qzp"), ("_quantized", "_qv"), ("_zero_point", "_zp"), ("_scale", "_s"))


def _short(name: str) -> str:
    for long, short in _SUFFIXES:
        if name.endswith(long):
            return name[: -len(long)] + short
    return name


def _short_names(graph: Any) -> None:
    """Shorten the quantizer's generated tensor and node names (graph inputs and outputs keep
    theirs); nothing is renamed when a shorter name would collide."""
    io = {t.name for t in (*graph.inputs, *graph.outputs)}
    qdq = [n for n in graph.nodes if n.op in ("QuantizeLinear", "DequantizeLinear")]
    touched = {t.name for n in qdq for t in (*n.inputs, *n.outputs)}
    tensors = graph.tensors()
    new_t = {name: (_short(name) if name in touched and name not in io else name) for name in tensors}
    new_n = [_short(n.name) if n.name and n.op in ("QuantizeLinear", "DequantizeLinear") else n.name
             for n in graph.nodes]
    if len(set(new_t.values())) != len(new_t) or len({n for n in new_n if n}) != len([n for n in new_n if n]):
        return
    for name, t in tensors.items():
        t.name = new_t[name]
    for node, name in zip(graph.nodes, new_n, strict=True):
        node.name = name


def _feeds(dataset: Dataset | None, model: onnx.ModelProto, probe: dict[str, tuple[int, ...]] | None,
           batch_size: int, seed: int) -> tuple[list[dict[str, np.ndarray]], str, bool]:
    if dataset is not None:
        names = [i.name for i in model.graph.input if i.name in dataset.inputs]
        sub = dataset.take(min(len(dataset), FIDELITY_SAMPLES))
        return ([{k: v for k, v in f.items() if k in names} for f, _ in sub.batches(batch_size)],
                f"{len(sub)} calibration samples", True)
    from npcompile.graph.shapes import probe_shapes
    from npcompile.runtime.verify import probe_inputs

    shapes = probe or probe_shapes(model)
    return [probe_inputs(model, shapes, batch=8, seed=seed)], "8 random probe inputs", False


def quantize_model(model: onnx.ModelProto, options: QuantizeOptions, calib: Dataset | None = None,
                   probe: dict[str, tuple[int, ...]] | None = None, threads: int = 0, seed: int = 0,
                   check: bool = True) -> QuantizeResult:
    """Quantize ``model`` as ``options`` say (``calib`` is needed by the static ``int8`` scheme).

    Raises :class:`~npcompile.errors.UserError` (one line) for anything the user has to change.
    """
    import onnxruntime

    t0 = time.perf_counter()
    opts = options
    already = quantized_nodes(model)
    if already:
        raise UserError(f"the model is already quantized ({already} quantization or integer nodes); "
                        "quantize the float model")
    if opts.calibrated and calib is None:
        raise UserError(missing_calib_message())
    preprocessed = "no"
    work = model
    if opts.preprocess and opts.scheme != "fp16":
        work, preprocessed = tools.preprocess(model)
    excluded = census.excluded_nodes(work, opts.exclude)
    for p in opts.exclude:
        if p not in excluded.values():
            names = [n.name for n in work.graph.node if n.name][:3]
            raise UserError(f"quantize exclude pattern {p!r} matches no node (node names look like "
                            f"{', '.join(repr(n) for n in names)})")
    calibration: dict[str, Any] | None = None
    if opts.scheme == "int8":
        reader = make_reader(calib, work, opts.batch_size, opts.samples)
        t_cal = time.perf_counter()
        out = tools.quantize_qdq(work, reader, opts, sorted(excluded))
        calibration = {"method": opts.method, "samples": reader.samples, "batches": reader.batches,
                       "batch_size": reader.batch_size, "source": calib.source,
                       "seconds": time.perf_counter() - t_cal}
        if opts.method == "percentile":
            calibration["percentile"] = opts.percentile
    elif opts.scheme == "int8-dynamic":
        out = tools.quantize_dynamic(work, opts, sorted(excluded))
    else:
        out = tools.convert_fp16(work, opts, sorted(excluded))
    out = _finish(out)
    try:
        onnx.checker.check_model(out)
    except onnx.checker.ValidationError as e:  # pragma: no cover - a tool bug
        raise UserError(f"the {opts.scheme} model fails the ONNX checker: {str(e).splitlines()[0]}") from None
    scales = census.check_scales(out) if opts.scheme != "fp16" else None
    supported = tools.supported_ops(opts.scheme) if opts.scheme != "fp16" else set()
    blocked = tools.fp16_blocked_ops() if opts.scheme == "fp16" else None
    op_types = set(tools.dynamic_op_types(opts)) if opts.scheme == "int8-dynamic" else None
    nodes = census.node_census(work, out, opts.scheme, excluded, supported, blocked, op_types)
    size = census.sizes(model, out)
    fid = None
    if check:
        batches, source, real = _feeds(calib, model, probe, opts.batch_size, seed)
        fid = fidelity.compare_models(model, out, batches, source, threads)
        fidelity.check_collapse(fid, opts.scheme, real)
    seconds = time.perf_counter() - t0
    ratio = size["ratio"]
    summary = (f"{opts.describe()}: {nodes['quantized']} nodes quantized, {nodes['float']} left in float; "
               f"model {size['before'] / 1e3:.1f} kB -> {size['after'] / 1e3:.1f} kB ({ratio:.3f}x)")
    agree = [r["top1_agreement"] for r in (fid or {}).get("outputs", []) if r.get("top1_agreement") is not None]
    if agree:
        summary += f"; top-1 agreement {100 * min(agree):.1f} % ({fid['source']})"
    data: dict[str, Any] = {
        "summary": summary, "scheme": opts.scheme, "description": opts.describe(),
        "method": opts.method if opts.calibrated else None,
        "activations": opts.activations if opts.calibrated else None,
        "weights": "float16" if opts.scheme == "fp16" else "int8 symmetric",
        "per_channel": opts.per_channel if opts.scheme != "fp16" else None,
        "keep_io_types": opts.keep_io_types if opts.scheme == "fp16" else None,
        "preprocess": preprocessed, "calibration": calibration,
        "exclude": list(opts.exclude), "excluded_nodes": sorted(excluded),
        "size": size, "nodes": nodes, "scales": scales, "fidelity": fid,
        "opset": {"before": _default_opset(model), "after": _default_opset(out)},
        "tool": f"onnxruntime {onnxruntime.__version__}", "seconds": seconds,
    }
    log.info("quantize: %s (%.2f s)", summary, seconds)
    return QuantizeResult(out, data)


def _default_opset(model: onnx.ModelProto) -> int | None:
    return next((int(o.version) for o in model.opset_import if (o.domain or "") in ("", "ai.onnx")), None)
