"""End to end on real model definitions: tiny ``transformers`` BERT, ViT, GPT-2 and Llama with
grouped-query attention (eager and SDPA attention, both torch exporters): GraphModule's forward
equals ONNX Runtime's (at the traced shapes, and at another batch and sequence length where the
export is dynamic), the embedding tables train, a few training steps lower the loss, and ONNX
Runtime runs the written-back model with the trained weights."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
import torch
from models_kit import Exported, export_transformer, fit_random_target

from npcompile.finetune.graph_module import GraphModule
from npcompile.runtime.verify import make_session

pytest.importorskip("transformers")

# the dynamo exports take a few seconds each: marked slow
CASES = [pytest.param(case, id="-".join([case[0], case[1], "dynamo" if case[2] else "legacy"]),
                      marks=[pytest.mark.slow] if case[2] else [])
         for case in itertools.product(["bert", "vit", "gpt2", "llama"], ["eager", "sdpa"], [False, True])]
TOL = 1e-4


@pytest.fixture(scope="module", params=CASES)
def exported(request: pytest.FixtureRequest) -> Exported:
    return export_transformer(*request.param)


def _ort(ex: Exported, feeds: dict[str, np.ndarray], model: onnx.ModelProto | None = None) -> np.ndarray:
    return make_session(ex.model if model is None else model).run(None, feeds)[0]


def _close(got: torch.Tensor, expected: np.ndarray) -> None:
    assert tuple(got.shape) == expected.shape
    scale = max(1.0, float(np.abs(expected).max()))
    assert float(np.abs(got.detach().numpy() - expected).max()) <= TOL * scale


def test_forward_equals_onnxruntime(exported: Exported) -> None:
    gm = GraphModule(exported.model).eval()
    with torch.no_grad():
        _close(gm(**exported.feeds), _ort(exported, exported.feeds))
        if exported.other is not None:  # dynamic axes: another batch size and sequence length
            _close(gm(**exported.other), _ort(exported, exported.other))


def test_training_lowers_the_loss_and_writes_back(exported: Exported) -> None:
    gm = GraphModule(exported.model)
    if "pixel_values" not in exported.feeds:  # the token embedding table (vocabulary 96) trains
        vocab = {t.name for t in exported.model.graph.initializer if len(t.dims) == 2 and t.dims[0] == 96}
        tables = {n.input[0] for n in exported.model.graph.node if n.op_type == "Gather" and n.input[0] in vocab}
        assert len(tables) == 1 and tables <= set(gm.param_names), tables
    losses = fit_random_target(gm, exported.feeds, lr=3e-3)
    assert losses[-1] < 0.98 * losses[0], losses
    trained = gm.write_back()
    with torch.no_grad():
        got = gm(**exported.feeds)
    _close(got, _ort(exported, exported.feeds, trained))
    assert float(np.abs(_ort(exported, exported.feeds) - got.numpy()).max()) > 1e-3  # the weights did change
