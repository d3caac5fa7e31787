"""Normalisation: BatchNormalization (frozen or batch statistics), InstanceNormalization,
LayerNormalization, RMS normalisation (ONNX Runtime's SimplifiedLayerNormalization and opset 23's
RMSNormalization; the decomposed Pow/ReduceMean/Sqrt/Div form runs op by op), GroupNormalization, LRN."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from npcompile.finetune.registry import OpNode, register
from npcompile.finetune.tensors import present


def _extra_outputs_check(node: OpNode) -> str | None:
    extra = sorted(i for i in node.used if i > 0)
    if extra:
        return f"{node.op} with its training/statistics output(s) {extra} in use"
    return None


@register("BatchNormalization", weights=(1, 2), stats=(3, 4), check=_extra_outputs_check)
def _batch_norm(node: OpNode, x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor,
                var: torch.Tensor) -> torch.Tensor:
    eps = node.get("epsilon", 1e-5)
    batch = node.state.batch_stats
    # ONNX: running = running * momentum + batch * (1 - momentum); torch uses the complement
    return F.batch_norm(x, mean, var, scale, bias, training=batch, momentum=1.0 - node.get("momentum", 0.9),
                        eps=eps)


@register("InstanceNormalization", weights=(1, 2))
def _instance_norm(node: OpNode, x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.instance_norm(x, weight=scale, bias=bias, eps=node.get("epsilon", 1e-5))


@register("LayerNormalization", weights=(1, 2), check=_extra_outputs_check)
def _layer_norm(node: OpNode, x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
                ) -> torch.Tensor:
    axis = node.get("axis", -1) % x.ndim
    shape = tuple(x.shape[axis:])
    eps = node.get("epsilon", 1e-5)
    bias = bias if present(bias) else None
    if tuple(scale.shape) == shape and (bias is None or tuple(bias.shape) == shape):
        return F.layer_norm(x, shape, scale, bias, eps)
    y = F.layer_norm(x, shape, None, None, eps) * scale
    return y if bias is None else y + bias


@register("SimplifiedLayerNormalization", "RMSNormalization", weights=(1,), check=_extra_outputs_check)
def _rms_norm(node: OpNode, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x / sqrt(mean(x², over the axes from axis on) + epsilon) * scale``, in float32 at least
    (``stash_type`` 1, the default) for half-precision inputs."""
    axis = node.get("axis", -1) % x.ndim
    shape = tuple(x.shape[axis:])
    eps = node.get("epsilon", 1e-5)
    low = x.dtype in (torch.float16, torch.bfloat16) and node.get("stash_type", 1) == 1
    xs = x.float() if low else x
    if tuple(scale.shape) == shape and scale.dtype == xs.dtype:
        y = F.rms_norm(xs, shape, scale, eps)
        return y.to(x.dtype) if low else y
    y = F.rms_norm(xs, shape, None, eps)
    return (y.to(x.dtype) if low else y) * scale


@register("GroupNormalization", weights=(1, 2))
def _group_norm(node: OpNode, x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    groups = node.get("num_groups")
    c = x.shape[1]
    if scale.numel() != c:  # opset 18: one scale per group
        scale = scale.repeat_interleave(c // groups)
        bias = bias.repeat_interleave(c // groups)
    return F.group_norm(x, groups, scale, bias, node.get("epsilon", 1e-5))


@register("LRN")
def _lrn(node: OpNode, x: torch.Tensor) -> torch.Tensor:
    size = node.get("size")
    alpha, beta, bias = node.get("alpha", 1e-4), node.get("beta", 0.75), node.get("bias", 1.0)
    before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
    sq = x * x
    pad = [0, 0] * (x.ndim - 2) + [before, after]
    sq = F.pad(sq, pad)
    c = x.shape[1]
    acc = sum(sq.narrow(1, i, c) for i in range(size))
    return x / (bias + (alpha / size) * acc) ** beta
