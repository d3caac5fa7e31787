"""``npcompile.finetune.to_torch``: a compiled (pruned) graph back as a trainable torch module,
trained with a plain PyTorch loop, its weights written back into an ONNX model that ONNX Runtime
runs with the new weights."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import npcompile
from npcompile.errors import UserError
from npcompile.finetune import to_torch
from npcompile.runtime.data import Dataset
from npcompile.runtime.verify import make_session


def _accuracy(model: onnx.ModelProto, data: Dataset) -> float:
    logits = make_session(model).run(None, {"input": data.inputs["input"]})[0]
    return float(np.mean(logits.argmax(1) == data.labels))


def test_train_a_compiled_model_with_a_plain_loop(digits: Dataset, digits_model: onnx.ModelProto) -> None:
    pruned = npcompile.compile(digits_model, ratio=0.5, round_to=1, benchmark=False).model
    size = lambda m: sum(t.ByteSize() for t in m.graph.initializer)  # noqa: E731
    assert size(pruned) < size(digits_model)
    module = to_torch(pruned)
    assert isinstance(module, torch.nn.Module)
    assert module.input_names == [i.name for i in pruned.graph.input]
    x = torch.from_numpy(digits.inputs["input"])
    y = torch.from_numpy(digits.labels)
    before = _accuracy(pruned, digits)

    torch.manual_seed(0)
    opt = torch.optim.Adam(module.parameters(), lr=3e-3)
    module.train()
    for _ in range(3):
        for i in torch.randperm(len(y)).split(64):
            loss = torch.nn.functional.cross_entropy(module(x[i]), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
    module.eval()
    trained = module.write_back()

    onnx.checker.check_model(trained, full_check=True)
    with torch.no_grad():
        ours = module(x).numpy()
    theirs = make_session(trained).run(None, {"input": digits.inputs["input"]})[0]
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-4)  # ONNX Runtime runs the new weights
    after = _accuracy(trained, digits)
    assert after > before + 0.4, (before, after)  # an untrained net learns the digits
    assert [n.op_type for n in trained.graph.node] == [n.op_type for n in pruned.graph.node]


def test_outputs_follow_the_graph(digits_model: onnx.ModelProto) -> None:
    """Several outputs come back as a tuple in graph order; inputs go in graph-input order."""
    model = onnx.ModelProto()
    model.CopyFrom(digits_model)
    hidden = model.graph.node[1].output[0]
    model.graph.output.insert(0, onnx.helper.make_tensor_value_info(hidden, onnx.TensorProto.FLOAT, None))
    module = to_torch(model).eval()
    x = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)
    out = module(x)
    expected = make_session(model).run(None, {"input": x})
    assert isinstance(out, tuple) and len(out) == 2
    for got, exp in zip(out, expected, strict=True):
        np.testing.assert_allclose(got.detach().numpy(), exp, rtol=1e-5, atol=1e-5)


def test_unsupported_ops_are_named(digits_model: onnx.ModelProto) -> None:
    model = onnx.ModelProto()
    model.CopyFrom(digits_model)
    model.graph.node[-1].op_type = "Det"
    with pytest.raises(UserError, match="no torch function for op\\(s\\) Det"):
        to_torch(model)
