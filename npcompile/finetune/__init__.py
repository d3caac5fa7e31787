"""Fine-tuning on the ONNX graph: an ONNX model run and trained in PyTorch, without its training code.

- :mod:`.graph_module`: :class:`GraphModule`, the graph as a ``torch.nn.Module`` (parameters and
  buffers from initializers and Constant nodes, execution in graph order, write-back of trained
  weights); :mod:`.roles` decides which initializers train.
- :mod:`.registry`: the decorator registry of torch functions, one per ONNX op type;
  :mod:`.ops`: the functions, one module per op family; :mod:`.tensors`: dtypes and storage.
- :func:`to_torch`: the public entry point for users' own training loops.

Importing this package does not import torch; :func:`to_torch` and :class:`GraphModule` do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import onnx

    from npcompile.finetune.graph_module import GraphModule

__all__ = ["GraphModule", "to_torch"]


def to_torch(model: onnx.ModelProto, freeze_bn_stats: bool = True) -> GraphModule:
    """A trainable ``torch.nn.Module`` computing ``model`` (an ONNX model, e.g. a compiled one).

    ``module(*inputs)`` takes the graph inputs in graph-input order (or by name; tensors or NumPy
    arrays) and returns the graph's single output, or a tuple of its outputs in graph order. The
    module's parameters (``module.parameters()``) are the graph's floating-point weights; biases,
    normalisation scales and embedding tables included; shapes, masks and BatchNormalization
    statistics stay constant (``freeze_bn_stats=False``: batch statistics in training mode,
    running statistics updated). Train it with any PyTorch loop, then
    ``module.write_back()`` returns a copy of ``model`` with the trained weights, in their
    original dtypes and storage, for ONNX Runtime or another compile.

    Raises :class:`~npcompile.errors.UserError` naming every op type that has no torch function
    (the model is never run with a wrong one). Needs PyTorch (the ``torch`` extra).

    Example::

        module = npcompile.finetune.to_torch(result.model)
        opt = torch.optim.Adam(module.parameters(), lr=1e-4)
        for x, y in loader:
            loss = torch.nn.functional.cross_entropy(module(x), y)
            opt.zero_grad(); loss.backward(); opt.step()
        onnx.save(module.eval().write_back(), "trained.onnx")
    """
    from npcompile.finetune.graph_module import GraphModule

    return GraphModule(model, freeze_bn_stats=freeze_bn_stats)


def __getattr__(name: str) -> Any:
    if name == "GraphModule":
        from npcompile.finetune.graph_module import GraphModule

        return GraphModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
