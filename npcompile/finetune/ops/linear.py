"""Linear algebra: Gemm, MatMul (of a weight or of two activations) and Einsum."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from npcompile.finetune.registry import OpNode, register


@register("Gemm", weights=(1, 2))
def _gemm(node: OpNode, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
    alpha, beta = node.get("alpha", 1.0), node.get("beta", 1.0)
    if node.get("transA", 0):
        a = a.t()
    trans_b = node.get("transB", 0)
    if c is None or c.numel() == 0:
        y = F.linear(a, b) if trans_b else a.matmul(b)
        return y if alpha == 1.0 else y * alpha
    if trans_b and alpha == 1.0 and beta == 1.0 and c.ndim == 1 and c.shape[0] == b.shape[0]:
        return F.linear(a, b, c)
    return torch.addmm(c, a, b.t() if trans_b else b, beta=beta, alpha=alpha)


@register("MatMul")
def _matmul(node: OpNode, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.matmul(a, b)


@register("Einsum")
def _einsum(node: OpNode, *xs: torch.Tensor) -> torch.Tensor:
    return torch.einsum(node.get("equation").replace(" ", ""), *xs)
