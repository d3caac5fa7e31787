"""Attention heads, gated MLPs and MLP neurons on transformer graphs built from real model
definitions (Hugging Face ``transformers`` BERT, GPT-2, Llama with grouped-query attention, ViT,
DeiT, and ``torch.nn.TransformerEncoder`` batch- and sequence-first; random weights, nothing
downloaded), with both PyTorch exporters and both attention implementations (decomposed ``eager``
and ``sdpa``).

A quarter of the heads of every block (value rows zero) and a quarter of the MLP neurons are planted
dead: the lossless default removes them with outputs unchanged at another batch size and sequence
length; ``--ratio 0.3`` removes heads and MLP neurons in every model and gives a valid model.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

pytest.importorskip("transformers")

import hf_zoo  # noqa: E402

import npcompile  # noqa: E402
from npcompile.graph.model_io import load_model  # noqa: E402
from npcompile.graph.shapes import probe_shapes  # noqa: E402
from npcompile.pipeline import Context  # noqa: E402
from npcompile.runtime.verify import compare, probe_inputs  # noqa: E402
from npcompile.testing import plant_dead_channels  # noqa: E402

TEXT = ("bert", "gpt2", "llama", "llama_mqa")
TORCH = ("torch_encoder", "torch_encoder_seq_first")  # nn.TransformerEncoder: nn.MultiheadAttention's in_proj
CASES = [(n, d, a) for n in ("bert", "gpt2", "llama", "vit_hf", "deit") for d in (False, True)
         for a in ("eager", "sdpa") if not (n == "llama" and a == "sdpa" and not d)]  # not exportable
CASES += [(n, d, "eager") for n in TORCH for d in (False, True)]
CASES += [("llama_mqa", d, "eager") for d in (False, True)]  # multi-query: query heads go one by one
IDS = [f"{n}-{'dynamo' if d else 'legacy'}-{a}" for n, d, a in CASES]
# multi-query attention: planting zero rows in a query head does not make it dead (its scores turn
# uniform, the shared value head still reads); dead query heads are not proved there
PLANTED = [c for c in CASES if c[0] != "llama_mqa"]
PLANTED_IDS = [i for c, i in zip(CASES, IDS, strict=True) if c[0] != "llama_mqa"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    cache: dict[tuple, onnx.ModelProto] = {}

    def get(name: str, dynamo: bool, attn: str) -> onnx.ModelProto:
        key = (name, dynamo, attn)
        if key not in cache:
            path = tmp_path_factory.mktemp("hf") / f"{name}.onnx"
            cache[key] = load_model(hf_zoo.export_hf(name, path, dynamo, attn))
        return cache[key]

    return get


def _shapes(name: str, batch: int = 2, seq: int = 7) -> dict[str, tuple[int, ...]]:
    if name in TORCH:
        return {"input": (batch, seq, 8)}
    return {"input_ids": (batch, seq)} if name in TEXT else {}


def _other(name: str, dynamo: bool) -> dict[str, tuple[int, ...]]:
    """Another batch size and sequence length (the legacy exporter bakes nn.MultiheadAttention's
    sequence length into a Reshape constant: only the batch varies there)."""
    return _shapes(name, 3, 7 if name in TORCH and not dynamo else 5)


def _zeros(model: onnx.ModelProto) -> int:
    return sum(int((numpy_helper.to_array(t) == 0).sum()) for t in model.graph.initializer
               if t.data_type == onnx.TensorProto.FLOAT)


def _heads(model: onnx.ModelProto, shapes) -> list:
    return [g for g in Context(model, probe_shapes(model, shapes)).analysis.groups if g.kind == "heads"]


@pytest.mark.parametrize("name,dynamo,attn", CASES, ids=IDS)
def test_heads_are_prunable_groups(name, dynamo, attn, exported) -> None:
    model = exported(name, dynamo, attn)
    heads = [g for g in _heads(model, _shapes(name)) if g.prunable]
    # Llama: 8 query heads in 4 key/value groups, the removal unit
    assert len(heads) == hf_zoo.LAYERS and all(g.size == hf_zoo.HEADS for g in heads), heads


@pytest.mark.parametrize("name,dynamo,attn", PLANTED, ids=PLANTED_IDS)
def test_dead_heads_and_neurons_removed_losslessly(name, dynamo, attn, exported) -> None:
    model = exported(name, dynamo, attn)
    shapes = _shapes(name)
    probe = probe_shapes(model, shapes)
    planted, _ = plant_dead_channels(model, probe, 0.25, seed=3)
    zeros_before = _zeros(planted) - _zeros(model)
    result = npcompile.compile(planted, target="onnx", input_shapes=shapes)  # the lossless default
    onnx.checker.check_model(result.model, full_check=True)
    other = probe_shapes(model, _other(name, dynamo))  # another batch size and sequence length
    assert compare(planted, result.model, probe_inputs(planted, other, batch=3, seed=11)).max_rel_diff <= 1e-4
    assert zeros_before > 0
    assert _zeros(result.model) - _zeros(model) <= 0.05 * zeros_before
    heads_after = _heads(result.model, shapes)
    assert all(g.size < hf_zoo.HEADS for g in heads_after if g.prunable)


@pytest.mark.parametrize("name,dynamo,attn", CASES, ids=IDS)
def test_ratio_removes_heads_and_neurons(name, dynamo, attn, exported) -> None:
    model = exported(name, dynamo, attn)
    shapes = _shapes(name)
    result = npcompile.compile(model, criterion="magnitude", ratio=0.3, target="onnx", input_shapes=shapes)
    onnx.checker.check_model(result.model, full_check=True)
    removed = result.report["plan"][0]
    heads = [k for k in removed if k.endswith(":heads")]
    mlp = [k for k in removed if not k.endswith(":heads")]
    assert len(heads) >= hf_zoo.LAYERS and mlp, sorted(removed)  # (with GQA: key/value and query heads)
    other = probe_shapes(model, _other(name, dynamo))
    assert np.isfinite(compare(model, result.model, probe_inputs(model, other, batch=3, seed=2)).max_abs_diff)


def test_head_removal_rewrites_head_counts(exported) -> None:
    """BERT: the Reshape targets that split q/k/v into heads follow the new head count, and the
    output projection loses the head's columns."""
    model = exported("bert", False, "eager")
    result = npcompile.compile(model, criterion="magnitude", ratio=0.5, target="onnx",
                               input_shapes=_shapes("bert"))
    inits = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    out_proj = [n for n in result.model.graph.node if n.op_type == "MatMul" and "attention/output/dense" in n.name]
    assert out_proj and all(inits[n.input[1]].shape[0] == 2 * (hf_zoo.HIDDEN // hf_zoo.HEADS) for n in out_proj)


@pytest.mark.parametrize("name,dynamo", [("bert", False), ("llama", False), ("vit_hf", True), ("torch_encoder", True),
                                         ("torch_encoder_seq_first", False), ("llama_mqa", False),
                                         ("llama_mqa", True)])
def test_masked_heads_equal_deletion(name, dynamo, exported) -> None:
    """Search probes mask heads on one session: equal to deleting them (key/value heads of
    grouped-query attention mask their query heads' output columns)."""
    from npcompile.channels.masked import MaskedModel

    model = exported(name, dynamo, "eager")
    probe = probe_shapes(model, _shapes(name))
    ctx = Context(model, probe)
    masked = MaskedModel.from_context(ctx)
    rng = np.random.default_rng(0)
    removal = {}
    for g in ctx.analysis.prunable_groups():
        mask = np.zeros(g.size, bool)
        mask[rng.choice(g.size, max(1, g.size // 3), replace=False)] = True
        removal[g.id] = mask
    assert any(ctx.analysis.group(g).kind == "heads" for g in removal)
    assert masked.max_rel_diff(removal, probe_inputs(model, probe)) <= 1e-5


@pytest.mark.parametrize("name,dynamo", [("vit_hf", False), ("vit_hf", True), ("deit", False), ("torch_encoder", False),
                                         ("torch_encoder_seq_first", True)])
def test_hidden_width_prunes_the_residual_stream(name, dynamo, exported) -> None:
    """With the prune-hidden pass the residual stream is one group through every block (patch
    embedding, class token, position embeddings, LayerNorms, projections, head): pruned, valid,
    never counted as dead; without it the hidden width stays whole."""
    from npcompile.channels.analysis import AnalysisOptions

    model = exported(name, dynamo, "eager")
    probe = probe_shapes(model, _shapes(name))
    plain = Context(model, probe).analysis
    assert not any(g.lossy for g in plain.groups)
    ctx = Context(model, probe)
    ctx.set_analysis_options(AnalysisOptions(hidden=True))
    hidden = [g for g in ctx.analysis.groups if g.lossy]
    assert len(hidden) == 1 and hidden[0].prunable and hidden[0].size == hf_zoo.HIDDEN
    assert not hidden[0].dead.any()
    from npcompile.pipeline import get_pass

    cls = get_pass("prune-hidden")
    from npcompile.passes.magnitude import MagnitudePass
    from npcompile.passes.prune import PrunePass
    from npcompile.passes.select import SelectPass
    from npcompile.pipeline import Pipeline

    ctx = Context(model, probe)
    Pipeline([cls(), MagnitudePass(), SelectPass(ratio=0.25), PrunePass()]).run(ctx)
    onnx.checker.check_model(ctx.model, full_check=True)
    inits = {t.name: numpy_helper.to_array(t) for t in ctx.model.graph.initializer}
    widths = {v.shape[0] for v in inits.values() if v.ndim == 1 and v.shape[0] in (24, hf_zoo.HIDDEN)}
    assert 24 in widths and hf_zoo.HIDDEN not in widths  # every norm and bias of the stream shrank
    other = probe_shapes(model, _other(name, dynamo))
    assert np.isfinite(compare(model, ctx.model, probe_inputs(model, other, batch=3, seed=2)).max_abs_diff)


def test_prune_hidden_flag_from_the_cli(exported, tmp_path) -> None:
    """``--prune-hidden`` runs the prune-hidden pass first: the hidden width shrinks with the
    heads and MLP neurons, the report names the pass; alone (lossless default) it is refused."""
    import json
    import subprocess
    import sys

    src = tmp_path / "vit.onnx"
    onnx.save(exported("vit_hf", False, "eager"), src)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "npcompile", str(src), *args], capture_output=True, text=True,
                              timeout=600)

    r = cli("--ratio", "0.25", "--round-to", "1", "--prune-hidden", "--target", "onnx", "-o", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert "prune-hidden" in json.dumps(report)
    pruned = onnx.load(tmp_path / "out" / "model.onnx")
    onnx.checker.check_model(pruned, full_check=True)
    widths = {numpy_helper.to_array(t).shape[0] for t in pruned.graph.initializer if len(t.dims) == 1}
    assert hf_zoo.HIDDEN not in widths  # every norm scale and bias of the residual stream shrank
    r = cli("--prune-hidden", "--target", "onnx", "-o", str(tmp_path / "refused"))
    assert r.returncode == 2 and "--prune-hidden is lossy" in r.stderr
    assert not (tmp_path / "refused").exists()


def test_sequence_length_from_the_data(exported, tmp_path) -> None:
    """A dynamic sequence axis is sized by the data given (no --input-shape needed); without data
    the error says how to give it."""
    from npcompile.errors import UserError
    from npcompile.runtime.data import sample_shapes

    model = exported("torch_encoder", True, "eager")
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=np.random.default_rng(0).normal(size=(16, 6, 8)).astype(np.float32))
    assert sample_shapes([None, calib]) == {"input": (16, 6, 8)}
    result = npcompile.compile(model, criterion="mean-abs", ratio=0.3, calib=str(calib), target="onnx")
    assert result.report["plan"][0] and any(k.endswith(":heads") for k in result.report["plan"][0])
    with pytest.raises(UserError, match="dynamic dimension 1.*input_shapes"):
        npcompile.compile(model, ratio=0.3, target="onnx")
