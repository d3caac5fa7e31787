"""Static shapes for analysis: shape inference with dynamic dimensions pinned to probe values.

Three sources, in order, each filling what the previous one left unknown: ONNX shape inference
(on the model without its large weights, integer shape computations folded between rounds), ONNX
Runtime's symbolic shape inference, and the shapes observed in one ONNX Runtime run on probe
inputs (:func:`probe_inputs`).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

from npcompile.errors import OPT, OptionError, UserError
from npcompile.graph.shape_sources import bodies, collect, observed, symbolic

__all__ = ["Probe", "ShapeMap", "input_specs", "probe_shapes", "probe_inputs", "static_shapes", "parse_input_shapes"]

log = logging.getLogger(__name__)

_SMALL = 4096


class ShapeMap(dict):
    """Tensor name -> static shape at the probe shapes; ``values`` holds the integer tensors that
    exporters compute from shapes (``Shape`` → ``Gather`` → ``Add`` …) and whose value does not
    depend on any dynamic input dimension (a slice bound computed from a channel count, say)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.static_values: dict[str, np.ndarray] = {}
        #: the same computations at the probe shapes, also where they depend on the input size
        self.probe_values: dict[str, np.ndarray] = {}
        #: for each element of those (flattened): the ``Shape`` elements ``(tensor, axis)`` it is
        #: computed from
        self.origins: dict[str, list[list[tuple[str, int]]]] = {}


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
            raise OptionError(f"bad {OPT:input_shapes} {spec!r}: expected NAME:DxDxD, e.g. input:1x3x224x224") from None
    return out


