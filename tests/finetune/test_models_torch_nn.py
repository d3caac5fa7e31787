"""End to end on torch.nn model definitions: ``nn.TransformerEncoder`` (post-norm ReLU batch-first,
pre-norm GELU sequence-first) and 2-layer bidirectional ``nn.LSTM`` / ``nn.GRU`` (batch_first both
ways), both torch exporters: GraphModule equals ONNX Runtime on every output (also at another
batch size and length where the export is dynamic), the recurrent weights train, a few training
steps lower the loss, and ONNX Runtime runs the written-back model."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from models_kit import Exported, export_torch_nn, fit_random_target

from npcompile.finetune.graph_module import GraphModule
from npcompile.runtime.verify import make_session

# the dynamo exports take a few seconds each: marked slow
CASES = [pytest.param(case, id=f"{case[0]}-{'bf' if case[1] else 'sf'}-{'dynamo' if case[2] else 'legacy'}",
                      marks=[pytest.mark.slow] if case[2] else [])
         for case in itertools.product(["encoder", "lstm", "gru"], [True, False], [False, True])]
TOL = 1e-4


@pytest.fixture(scope="module", params=CASES)
def exported(request: pytest.FixtureRequest) -> Exported:
    return export_torch_nn(*request.param)


def _outputs(out: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


def _close(got: tuple[torch.Tensor, ...], expected: list[np.ndarray]) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert tuple(g.shape) == e.shape
        scale = max(1.0, float(np.abs(e).max()))
        assert float(np.abs(g.detach().numpy() - e).max()) <= TOL * scale


def test_forward_equals_onnxruntime(exported: Exported) -> None:
    gm = GraphModule(exported.model).eval()
    sess = make_session(exported.model)
    with torch.no_grad():
        _close(_outputs(gm(**exported.feeds)), sess.run(None, exported.feeds))
        if exported.other is not None:
            _close(_outputs(gm(**exported.other)), sess.run(None, exported.other))
    recurrent = [n for n in exported.model.graph.node if n.op_type in ("LSTM", "GRU")]
    for node in recurrent:  # W, R, B of every layer are parameters
        assert set(node.input[1:4]) <= set(gm.param_names)


def test_training_lowers_the_loss_and_writes_back(exported: Exported) -> None:
    gm = GraphModule(exported.model)
    losses = fit_random_target(gm, exported.feeds, lr=1e-2)
    assert losses[-1] < 0.98 * losses[0], losses
    with torch.no_grad():
        got = _outputs(gm(**exported.feeds))
    _close(got, make_session(gm.write_back()).run(None, exported.feeds))
