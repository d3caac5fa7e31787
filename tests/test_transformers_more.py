"""More Hugging Face architectures (random weights, nothing downloaded): DistilBERT, RoBERTa, OPT,
GPT-NeoX (fused QKV, partial rotary), Phi-3 (fused QKV and gate/up projections, grouped-query),
Qwen2 (q/k/v biases, grouped-query) and Gemma with multi-query attention (one key/value head).

In every one the heads are prunable groups; planted dead heads and MLP neurons are removed by the
lossless default with outputs unchanged at another batch size and sequence length (Gemma: the MLP
only, its query heads are not proved dead, see README); ``--ratio 0.3`` removes heads and MLP
neurons and gives a model that passes the full checker.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
from hf_zoo import HEADS, HIDDEN, INTER, LAYERS, _randomize, _Text  # noqa: E402

import npcompile  # noqa: E402
from npcompile.graph.model_io import load_model  # noqa: E402
from npcompile.graph.shapes import probe_shapes  # noqa: E402
from npcompile.pipeline import Context  # noqa: E402
from npcompile.runtime.verify import compare, probe_inputs  # noqa: E402
from npcompile.testing import plant_dead_channels  # noqa: E402

COMMON = {"num_hidden_layers": LAYERS, "intermediate_size": INTER, "max_position_embeddings": 40}
#: name -> (config class, model class, config arguments)
MODELS = {
    "distilbert": ("DistilBertConfig", "DistilBertModel",
                   {"dim": HIDDEN, "n_layers": LAYERS, "n_heads": HEADS, "hidden_dim": INTER,
                    "max_position_embeddings": 32}),
    "roberta": ("RobertaConfig", "RobertaModel", {"hidden_size": HIDDEN, "num_attention_heads": HEADS, **COMMON}),
    "opt": ("OPTConfig", "OPTModel", {"hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
                                      "ffn_dim": INTER, "max_position_embeddings": 32, "word_embed_proj_dim": HIDDEN}),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXModel", {"hidden_size": HIDDEN, "num_attention_heads": HEADS, **COMMON}),
    "phi3": ("Phi3Config", "Phi3Model", {"hidden_size": HIDDEN, "num_attention_heads": 2 * HEADS,
                                         "num_key_value_heads": HEADS, "pad_token_id": 0, **COMMON}),
    "qwen2": ("Qwen2Config", "Qwen2Model", {"hidden_size": HIDDEN, "num_attention_heads": 2 * HEADS,
                                            "num_key_value_heads": HEADS, **COMMON}),
    "gemma_mqa": ("GemmaConfig", "GemmaModel", {"hidden_size": HIDDEN, "num_attention_heads": HEADS,
                                                "num_key_value_heads": 1, "head_dim": HIDDEN // HEADS, **COMMON}),
}
CASES = [("distilbert", False), ("roberta", True), ("opt", False), ("gpt_neox", False), ("gpt_neox", True),
         ("phi3", False), ("phi3", True), ("qwen2", True), ("gemma_mqa", False), ("gemma_mqa", True)]
IDS = [f"{n}-{'dynamo' if d else 'legacy'}" for n, d in CASES]
SHAPES = {"input_ids": (2, 7)}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    import transformers

    cache: dict[tuple[str, bool], onnx.ModelProto] = {}

    def get(name: str, dynamo: bool) -> onnx.ModelProto:
        if (name, dynamo) not in cache:
            cfg_cls, model_cls, kw = MODELS[name]
            torch.manual_seed(0)
            cfg = getattr(transformers, cfg_cls)(vocab_size=64, attn_implementation="eager", **kw)
            model = _Text(_randomize(getattr(transformers, model_cls)(cfg)))
            path = str(tmp_path_factory.mktemp("hf") / f"{name}.onnx")
            x = torch.randint(0, 64, (2, 7))
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if dynamo:
                    dims = {0: torch.export.Dim("batch", min=2, max=1024), 1: torch.export.Dim("seq", min=2, max=32)}
                    torch.onnx.export(model, (x,), path, input_names=["input_ids"], output_names=["output"],
                                      dynamo=True, dynamic_shapes=(dims,), external_data=False, opset_version=18)
                else:
                    torch.onnx.export(model, (x,), path, input_names=["input_ids"], output_names=["output"],
                                      dynamo=False, opset_version=14,
                                      dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "output": {0: "batch"}})
            cache[(name, dynamo)] = load_model(path)
        return cache[(name, dynamo)]

    return get


@pytest.mark.parametrize("name,dynamo", CASES, ids=IDS)
def test_heads_prunable_and_dead_channels_removed_losslessly(name, dynamo, exported) -> None:
    model = exported(name, dynamo)
    probe = probe_shapes(model, SHAPES)
    heads = [g for g in Context(model, probe).analysis.groups if g.kind == "heads" and g.prunable]
    assert len(heads) == LAYERS and all(g.size == HEADS for g in heads), heads
    planted, _ = plant_dead_channels(model, probe, 0.25, seed=3)
    result = npcompile.compile(planted, target="onnx", input_shapes=SHAPES)
    onnx.checker.check_model(result.model, full_check=True)
    other = probe_shapes(model, {"input_ids": (3, 5)})
    assert compare(planted, result.model, probe_inputs(planted, other, batch=3, seed=11)).max_rel_diff <= 1e-4
    assert result.model.ByteSize() < planted.ByteSize()
    if name != "gemma_mqa":
        after = [g for g in Context(result.model, probe_shapes(result.model, SHAPES)).analysis.groups
                 if g.kind == "heads" and g.prunable]
        assert after and all(g.size < HEADS for g in after)


@pytest.mark.parametrize("name,dynamo", CASES, ids=IDS)
def test_ratio_removes_heads_and_neurons(name, dynamo, exported) -> None:
    model = exported(name, dynamo)
    result = npcompile.compile(model, criterion="magnitude", ratio=0.3, target="onnx", input_shapes=SHAPES)
    onnx.checker.check_model(result.model, full_check=True)
    plan = result.report["plan"][0]
    assert sum(k.endswith(":heads") for k in plan) >= LAYERS and any(not k.endswith(":heads") for k in plan)
    other = probe_shapes(model, {"input_ids": (3, 5)})
    assert np.isfinite(compare(model, result.model, probe_inputs(model, other, batch=3, seed=2)).max_abs_diff)

