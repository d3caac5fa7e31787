"""Real model definitions for the end-to-end fine-tuner tests: tiny ``transformers`` BERT, ViT, GPT-2
and Llama (grouped-query attention), ``nn.TransformerEncoder``, ``nn.LSTM`` / ``nn.GRU``, random
weights (nothing downloaded), exported by either torch exporter."""

from __future__ import annotations

import io
import logging
import os
import warnings
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass
class Exported:
    """An exported model with the inputs it was traced on and inputs of another shape (``None``
    where the export fixed the shapes)."""

    name: str
    model: onnx.ModelProto
    feeds: dict[str, np.ndarray]
    other: dict[str, np.ndarray] | None


class _Wrap(nn.Module):
    """Positional inputs in, one output tensor out (``key`` of a transformers output)."""

    def __init__(self, m: nn.Module, key: str, text: bool) -> None:
        super().__init__()
        self.m, self.key, self.text = m, key, text

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        out = self.m(input_ids=x, attention_mask=mask) if self.text else self.m(pixel_values=x)
        return getattr(out, self.key)


class _RnnOut(nn.Module):
    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, h = self.rnn(x)
        return y, (h[0] if isinstance(h, tuple) else h)


def _randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Perturb every parameter so no two are equal (the TorchScript exporter would share them)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return module.eval()


def transformer(kind: str, attn: str) -> tuple[nn.Module, list[str], bool]:
    """A tiny ``transformers`` model (2 layers, hidden 32) wrapped to positional inputs; returns
    the module, its input names and whether it takes token ids."""
    import transformers as T

    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.manual_seed(0)
    common = {"num_hidden_layers": 2, "attn_implementation": attn}
    if kind == "bert":
        m = T.BertModel(T.BertConfig(vocab_size=96, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                                     max_position_embeddings=32, **common), add_pooling_layer=False)
        return _Wrap(m, "last_hidden_state", True), ["input_ids", "attention_mask"], True
    if kind == "vit":
        m = T.ViTModel(T.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_attention_heads=4,
                                   intermediate_size=64, **common), add_pooling_layer=False)
        return _Wrap(m, "last_hidden_state", False), ["pixel_values"], False
    if kind == "gpt2":
        m = T.GPT2LMHeadModel(T.GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                                           use_cache=False, attn_implementation=attn))
        return _Wrap(m, "logits", True), ["input_ids", "attention_mask"], True
    if kind == "llama":
        m = T.LlamaForCausalLM(T.LlamaConfig(vocab_size=96, hidden_size=32, num_attention_heads=4,
                                             num_key_value_heads=2, intermediate_size=64, max_position_embeddings=32,
                                             use_cache=False, **common))
        return _Wrap(m, "logits", True), ["input_ids", "attention_mask"], True
    raise ValueError(kind)


def _text_inputs(batch: int, seq: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 96, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[-1, seq // 2:] = 0  # the last sample is padded on the right
    return ids, mask


def export(module: nn.Module, args: tuple[torch.Tensor, ...], names: list[str], outputs: list[str],
           dynamo: bool, dynamic: dict[str, dict[int, str]] | None) -> onnx.ModelProto:
    """Export with either exporter; ``dynamic``: the legacy exporter's dynamic axes (the dynamo
    export is traced at fixed shapes)."""
    buf = io.BytesIO()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused encoder layer has no ONNX export
    try:
        return _export(module, args, names, outputs, dynamo, dynamic, buf)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _export(module: nn.Module, args: tuple[torch.Tensor, ...], names: list[str], outputs: list[str],
            dynamo: bool, dynamic: dict[str, dict[int, str]] | None, buf: io.BytesIO) -> onnx.ModelProto:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if dynamo:
            prog = torch.onnx.export(module, args, input_names=names, output_names=outputs, dynamo=True,
                                     verbose=False)
            return prog.model_proto
        torch.onnx.export(module, args, buf, input_names=names, output_names=outputs, dynamo=False,
                          opset_version=17, dynamic_axes=dynamic)
    return onnx.load_from_string(buf.getvalue())


def export_transformer(kind: str, attn: str, dynamo: bool) -> Exported:
    module, names, text = transformer(kind, attn)
    _randomize(module)
    if text:
        args, other = _text_inputs(2, 8, 0), _text_inputs(3, 6, 1)
        dynamic = {n: {0: "batch", 1: "seq"} for n in names} | {"out": {0: "batch", 1: "seq"}}
    else:
        g = torch.Generator().manual_seed(0)
        args, other = (torch.randn(2, 3, 16, 16, generator=g),), (torch.randn(3, 3, 16, 16, generator=g),)
        dynamic = {names[0]: {0: "batch"}, "out": {0: "batch"}}
    model = export(module, args, names, ["out"], dynamo, None if dynamo else dynamic)
    feeds = {n: a.numpy() for n, a in zip(names, args, strict=True)}
    others = None if dynamo else _if_dynamic(model, {n: a.numpy() for n, a in zip(names, other, strict=True)})
    return Exported(f"{kind}-{attn}-{'dynamo' if dynamo else 'legacy'}", model, feeds, others)


def export_torch_nn(kind: str, batch_first: bool, dynamo: bool) -> Exported:
    """``encoder``: nn.TransformerEncoder (2 layers; pre-norm GELU when not batch-first);
    ``lstm``/``gru``: 2 bidirectional layers."""
    torch.manual_seed(0)
    if kind == "encoder":
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=batch_first,
                                           norm_first=not batch_first, activation="relu" if batch_first else "gelu")
        module: nn.Module = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        width, outputs = 32, ["out"]
    else:
        rnn = (nn.LSTM if kind == "lstm" else nn.GRU)(6, 8, 2, bidirectional=True, batch_first=batch_first)
        module, width, outputs = _RnnOut(rnn), 6, ["out", "h"]
    _randomize(module)
    g = torch.Generator().manual_seed(0)
    shape, other = ((2, 7), (3, 5)) if batch_first else ((7, 2), (5, 3))
    x, x2 = torch.randn(*shape, width, generator=g), torch.randn(*other, width, generator=g)
    axes = {0: "batch", 1: "seq"} if batch_first else {0: "seq", 1: "batch"}
    dynamic = {"x": axes, "out": axes} | ({"h": {1: "batch"}} if kind != "encoder" else {})
    model = export(module, (x,), ["x"], outputs, dynamo, None if dynamo else dynamic)
    name = f"{kind}-{'batch-first' if batch_first else 'seq-first'}-{'dynamo' if dynamo else 'legacy'}"
    return Exported(name, model, {"x": x.numpy()}, None if dynamo else _if_dynamic(model, {"x": x2.numpy()}))


def _if_dynamic(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """``feeds`` if ONNX Runtime runs the model on them (the export kept the axes dynamic)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4
    try:
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)
    except Exception:  # noqa: BLE001 - a traced size baked into a Reshape
        return None
    return feeds


def fit_random_target(gm: nn.Module, feeds: dict[str, np.ndarray], lr: float, steps: int = 6) -> list[float]:
    """Train ``gm`` (Adam, MSE of its first output towards a fixed random target) on one batch;
    returns the losses, and leaves the module in eval mode."""

    def first(out: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
        return out[0] if isinstance(out, tuple) else out

    args = {k: torch.from_numpy(v) for k, v in feeds.items()}
    with torch.no_grad():
        target = torch.randn(first(gm.eval()(**args)).shape, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(gm.parameters(), lr=lr)
    gm.train()
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(first(gm(**args)), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    gm.eval()
    return losses
