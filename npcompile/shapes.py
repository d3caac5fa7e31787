"""Static shapes for analysis: shape inference with dynamic dimensions pinned to probe values."""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper

from npcompile.errors import UserError

__all__ = ["input_specs", "probe_shapes", "static_shapes", "parse_input_shapes"]

log = logging.getLogger(__name__)

_SMALL = 4096


def input_specs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are real inputs (not initializers listed as inputs)."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def parse_input_shapes(specs: list[str] | None) -> dict[str, tuple[int, ...]]:
    """Parse ``name:1x3x224x224`` strings."""
    out: dict[str, tuple[int, ...]] = {}
    for spec in specs or []:
        name, sep, dims = spec.rpartition(":")
        try:
            if not sep or not name:
                raise ValueError
            out[name] = tuple(int(d) for d in dims.lower().split("x"))
            if any(d <= 0 for d in out[name]):
                raise ValueError
        except ValueError:
            raise UserError(f"bad --input-shape {spec!r}: expected NAME:DxDxD, e.g. input:1x3x224x224") from None
    return out


def probe_shapes(model: onnx.ModelProto, overrides: dict[str, tuple[int, ...]] | None = None,
                 batch: int = 1) -> dict[str, tuple[int, ...]]:
    """A concrete shape for every model input: fixed dims as they are, a dynamic first dim set to
    ``batch``; other dynamic dims must come from ``overrides``."""
    overrides = overrides or {}
    specs = input_specs(model)
    unknown = set(overrides) - {s.name for s in specs}
    if unknown:
        raise UserError(f"--input-shape names unknown input(s) {sorted(unknown)}; the model's inputs "
                        f"are {[s.name for s in specs]}")
    out: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        if spec.name in overrides:
            out[spec.name] = overrides[spec.name]
            continue
        if not spec.type.HasField("tensor_type"):
            raise UserError(f"input {spec.name} is not a tensor")
        dims = []
        for i, d in enumerate(spec.type.tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            elif i == 0:
                dims.append(batch)
            else:
                raise UserError(f"input {spec.name} has a dynamic dimension {i} "
                                f"({d.dim_param or '?'}); give its size with --input-shape "
                                f"{spec.name}:...")
        out[spec.name] = tuple(dims)
    return out


def _skeleton(model: onnx.ModelProto, probe: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """The model without its big weights (they become typed inputs): fast to infer."""
    g = onnx.GraphProto(name=model.graph.name)
    g.node.extend(model.graph.node)
    g.output.extend(model.graph.output)
    init_names = set()
    for init in model.graph.initializer:
        init_names.add(init.name)
        numel = int(np.prod(init.dims)) if init.dims else 1
        if numel <= _SMALL:
            g.initializer.append(init)
        else:
            g.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    for inp in model.graph.input:
        if inp.name in init_names:
            continue
        if inp.name in probe:
            elem = inp.type.tensor_type.elem_type
            g.input.append(helper.make_tensor_value_info(inp.name, elem, list(probe[inp.name])))
        else:
            g.input.append(inp)
    sk = helper.make_model(g, opset_imports=list(model.opset_import))
    sk.ir_version = model.ir_version
    sk.functions.extend(model.functions)
    return sk


def _infer(sk: onnx.ModelProto) -> list[onnx.ModelProto]:
    results = []
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        results.append(SymbolicShapeInference.infer_shapes(sk, auto_merge=True))
    except Exception as e:  # it does not know every op; ONNX's own inference fills in
        log.debug("symbolic shape inference failed: %s", e)
    try:
        results.append(onnx.shape_inference.infer_shapes(sk, data_prop=True))
    except Exception as e:
        log.warning("shape inference failed (%s); channel rules will see fewer shapes", e)
    return results


def static_shapes(model: onnx.ModelProto, probe: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Shapes of every tensor whose dimensions are all known once inputs have the probe shapes."""
    sk = _skeleton(model, probe)
    shapes: dict[str, tuple[int, ...]] = {}
    for inferred in reversed(_infer(sk)):
        for vi in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
            tt = vi.type.tensor_type
            if not vi.type.HasField("tensor_type") or not tt.HasField("shape"):
                continue
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
            if all(d >= 0 for d in dims):
                shapes[vi.name] = tuple(int(d) for d in dims)
    for init in model.graph.initializer:
        shapes[init.name] = tuple(int(d) for d in init.dims)
    return shapes
