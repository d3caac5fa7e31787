"""Transformer graphs from real model definitions, random weights, nothing downloaded: Hugging Face
``transformers`` BERT, ViT, DeiT, GPT-2 and Llama (grouped-query attention), and
``torch.nn.TransformerEncoder``; tiny configurations, exported by either PyTorch exporter.

:func:`export_hf` returns the path of a self-contained ``.onnx`` file with dynamic batch (and
sequence, for text models) dimensions.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

__all__ = ["HF", "export_hf"]

HIDDEN, HEADS, LAYERS, INTER = 32, 4, 2, 64


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random values in every parameter (zero biases and unit norms would be shared by the exporter)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if p.ndim == 1 and p.shape[0] == HIDDEN else 0.0))
    return model.eval()


class _Text(nn.Module):
    """Wraps a text model: ``input_ids`` -> last hidden state (or logits)."""

    def __init__(self, model: nn.Module, logits: bool = False) -> None:
        super().__init__()
        self.model, self.logits = model, logits

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids)
        return out.logits if self.logits else out.last_hidden_state


class _Vision(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


def bert(attn: str = "eager") -> nn.Module:
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=64, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                     intermediate_size=INTER, max_position_embeddings=32, attn_implementation=attn)
    return _Text(_randomize(BertModel(cfg, add_pooling_layer=False)))


def gpt2(attn: str = "eager") -> nn.Module:
    from transformers import GPT2Config, GPT2Model

    cfg = GPT2Config(vocab_size=64, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=32,
                     attn_implementation=attn)
    return _Text(_randomize(GPT2Model(cfg)))


def llama(attn: str = "eager") -> nn.Module:
    from transformers import LlamaConfig, LlamaModel

    cfg = LlamaConfig(vocab_size=64, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2 * HEADS,
                      num_key_value_heads=HEADS, intermediate_size=INTER, max_position_embeddings=32,
                      attn_implementation=attn)
    return _Text(_randomize(LlamaModel(cfg)))


def llama_mqa(attn: str = "eager") -> nn.Module:
    """Llama with multi-query attention: one key/value head shared by every query head."""
    from transformers import LlamaConfig, LlamaModel

    cfg = LlamaConfig(vocab_size=64, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                      num_key_value_heads=1, intermediate_size=INTER, max_position_embeddings=32,
                      attn_implementation=attn)
    return _Text(_randomize(LlamaModel(cfg)))


def vit_hf(attn: str = "eager") -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                    num_attention_heads=HEADS, intermediate_size=INTER, num_labels=5, attn_implementation=attn)
    return _Vision(_randomize(ViTForImageClassification(cfg)))


def deit(attn: str = "eager") -> nn.Module:
    from transformers import DeiTConfig, DeiTForImageClassification

    cfg = DeiTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                     num_attention_heads=HEADS, intermediate_size=INTER, num_labels=5, attn_implementation=attn)
    return _Vision(_randomize(DeiTForImageClassification(cfg)))


class TorchEncoder(nn.Module):
    """``nn.TransformerEncoder`` (its fused ``in_proj``) over embedded features, then a classifier;
    ``batch_first=False``: the sequence-first layout (the input is still ``(batch, seq, 8)``)."""

    def __init__(self, batch_first: bool = True) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.inp = nn.Linear(8, HIDDEN)
        layer = nn.TransformerEncoderLayer(HIDDEN, HEADS, INTER, dropout=0.0, batch_first=batch_first)
        self.enc = nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)
        self.head = nn.Linear(HIDDEN, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        if not self.batch_first:
            return self.head(self.enc(h.transpose(0, 1))).transpose(0, 1)
        return self.head(self.enc(h))


def torch_encoder(attn: str = "eager") -> nn.Module:
    return _randomize(TorchEncoder())


def torch_encoder_seq_first(attn: str = "eager") -> nn.Module:
    return _randomize(TorchEncoder(batch_first=False))


#: name -> (builder, example input, input name, dynamic axes of the input)
HF: dict[str, tuple[Callable[..., nn.Module], Callable[[], torch.Tensor], str, dict[int, str]]] = {
    "bert": (bert, lambda: torch.randint(0, 64, (2, 7)), "input_ids", {0: "batch", 1: "seq"}),
    "gpt2": (gpt2, lambda: torch.randint(0, 64, (2, 7)), "input_ids", {0: "batch", 1: "seq"}),
    "llama": (llama, lambda: torch.randint(0, 64, (2, 7)), "input_ids", {0: "batch", 1: "seq"}),
    "llama_mqa": (llama_mqa, lambda: torch.randint(0, 64, (2, 7)), "input_ids", {0: "batch", 1: "seq"}),
    "vit_hf": (vit_hf, lambda: torch.randn(2, 3, 16, 16), "pixel_values", {0: "batch"}),
    "deit": (deit, lambda: torch.randn(2, 3, 16, 16), "pixel_values", {0: "batch"}),
    "torch_encoder": (torch_encoder, lambda: torch.randn(2, 7, 8), "input", {0: "batch", 1: "seq"}),
    "torch_encoder_seq_first": (torch_encoder_seq_first, lambda: torch.randn(2, 7, 8), "input",
                                {0: "batch", 1: "seq"}),
}


def export_hf(name: str, path: str | os.PathLike[str], dynamo: bool, attn: str = "eager") -> str:
    """Export model ``name`` of :data:`HF` to ``path`` (legacy or dynamo exporter)."""
    builder, example, input_name, axes = HF[name]
    torch.manual_seed(0)
    model = builder(attn)
    x = example()
    path = os.fspath(path)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # nn.TransformerEncoder's fused kernel does not export
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            dims = {i: torch.export.Dim(n, min=2, max=32 if n == "seq" else 1024) for i, n in axes.items()}
            torch.onnx.export(model, (x,), path, input_names=[input_name], output_names=["output"],
                              dynamo=True, dynamic_shapes=(dims,), external_data=False, opset_version=18)
        else:
            torch.onnx.export(model, (x,), path, input_names=[input_name], output_names=["output"],
                              dynamo=False, opset_version=14, dynamic_axes={input_name: axes, "output": {0: "batch"}})
    torch.backends.mha.set_fastpath_enabled(fastpath)
    return path
