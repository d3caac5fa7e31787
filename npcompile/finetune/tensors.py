"""ONNX tensors to torch and back: dtypes, initializer values, and writing trained values into a
``TensorProto`` in its original dtype and storage field; small helpers the op functions share."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from npcompile.errors import UserError

__all__ = ["FLOAT_CODES", "floats", "ints", "present", "store", "tensor_from_proto", "torch_dtype"]

_TORCH_DTYPES: dict[int, torch.dtype] = {
    onnx.TensorProto.FLOAT: torch.float32,
    onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.FLOAT16: torch.float16,
    onnx.TensorProto.BFLOAT16: torch.bfloat16,
    onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.UINT8: torch.uint8,
    onnx.TensorProto.INT16: torch.int16,
    onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.BOOL: torch.bool,
}
for _name, _code in (("uint16", onnx.TensorProto.UINT16), ("uint32", onnx.TensorProto.UINT32),
                     ("uint64", onnx.TensorProto.UINT64)):
    if hasattr(torch, _name):
        _TORCH_DTYPES[_code] = getattr(torch, _name)

FLOAT_CODES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
               onnx.TensorProto.BFLOAT16)


def torch_dtype(elem_type: int) -> torch.dtype:
    """The torch dtype of an ONNX element type (``UserError`` if torch has none)."""
    try:
        return _TORCH_DTYPES[int(elem_type)]
    except KeyError:
        name = onnx.TensorProto.DataType.Name(int(elem_type)) if int(elem_type) in \
            onnx.TensorProto.DataType.values() else str(elem_type)
        raise UserError(f"cannot train: torch has no dtype for ONNX {name}") from None


def tensor_from_proto(tp: onnx.TensorProto) -> torch.Tensor:
    """The value of an initializer (or Constant) as a torch tensor of the matching dtype."""
    if tp.data_type == onnx.TensorProto.STRING:
        raise UserError(f"cannot train: string tensor {tp.name!r}")
    dtype = torch_dtype(tp.data_type)
    arr = numpy_helper.to_array(tp)
    if tp.data_type == onnx.TensorProto.BFLOAT16:
        return torch.from_numpy(np.asarray(arr, dtype=np.float32).copy()).to(torch.bfloat16)
    return torch.from_numpy(np.array(arr, copy=True)).to(dtype)


def ints(value: Any) -> list[int]:
    """A tensor or sequence as a list of Python ints."""
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.reshape(-1).tolist()]
    return [int(v) for v in value]


def floats(value: Any) -> list[float]:
    """A tensor or sequence as a list of Python floats."""
    if isinstance(value, torch.Tensor):
        return [float(v) for v in value.reshape(-1).tolist()]
    return [float(v) for v in value]


def present(t: torch.Tensor | None) -> bool:
    """An optional input is given and not empty."""
    return t is not None and t.numel() > 0


def store(tp: onnx.TensorProto, value: torch.Tensor) -> None:
    """Set ``tp``'s values, keeping its dtype and the field it stores them in."""
    value = value.detach().cpu().contiguous()
    code = tp.data_type
    if code == onnx.TensorProto.BFLOAT16:
        bits = value.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    elif code == onnx.TensorProto.FLOAT16:
        bits = value.to(torch.float16).numpy().view(np.uint16)
    else:
        bits = None
    arr = value.numpy().astype(helper.tensor_dtype_to_np_dtype(code)) if bits is None else bits
    if tp.HasField("raw_data") or code not in FLOAT_CODES:
        tp.raw_data = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
        return
    if code == onnx.TensorProto.FLOAT:
        del tp.float_data[:]
        tp.float_data.extend(arr.reshape(-1).tolist())
    elif code == onnx.TensorProto.DOUBLE:
        del tp.double_data[:]
        tp.double_data.extend(arr.reshape(-1).tolist())
    else:  # float16 / bfloat16 bits in int32_data
        del tp.int32_data[:]
        tp.int32_data.extend(int(b) for b in arr.reshape(-1))
