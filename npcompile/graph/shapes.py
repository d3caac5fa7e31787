"""Static shapes for analysis: shape inference with dynamic dimensions pinned to probe values."""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

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


def _ints(node: onnx.NodeProto, name: str, default: list[int] | None = None) -> list[int] | None:
    for a in node.attribute:
        if a.name == name:
            return list(a.ints) if a.ints else [a.i]
    return default


def _fold_shape_values(sk: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> int:
    """Evaluate the small integer computations exporters build from ``Shape`` (Shape, Gather,
    Unsqueeze, Concat, Slice, arithmetic...) now that input shapes are fixed, and store their
    values as initializers so shape inference sees constant Reshape targets. Returns the count."""
    values: dict[str, np.ndarray] = {}
    for init in sk.graph.initializer:
        if init.data_type == onnx.TensorProto.INT64 and len(init.dims) <= 1:
            values[init.name] = numpy_helper.to_array(init)
    added = 0
    for node in sk.graph.node:
        op, ins = node.op_type, list(node.input)
        try:
            if op == "Shape" and ins[0] in shapes:
                full = np.array(shapes[ins[0]], dtype=np.int64)
                start, end = _ints(node, "start", [0])[0], _ints(node, "end", [len(full)])[0]
                out = full[start:end]
            elif op == "Size" and ins[0] in shapes:
                out = np.array(int(np.prod(shapes[ins[0]])), dtype=np.int64)
            elif op == "Constant":
                t = next((a.t for a in node.attribute if a.name == "value"), None)
                if t is None or t.data_type != onnx.TensorProto.INT64:
                    continue
                out = numpy_helper.to_array(t)
            elif not ins or any(i and i not in values for i in ins):
                continue
            else:
                v = [values[i] if i else None for i in ins]
                out = _eval_int(node, v)
                if out is None:
                    continue
        except (IndexError, ValueError, KeyError):
            continue
        out = np.asarray(out, dtype=np.int64)
        values[node.output[0]] = out
        sk.graph.initializer.append(numpy_helper.from_array(out, node.output[0]))
        added += 1
    if added:
        produced = {i.name for i in sk.graph.initializer}
        keep = [n for n in sk.graph.node if not (len(n.output) == 1 and n.output[0] in produced)]
        del sk.graph.node[:]
        sk.graph.node.extend(keep)
    return added


def _eval_int(node: onnx.NodeProto, v: list[np.ndarray | None]) -> np.ndarray | None:
    op = node.op_type
    if op == "Gather":
        return np.take(v[0], v[1], axis=_ints(node, "axis", [0])[0])
    if op == "Unsqueeze":
        axes = v[1] if len(v) > 1 and v[1] is not None else _ints(node, "axes")
        out = v[0]
        for a in sorted(int(x) % (out.ndim + len(axes)) for x in np.ravel(axes)):
            out = np.expand_dims(out, a)
        return out
    if op == "Squeeze":
        axes = v[1] if len(v) > 1 and v[1] is not None else _ints(node, "axes")
        return np.squeeze(v[0], tuple(int(a) for a in np.ravel(axes))) if axes is not None else np.squeeze(v[0])
    if op == "Concat":
        return np.concatenate([np.atleast_1d(x) for x in v], axis=_ints(node, "axis", [0])[0])
    if op == "Slice":
        axes = v[3] if len(v) > 3 and v[3] is not None else range(len(v[1]))
        steps = v[4] if len(v) > 4 and v[4] is not None else [1] * len(v[1])
        idx = [slice(None)] * v[0].ndim
        for s, e, a, st in zip(v[1], v[2], axes, steps, strict=False):
            idx[int(a)] = slice(int(s), int(e), int(st))
        return v[0][tuple(idx)]
    if op in ("Cast", "Identity"):
        return v[0]
    if op == "Reshape":
        return v[0].reshape(v[1])
    if op in ("Add", "Sub", "Mul", "Div", "Max", "Min"):
        fn = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.floor_divide,
              "Max": np.maximum, "Min": np.minimum}[op]
        return fn(v[0], v[1])
    if op == "ReduceProd":
        return np.prod(v[0], keepdims=bool(_ints(node, "keepdims", [1])[0]))
    return None


def _collect(inferred: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> None:
    for vi in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or not tt.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
        if all(d >= 0 for d in dims):
            shapes[vi.name] = tuple(int(d) for d in dims)


def static_shapes(model: onnx.ModelProto, probe: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Shapes of every tensor whose dimensions are all known once inputs have the probe shapes.

    ONNX shape inference runs on the model without its large weights; integer shape
    computations (``Shape`` → ``Gather`` → ``Concat`` → ``Reshape``) are folded between rounds.
    """
    sk = _skeleton(model, probe)
    shapes: dict[str, tuple[int, ...]] = {}
    for _ in range(4):
        try:
            inferred = onnx.shape_inference.infer_shapes(sk, data_prop=True)
        except Exception as e:
            log.warning("shape inference failed (%s); channel rules will see fewer shapes", e)
            break
        _collect(inferred, shapes)
        if not _fold_shape_values(sk, shapes):
            break
    for init in model.graph.initializer:
        shapes[init.name] = tuple(int(d) for d in init.dims)
    return shapes
