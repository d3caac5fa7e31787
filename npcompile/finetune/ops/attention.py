"""Attention: ONNX's ``Attention`` op (opset 23/24): scaled dot-product attention over 3-D or 4-D
query/key/value, multi-head, grouped-query and multi-query, with a boolean or additive mask,
``is_causal``, a key/value cache (``past_key``/``past_value`` → ``present_key``/``present_value``),
``softcap``, the ``qk_matmul_output`` of every mode and ``nonpad_kv_seqlen``.

The decomposed attention exporters write at lower opsets (MatMul, Softmax, Where, ...) runs op by op.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from npcompile.finetune.registry import OpNode, register
from npcompile.finetune.tensors import present


def _heads(x: torch.Tensor, n: int | None, what: str) -> torch.Tensor:
    """(batch, seq, heads * dim) to (batch, heads, seq, dim); 4-D inputs are already so."""
    if x.ndim == 4:
        return x
    if not n:
        raise ValueError(f"3-D {what} needs the {what[0]}_num_heads attribute" if what != "value"
                         else "3-D value needs kv_num_heads")
    b, s, hidden = x.shape
    return x.reshape(b, s, n, hidden // n).transpose(1, 2)


def _bias(node: OpNode, q_len: int, total: int, like: torch.Tensor, mask: torch.Tensor | None, past: int,
          nonpad: torch.Tensor | None) -> torch.Tensor | None:
    """The additive bias of the scores (batch, heads, q, total) from the mask, causality and the
    non-padded key lengths; ``None`` when there is none."""
    bias = None
    if present(mask):
        if mask.dtype == torch.bool:
            bias = torch.zeros(mask.shape, dtype=like.dtype, device=like.device).masked_fill(~mask, -math.inf)
        else:
            bias = mask.to(like.dtype)
        if bias.shape[-1] < total:  # a mask shorter than the keys pads with -inf (as ONNX Runtime)
            bias = F.pad(bias, (0, total - bias.shape[-1]), value=-math.inf)
    blocked = None
    if node.get("is_causal", 0):
        i = torch.arange(q_len, device=like.device).unsqueeze(1)
        j = torch.arange(total, device=like.device).unsqueeze(0)
        blocked = j > i + past
    if present(nonpad):
        j = torch.arange(total, device=like.device)
        pad = (j.unsqueeze(0) >= nonpad.reshape(-1, 1).to(j.dtype))[:, None, None, :]
        blocked = pad if blocked is None else blocked | pad
    if blocked is not None:
        extra = torch.zeros(blocked.shape, dtype=like.dtype, device=like.device).masked_fill(blocked, -math.inf)
        bias = extra if bias is None else bias + extra
    return bias


def _unmask_empty_rows(bias: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Rows of ``bias`` that mask every key get a zero bias (so softmax and its gradient stay
    finite); returns the bias and those rows, whose output the caller sets to zero."""
    if bias is None:
        return None, None
    empty = torch.isneginf(bias).all(-1, keepdim=True)
    if not bool(empty.any()):
        return bias, None
    return bias.masked_fill(empty, 0.0), empty


def _attention_check(node: OpNode) -> str | None:
    mode = node.get("qk_matmul_output_mode", 0)
    return None if mode in (0, 1, 2, 3) else f"Attention qk_matmul_output_mode {mode}"


@register("Attention", check=_attention_check)
def _attention(node: OpNode, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
               past_k: torch.Tensor | None = None, past_v: torch.Tensor | None = None,
               nonpad: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    three_d = q.ndim == 3
    batch, q_len = int(q.shape[0]), int(q.shape[-2] if q.ndim == 4 else q.shape[1])
    q = _heads(q, node.get("q_num_heads"), "query")
    k = _heads(k, node.get("kv_num_heads"), "key")
    v = _heads(v, node.get("kv_num_heads"), "value")
    past = 0
    if present(past_k):
        past = int(past_k.shape[2])
        k = torch.cat([past_k, k], 2)
        v = torch.cat([past_v, v], 2)
    present_k, present_v = k, v
    hq, hkv = int(q.shape[1]), int(k.shape[1])
    if hq != hkv:  # grouped-query: each key/value head serves hq / hkv consecutive query heads
        k = k.repeat_interleave(hq // hkv, 1)
        v = v.repeat_interleave(hq // hkv, 1)
    scale = node.get("scale")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    softcap = float(node.get("softcap", 0.0))
    bias, empty = _unmask_empty_rows(_bias(node, q_len, int(k.shape[2]), q, mask, past, nonpad))
    if softcap == 0 and 3 not in node.used:
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
        qk = None
    else:
        y, qk = _explicit(node, q, k, v, bias, empty, scale, softcap)
    if empty is not None:
        y = y.masked_fill(empty, 0.0)
    if three_d:
        y = y.transpose(1, 2).reshape(batch, q_len, -1)
    return y, present_k, present_v, qk


def _explicit(node: OpNode, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
              empty: torch.Tensor | None, scale: float, softcap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention step by step, for ``softcap`` and the ``qk_matmul_output`` of each mode."""
    s = math.sqrt(scale)
    scores = torch.matmul(q * s, (k * s).transpose(-1, -2))
    mode = node.get("qk_matmul_output_mode", 0)
    qk = scores
    if softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)
    qk = scores if mode == 1 else qk
    if bias is not None:
        scores = scores + bias
    qk = scores if mode == 2 else qk
    probs = torch.softmax(scores, -1)
    if empty is not None:
        probs = probs.masked_fill(empty, 0.0)
    qk = probs if mode == 3 else qk
    return torch.matmul(probs, v), qk