class Probe(dict):
    """Input name -> concrete shape for probing a model; ``given`` names the inputs whose shape the
    user fixed (their batch is never changed), ``input_values`` the inputs whose value the user fixed
    (inputs that select behaviour, such as a sample rate that picks an ``If`` branch)."""

    def __init__(self, *args, given: set[str] | None = None, values: dict[str, np.ndarray] | None = None,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.given: set[str] = set(given or ())
        self.input_values: dict[str, np.ndarray] = dict(values or {})


def probe_shapes(model: onnx.ModelProto, overrides: dict[str, tuple[int, ...]] | None = None,
                 batch: int = 1, values: dict[str, np.ndarray] | None = None,
                 samples: dict[str, tuple[int, ...]] | None = None) -> Probe:
    """A concrete shape for every model input: fixed dims as they are, a dynamic first dim set to
    ``batch``; other dynamic dims must come from ``overrides`` (which may fix any axis of any
    input, batch included) or from ``samples`` (the shapes of the user's data arrays, which size
    the dynamic axes after the first where their rank matches). ``values`` fixes inputs' values
    (their shapes follow them). An integer scalar input (it may select behaviour) needs a value."""
    samples = dict(samples or {})
    overrides = dict(overrides or {})
    values = {k: np.asarray(v) for k, v in (values or {}).items()}
    specs = input_specs(model)
    names = {s.name for s in specs}
    unknown = (set(overrides) | set(values)) - names
    if unknown:
        raise UserError(f"unknown input(s) {sorted(unknown)}; the model's inputs are {sorted(names)}")
    out = Probe(given=set(overrides) | set(values))
    for spec in specs:
        if not spec.type.HasField("tensor_type"):
            raise UserError(f"input {spec.name} is not a tensor")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(spec.type.tensor_type.elem_type)
        if spec.name in values:
            v = values[spec.name]
            dims = spec.type.tensor_type.shape.dim
            if len(dims) != v.ndim or any(d.HasField("dim_value") and d.dim_value != s for d, s in zip(dims, v.shape,
                                                                                                          strict=False)):
                raise UserError(f"the value given for input {spec.name} has shape {list(v.shape)}, the model wants "
                                f"{[d.dim_value if d.HasField('dim_value') else d.dim_param or '?' for d in dims]}")
            out.input_values[spec.name] = v.astype(dtype)
            out[spec.name] = tuple(v.shape)
            continue
        if spec.name in overrides:
            out[spec.name] = tuple(overrides[spec.name])
            continue
        shape_dims = spec.type.tensor_type.shape.dim
        if not shape_dims and spec.type.tensor_type.HasField("shape") and np.issubdtype(dtype, np.integer):
            raise OptionError(f"input {spec.name} is an integer scalar, which may select what the model does; "
                              f"give its value with {OPT:input_values} {spec.name}=VALUE")
        dims = []
        for i, d in enumerate(shape_dims):
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            elif i == 0:
                dims.append(batch)
            elif spec.name in samples and len(samples[spec.name]) == len(shape_dims):
                dims.append(samples[spec.name][i])
            else:
                raise OptionError(f"input {spec.name} has a dynamic dimension {i} "
                                  f"({d.dim_param or '?'}); give its size with {OPT:input_shapes} "
                                  f"{spec.name}:... (or data with {OPT:calib}/{OPT:eval}/{OPT:train})")
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


def probe_inputs(model: onnx.ModelProto, probe: dict[str, tuple[int, ...]], batch: int | None = 2,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs of the probe shapes, reproducible by seed: a dynamic batch is set to
    ``batch`` unless the user fixed that input's shape; values the user gave are used as they are
    (see :class:`Probe`)."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    given = getattr(probe, "given", set())
    values = getattr(probe, "input_values", {})
    for spec in input_specs(model):
        if spec.name in values:
            out[spec.name] = values[spec.name]
            continue
        shape = list(probe[spec.name])
        dims = spec.type.tensor_type.shape.dim
        if batch and dims and not dims[0].HasField("dim_value") and shape and spec.name not in given:
            shape[0] = batch
        dtype = onnx.helper.tensor_dtype_to_np_dtype(spec.type.tensor_type.elem_type)
        if np.issubdtype(dtype, np.floating):
            out[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            out[spec.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            out[spec.name] = rng.integers(0, 4, shape).astype(dtype)
    return out


def _wanted(model: onnx.ModelProto) -> set[str]:
    """Names of the tensors the main graph's nodes produce, and those of the nodes of its If
    branches (whose channels are followed too)."""
    out: set[str] = set()

    def visit(graph: onnx.GraphProto) -> None:
        for n in graph.node:
            out.update(o for o in n.output if o)
            if n.op_type == "If":
                for sub in bodies(n):
                    visit(sub)

    visit(model.graph)
    return out


def _symbolic_dims(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Dims of every tensor as ONNX shape inference sees them with the inputs' dynamic dimensions
    left symbolic: an int where a dim is the same for every input size, None otherwise."""
    sk = _skeleton(model, {})
    try:
        inferred = onnx.shape_inference.infer_shapes(sk)
    except Exception:
        return {}
    out: dict[str, list[int | None]] = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        tt = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and tt.HasField("shape"):
            out[vi.name] = [int(d.dim_value) if d.HasField("dim_value") else None for d in tt.shape.dim]
    for init in model.graph.initializer:
        out[init.name] = [int(d) for d in init.dims]
    return out


_INT_TYPES = (onnx.TensorProto.INT64, onnx.TensorProto.INT32)


def _eval_reference(node: onnx.NodeProto, v: list[np.ndarray | None]) -> np.ndarray | None:
    """Any other op on small known integer inputs, by ONNX's reference evaluator (single-output
    nodes of the default domain; None when it cannot)."""
    if node.domain not in ("", "ai.onnx") or len(node.output) != 1 or any(x is None for x in v) or \
            any(np.asarray(x).size > _SMALL for x in v) or node.op_type in ("If", "Loop", "Scan"):
        return None
    from onnx.reference import ReferenceEvaluator

    try:
        out = ReferenceEvaluator(node).run(None, {name: np.asarray(x) for name, x in zip(node.input, v,
                                                                                     strict=True)})[0]
    except Exception:
        return None
    out = np.asarray(out)
    if not (np.issubdtype(out.dtype, np.integer) or out.dtype == np.bool_) or out.size > _SMALL:
        return None
    return out


_STRUCTURAL = ("Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "Cast", "Identity", "Reshape")


def _no_deps(shape) -> np.ndarray:
    return np.zeros(shape, dtype=object)


def _union(bits) -> int:
    out = 0
    for b in bits:
        out |= int(b)
    return out


def _follow(node: onnx.NodeProto, v: list[np.ndarray | None], arrays: list[np.ndarray | None]
            ) -> np.ndarray | None:
    """Apply structural op ``node`` to ``arrays`` (per-element flags or ids standing in for the
    data inputs; indices, axes and shapes taken from the values ``v``)."""
    data = len(v) if node.op_type == "Concat" else 1
    return _eval_int(node, arrays[:data] + v[data:])


def _fold_static(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, list]]:
    """Integer tensors computed from shapes, evaluated at the probe shapes: those that are the same
    for every input size (each element carries a 'static' flag through the arithmetic), all of
    them, and which ``Shape`` elements (``(tensor, axis)``) each element is computed from."""
    symbolic: dict[str, list[int | None]] | None = None
    vals: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # value, static, dependency bits
    table: list[tuple[str, int]] = []
    for init in model.graph.initializer:
        if init.data_type in _INT_TYPES and np.prod(init.dims) <= _SMALL:
            a = numpy_helper.to_array(init)
            vals[init.name] = (a, np.ones(a.shape, bool), _no_deps(a.shape))
    for node in model.graph.node:
        op, ins = node.op_type, list(node.input)
        try:
            if op in ("Shape", "Size") and ins[0] in shapes:
                if symbolic is None:
                    symbolic = _symbolic_dims(model)
                full = np.array(shapes[ins[0]], dtype=np.int64)
                sym = symbolic.get(ins[0])
                flags = np.array([sym is not None and len(sym) == len(full) and sym[i] == full[i]
                                  for i in range(len(full))], bool)
                ids = np.array([1 << (len(table) + i) for i in range(len(full))], dtype=object)
                table.extend((ins[0], i) for i in range(len(full)))
                if op == "Size":
                    out, static = np.array(int(np.prod(full)), np.int64), np.array(flags.all())
                    origin = np.array(_union(ids), dtype=object)
                else:
                    start, end = _ints(node, "start", [0])[0], _ints(node, "end", [len(full)])[0]
                    out, static, origin = full[start:end], flags[start:end], ids[start:end]
            elif op == "Constant":
                tv = next((a.t for a in node.attribute if a.name == "value"), None)
                if tv is None or tv.data_type not in _INT_TYPES or np.prod(tv.dims) > _SMALL:
                    continue
                out = numpy_helper.to_array(tv)
                static, origin = np.ones(out.shape, bool), _no_deps(out.shape)
            elif not ins or any(i and i not in vals for i in ins):
                continue
            else:
                v = [vals[i][0] if i else None for i in ins]
                out = _eval_int(node, v)
                if out is None:
                    out = _eval_reference(node, v)
                    if out is None:
                        continue
                    static = np.full(out.shape, all(vals[i][1].all() for i in ins if i))
                    if op == "Where" and len(ins) == 3:  # a known condition picks elements as they are
                        origin = np.broadcast_to(np.where(v[0], vals[ins[1]][2], vals[ins[2]][2]), out.shape)
                    else:
                        origin = np.full(out.shape, _union(d for i in ins if i for d in np.ravel(vals[i][2])),
                                         dtype=object)
                elif op in _STRUCTURAL:  # flags and origins follow the data (indices, axes are constants)
                    masks = [vals[i][1].astype(np.int64) if i else None for i in ins]
                    static = np.asarray(_follow(node, v, masks), bool) & \
                        all(vals[i][1].all() for i in ins[(len(ins) if op == "Concat" else 1):] if i)
                    origin = np.asarray(_follow(node, v, [vals[i][2] if i else None for i in ins]))
                else:
                    flags = [vals[i][1] for i in ins if i]
                    static = np.broadcast_to(np.logical_and.reduce(np.broadcast_arrays(*flags)), np.shape(out)) \
                        if op != "ReduceProd" else np.array(all(f.all() for f in flags))
                    deps = [vals[i][2] for i in ins if i]
                    origin = np.array(_union(d for a in deps for d in np.ravel(a)), dtype=object) \
                        if op == "ReduceProd" else np.broadcast_to(np.bitwise_or.reduce(np.broadcast_arrays(*deps)),
                                                                   np.shape(out))
        except (IndexError, ValueError, KeyError, TypeError):
            continue
        vals[node.output[0]] = (np.asarray(out), np.asarray(static, bool), np.asarray(origin))
    inits = {i.name for i in model.graph.initializer}
    static_vals = {k: a for k, (a, s, _) in vals.items() if s.all() and k not in inits}
    computed = {k: a for k, (a, _, _) in vals.items() if k not in inits}
    origins = {k: [[table[b] for b in range(len(table)) if int(d) >> b & 1] for d in np.ravel(o)]
               for k, (_, _, o) in vals.items() if k not in inits and any(int(d) for d in np.ravel(o))}
    return static_vals, computed, origins


def static_shapes(model: onnx.ModelProto, probe: dict[str, tuple[int, ...]]) -> ShapeMap:
    """Shapes of every tensor whose dimensions are all known once inputs have the probe shapes.

    ONNX shape inference runs on the model without its large weights; integer shape
    computations (``Shape`` → ``Gather`` → ``Concat`` → ``Reshape``) are folded between rounds.
    What it leaves unknown comes from ONNX Runtime's symbolic shape inference and, failing that,
    from one ONNX Runtime run on probe inputs.
    """
    sk = _skeleton(model, probe)
    shapes = ShapeMap()
    for _ in range(4):
        try:
            inferred = onnx.shape_inference.infer_shapes(sk, data_prop=True)
        except Exception as e:
            log.warning("shape inference failed (%s); channel rules will see fewer shapes", e)
            break
        collect(inferred, shapes)
        if not _fold_shape_values(sk, shapes):
            break
    wanted = _wanted(model)
    if wanted - shapes.keys():
        symbolic(_skeleton(model, probe), shapes)
    if wanted - shapes.keys():
        observed(model, probe_inputs(model, probe, batch=None), wanted - shapes.keys(), shapes)
    for init in model.graph.initializer:
        shapes[init.name] = tuple(int(d) for d in init.dims)
    if any(n.op_type in ("Shape", "Size") for n in model.graph.node):
        shapes.static_values, shapes.probe_values, shapes.origins = _fold_static(model, shapes)
    return shapes
