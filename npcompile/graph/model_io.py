"""Loading, normalising and saving ONNX models.

Every way a model comes in (a path, an ``onnx.ModelProto``, a ``torch.nn.Module``) ends as a checked
``onnx.ModelProto`` of opset 11 or newer; every way it goes out is an atomic write.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper, numpy_helper

from npcompile.errors import UserError

__all__ = [
    "MIN_OPSET",
    "load_model",
    "to_graph",
    "to_model",
    "fold_constants",
    "save_model",
    "serialized",
    "atomic_write_bytes",
    "default_opset",
]

log = logging.getLogger(__name__)

MIN_OPSET = 11
UPGRADE_OPSET = 13
_TWO_GB = 2**31 - 1


def default_opset(model: onnx.ModelProto) -> int:
    """The opset version of the default (``ai.onnx``) domain."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


def _uses_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def _load_path(path: Path, info: dict[str, Any] | None = None) -> onnx.ModelProto:
    if not path.exists():
        raise UserError(f"model file not found: {path}")
    if path.is_dir():
        raise UserError(f"model path is a directory, not an ONNX file: {path}")
    if path.stat().st_size == 0:
        raise UserError(f"model file is empty: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends
        raise UserError(f"not a valid ONNX model: {path} ({type(e).__name__})") from None
    if not model.HasField("graph") or not model.graph.node:
        raise UserError(f"not a valid ONNX model (no graph or no nodes): {path}")
    if info is not None:
        info["external_data"] = _uses_external_data(model)
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
    except Exception as e:  # OSError, ValueError, onnx's ValidationError for unsafe or missing files
        msg = " ".join(str(e).split()) or type(e).__name__
        raise UserError(f"cannot read the model's external data: {msg}") from None
    return model


def _torch_to_onnx(module: Any, example_inputs: Any) -> onnx.ModelProto:
    try:
        import torch
    except ImportError:  # pragma: no cover - depends on the environment
        raise UserError(
            "a torch.nn.Module was given but torch is not installed: "
            "pip install 'npcompile[torch]'"
        ) from None
    if example_inputs is None:
        raise UserError("a torch.nn.Module needs example_inputs to be exported to ONNX")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    names = ["input"] if len(example_inputs) == 1 else [f"input{i}" for i in range(len(example_inputs))]
    dynamic = {n: {0: "batch"} for n in names}
    dynamic["output"] = {0: "batch"}
    module = module.eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        with torch.no_grad():
            torch.onnx.export(
                module,
                example_inputs,
                path,
                dynamo=False,
                opset_version=17,
                input_names=names,
                output_names=["output"],
                dynamic_axes=dynamic,
            )
        return onnx.load(path)


def load_model(source: Any, example_inputs: Any = None, info: dict[str, Any] | None = None) -> onnx.ModelProto:
    """Load a model from a path, a ``ModelProto`` or a ``torch.nn.Module``, checked and at opset ≥ 11.

    Raises :class:`UserError` for anything the user has to fix (missing file, corrupt protobuf,
    checker failure, opset that cannot be upgraded). ``info``, when given, receives
    ``external_data``: whether the file kept its weights outside.
    """
    if isinstance(source, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(source)
    elif isinstance(source, (str, os.PathLike)):
        model = _load_path(Path(source), info)
    elif type(source).__module__.startswith("torch") or hasattr(source, "state_dict"):
        model = _torch_to_onnx(source, example_inputs)
    else:
        raise UserError(f"cannot load a model from a {type(source).__name__}")
    _check(model)
    opset = default_opset(model)
    if opset < MIN_OPSET:
        model = _upgrade(model, opset)
    _lower_ir(model)
    return normalize(model)


def _lower_ir(model: onnx.ModelProto) -> None:
    """Models written by a newer onnx than ONNX Runtime knows carry an IR version it refuses; the
    IR version the model's opsets need is enough (nothing newer is used by opsets that old)."""
    needed = max(helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True), 8)
    if model.ir_version > 10 and model.ir_version > needed:
        log.info("lowering IR version %d to %d for ONNX Runtime", model.ir_version, needed)
        model.ir_version = needed


_FOLDABLE = ("Constant", "ConstantOfShape", "Transpose", "Identity", "Cast", "Reshape", "Squeeze", "Unsqueeze")


def normalize(model: onnx.ModelProto) -> onnx.ModelProto:
    """Weights computed by ``Constant``/``ConstantOfShape`` nodes or by layout ops on constants
    become initializers (so parameters are counted and pruned alike); other models are returned
    as they are."""
    consts = {i.name for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in ("Constant", "ConstantOfShape"):
            consts.update(node.output)
    needed = any(
        node.op_type in _FOLDABLE and node.domain in ("", "ai.onnx")
        and (node.op_type == "Constant" or all(i in consts for i in node.input if i))
        for node in model.graph.node
    )
    return to_model(to_graph(model), model) if needed else model


def _check_tensor_data(model: onnx.ModelProto) -> None:
    """Every initializer (and Constant value) holds as much data as its shape says: the checker does
    not look, and a truncated or padded tensor would only fail deep inside a rewrite."""
    tensors = list(model.graph.initializer) + [a.t for n in model.graph.node if n.op_type == "Constant"
                                                for a in n.attribute if a.name == "value" and a.HasField("t")]
    for t in tensors:
        if t.data_location == onnx.TensorProto.EXTERNAL or not t.HasField("raw_data"):
            continue
        if t.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
            continue  # no fixed item size in bytes
        try:
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        except (KeyError, ValueError, TypeError):
            continue
        want = int(np.prod(t.dims, dtype=np.int64)) * itemsize
        if len(t.raw_data) != want:
            raise UserError(f"tensor {t.name} holds {len(t.raw_data)} bytes, its shape {list(t.dims)} needs {want}")


def _check(model: onnx.ModelProto) -> None:
    _check_tensor_data(model)
    try:
        data = serialized(model)
        if data is None or len(data) > _TWO_GB:
            return  # the in-memory checker cannot take > 2 GB; shape inference checks later
        onnx.checker.check_model(data)  # the bytes: the checker would serialize the model again
    except ValueError:
        return
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "invalid model"
        raise UserError(f"model fails the ONNX checker: {first}") from None
    except Exception as e:
        raise UserError(f"model fails the ONNX checker: {type(e).__name__}: {e}".splitlines()[0]) from None


def _upgrade(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    if opset < 7:
        raise UserError(f"opset {opset} is too old (npcompile needs opset {MIN_OPSET} or newer)")
    try:
        upgraded = onnx.version_converter.convert_version(model, UPGRADE_OPSET)
        onnx.checker.check_model(upgraded)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"opset {opset} is older than {MIN_OPSET} and could not be upgraded: {msg}"
        ) from None
    log.info("upgraded the model from opset %d to %d", opset, UPGRADE_OPSET)
    return upgraded


def _constant_node_value(node: gs.Node) -> np.ndarray | None:
    attrs = node.attrs
    if "value" in attrs and isinstance(attrs["value"], gs.Constant):
        return attrs["value"].values
    for key, dtype in (("value_float", np.float32), ("value_int", np.int64)):
        if key in attrs:
            return np.array(attrs[key], dtype=dtype)
    for key, dtype in (("value_floats", np.float32), ("value_ints", np.int64)):
        if key in attrs:
            return np.array(list(attrs[key]), dtype=dtype)
    return None


def _fold_slice(node: gs.Node) -> np.ndarray | None:
    """The value of a Slice of a constant by constant starts/ends/axes/steps (opset 10+), or by its
    attributes (opset 1-9)."""
    ins = list(node.inputs)
    if not ins or not isinstance(ins[0], gs.Constant):
        return None
    x = ins[0].values
    if len(ins) == 1:
        starts, ends = node.attrs.get("starts"), node.attrs.get("ends")
        axes, steps = node.attrs.get("axes"), None
        if starts is None or ends is None:
            return None
    else:
        parts = []
        for t in ins[1:5] + [None] * (5 - len(ins)):
            if t is None or (isinstance(t, gs.Variable) and not t.name):
                parts.append(None)
            elif isinstance(t, gs.Constant):
                parts.append([int(v) for v in t.values.reshape(-1)])
            else:
                return None
        starts, ends, axes, steps = parts
        if starts is None or ends is None:
            return None
    axes = list(axes) if axes is not None else list(range(len(starts)))
    steps = list(steps) if steps is not None else [1] * len(starts)
    index = [slice(None)] * x.ndim
    for a, b, e, st in zip(axes, starts, ends, steps, strict=True):
        index[int(a) % x.ndim] = slice(int(b), int(e), int(st))
    return x[tuple(index)]


def _fold_value(node: gs.Node) -> np.ndarray | None:
    """The value of a node whose inputs are all constants, for the few ops exporters apply to
    weights (a transposed Linear weight, a cast, a reshape, a filled shape); ``None`` otherwise."""
    if node.op == "Constant":
        return _constant_node_value(node)
    if node.op == "Slice":  # optional inputs may be left out (empty names)
        return _fold_slice(node)
    if not node.inputs or not all(isinstance(t, gs.Constant) for t in node.inputs):
        return None
    x = node.inputs[0].values
    if node.op == "Concat":  # gates reordered by an exporter (Slice + Concat of a recurrent weight)
        return np.concatenate([t.values for t in node.inputs], axis=int(node.attrs["axis"]))
    if node.op == "Gather" and x.size <= 1 << 24:
        return np.take(x, node.inputs[1].values.astype(np.int64), axis=int(node.attrs.get("axis", 0)))
    if node.op == "ConstantOfShape":
        fill = node.attrs.get("value")
        fill = fill.values.reshape(-1)[:1] if isinstance(fill, gs.Constant) else np.zeros(1, np.float32)
        return np.full([int(d) for d in x], fill[0], dtype=fill.dtype)
    if node.op == "Transpose":
        return np.transpose(x, node.attrs.get("perm"))
    if node.op == "Identity":
        return x
    if node.op == "Cast":
        return x.astype(onnx.helper.tensor_dtype_to_np_dtype(int(node.attrs["to"])))
    if node.op == "Reshape":
        shape = [int(d) for d in node.inputs[1].values]
        shape = [x.shape[i] if d == 0 and not node.attrs.get("allowzero", 0) else d for i, d in enumerate(shape)]
        return x.reshape(shape)
    if node.op in ("Unsqueeze", "Squeeze"):
        axes = node.attrs.get("axes") or ([int(a) for a in node.inputs[1].values] if len(node.inputs) > 1
                                          else None)
        if node.op == "Squeeze":
            return np.squeeze(x, tuple(axes)) if axes else np.squeeze(x)
        out = x
        for a in sorted(int(a) % (x.ndim + len(axes)) for a in axes):
            out = np.expand_dims(out, a)
        return out
    return None


def to_graph(model: onnx.ModelProto) -> gs.Graph:
    """Import a model as an onnx-graphsurgeon graph; ``Constant`` nodes, and ops applied to
    constants only (ConstantOfShape, Transpose, Cast, Reshape, Squeeze, Unsqueeze, Identity), become
    initializers."""
    graph = gs.import_onnx(model)
    graph.toposort()
    fold_constants(graph)
    return graph


def fold_constants(graph: gs.Graph, apply: bool = True) -> bool:
    """Fold constant-only nodes of ``graph`` and of the bodies of its If / Loop / Scan nodes (what
    :func:`to_graph` does after importing); returns whether there was any. ``apply=False``: only
    say whether there is one, leaving the graph as it is."""
    outputs = {t.name for t in graph.outputs}
    found = False
    for node in list(graph.nodes):
        for sub in node.subgraphs():
            found = fold_constants(sub, apply) or found
            if found and not apply:
                return True
        if (node.domain or "") not in ("", "ai.onnx") or len(node.outputs) != 1:
            continue
        out = node.outputs[0]
        if out.name in outputs:
            continue
        try:
            value = _fold_value(node)
        except (ValueError, TypeError, KeyError, IndexError):
            value = None
        if value is None:
            continue
        if not apply:
            return True
        found = True
        value = np.asarray(value)
        const = gs.Constant(out.name, value if value.flags.c_contiguous else value.copy())
        for consumer in list(out.outputs):
            for i, t in enumerate(consumer.inputs):
                if t is out:
                    consumer.inputs[i] = const
        node.outputs.clear()
    if apply:
        graph.cleanup()
    return found


def to_model(graph: gs.Graph, template: onnx.ModelProto) -> onnx.ModelProto:
    """Export a graph back to a model, keeping the template's metadata and opset imports."""
    graph.cleanup().toposort()
    model = gs.export_onnx(graph, do_type_check=False)
    del model.opset_import[:]
    model.opset_import.extend(template.opset_import)
    # IR < 4 wants every initializer listed as a graph input; folded weights are not, so such old
    # models move to the oldest IR version their opsets allow.
    min_ir = helper.find_min_ir_version_for(list(template.opset_import), ignore_unknown=True)
    model.ir_version = max(template.ir_version, min_ir, 4)
    model.producer_name = "npcompile"
    from npcompile import __version__

    model.producer_version = __version__
    model.domain = template.domain
    model.model_version = template.model_version
    model.doc_string = template.doc_string
    del model.metadata_props[:]
    model.metadata_props.extend(template.metadata_props)
    del model.functions[:]
    model.functions.extend(template.functions)
    return model


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def save_model(model: onnx.ModelProto, path: str | os.PathLike, external_data: bool | None = None,
               data: bytes | None = None) -> None:
    """Save atomically. Models over 2 GB (or with ``external_data=True``) keep their weights in
    ``<name>.data`` beside the model file, also written atomically. ``data``: the model already
    serialized with ``deterministic=True`` (a large model is not serialized again)."""
    path = Path(path)
    if data is not None and external_data is None:
        external_data = len(data) > _TWO_GB
    if external_data is None:
        data = serialized(model, deterministic=True)  # serialized once: its length is the size
        external_data = data is None or len(data) > _TWO_GB
    if not external_data:
        atomic_write_bytes(path, data if data is not None else model.SerializeToString(deterministic=True))
        return
    location = path.name + ".data"
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".npcompile-") as tmp:
        tmp_model = Path(tmp) / path.name
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        onnx.save_model(copy, str(tmp_model), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=location, size_threshold=1024)
        if (Path(tmp) / location).exists():
            os.replace(Path(tmp) / location, path.parent / location)
        os.replace(tmp_model, path)


def serialized(model: onnx.ModelProto, deterministic: bool = False) -> bytes | None:
    """The model's bytes, or None where protobuf cannot serialize it (over its 2 GB limit)."""
    try:
        return model.SerializeToString(deterministic=deterministic)
    except Exception:
        return None


def make_opset_model(graph_proto: onnx.GraphProto, opset: int = 13) -> onnx.ModelProto:
    """Build a model around a graph with the default-domain opset (a test and example helper)."""
    return helper.make_model(graph_proto, opset_imports=[helper.make_opsetid("", opset)])


def initializer(name: str, array: np.ndarray) -> onnx.TensorProto:
    """Shorthand for :func:`onnx.numpy_helper.from_array` (used by tests and examples)."""
    return numpy_helper.from_array(np.asarray(array), name)
