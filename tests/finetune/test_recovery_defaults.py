"""The fine-tuning defaults meant for recovering a pruned network (epochs chosen from the data
size, a cosine learning-rate decay, --threads) and distillation from the original model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from finetune_kit import digits_cnn, export, ort_outputs

from npcompile.errors import UserError
from npcompile.passes import finetune as finetune_module
from npcompile.passes.finetune import AUTO_MAX_EPOCHS, AUTO_MIN_STEPS, FinetunePass, auto_epochs
from npcompile.passes.magnitude import MagnitudePass
from npcompile.passes.prune import PrunePass
from npcompile.passes.select import SelectPass
from npcompile.pipeline import Context
from npcompile.runtime.data import Dataset

PROBE = {"input": (1, 1, 8, 8)}



@pytest.fixture(scope="module")
def trained(digits: Dataset, digits_model: onnx.ModelProto) -> onnx.ModelProto:
    """The digits CNN trained on labels (a teacher worth distilling from)."""
    ctx = Context(digits_model, PROBE)
    FinetunePass(digits, epochs=4, lr=3e-3, distill=0.0).run(ctx)
    return ctx.model


def _pruned(model: onnx.ModelProto, ratio: float = 0.5) -> Context:
    ctx = Context(model, PROBE)
    for p in (MagnitudePass(), SelectPass(ratio=ratio), PrunePass()):
        p.run(ctx)
    assert ctx.model is not model
    return ctx


def test_auto_epochs_reach_the_minimum_steps_within_bounds() -> None:
    assert auto_epochs(1) == AUTO_MAX_EPOCHS  # tiny data: capped
    assert auto_epochs(AUTO_MIN_STEPS) == 1
    assert auto_epochs(10 * AUTO_MIN_STEPS) == 1
    assert auto_epochs(AUTO_MIN_STEPS // 2) == 2
    assert auto_epochs(AUTO_MIN_STEPS // 3 + 1) == 3


def test_default_epochs_come_from_the_data_size(digits: Dataset, digits_model: onnx.ModelProto) -> None:
    small = digits.take(320)  # 5 steps per epoch at batch 64
    result = FinetunePass(small, distill=0.0).run(Context(digits_model, PROBE))
    assert len(result.data["epochs"]) == auto_epochs(5) == AUTO_MAX_EPOCHS
    assert result.data["steps"] == 5 * AUTO_MAX_EPOCHS
    assert result.data["epochs_requested"] == "auto"
    result = FinetunePass(small, epochs=2, distill=0.0).run(Context(digits_model, PROBE))
    assert len(result.data["epochs"]) == 2 and result.data["epochs_requested"] == 2


def test_cosine_schedule_decays_to_zero_constant_keeps_lr(digits: Dataset, digits_model: onnx.ModelProto) -> None:
    small = digits.take(256)
    cos = FinetunePass(small, epochs=4, lr=2e-3, distill=0.0).run(Context(digits_model, PROBE)).data
    assert cos["schedule"] == "cosine"
    lrs = [e["lr_end"] for e in cos["epochs"]]
    assert lrs[0] < 2e-3 and all(a > b for a, b in zip(lrs, lrs[1:], strict=False)) and lrs[-1] == pytest.approx(0)
    # half a cosine: after half of the steps the rate is half of lr
    assert lrs[1] == pytest.approx(1e-3, rel=1e-6)
    const = FinetunePass(small, epochs=4, lr=2e-3, distill=0.0, schedule="constant").run(
        Context(digits_model, PROBE)).data
    assert [e["lr_end"] for e in const["epochs"]] == [2e-3] * 4


def test_distillation_pulls_towards_the_original_model(digits: Dataset, trained: onnx.ModelProto) -> None:
    """With distill = 1 the labels play no part: a student equal to its teacher gets (almost) no
    gradient, so plain SGD leaves it where it is; on labels alone the same SGD moves it."""
    x = digits.inputs["input"]
    ref = ort_outputs(trained, x)
    moved = {}
    for distill in (1.0, 0.0):
        ctx = Context(trained, PROBE)
        FinetunePass(digits, epochs=1, optimizer="sgd", lr=0.05, momentum=0.0, distill=distill).run(ctx)
        moved[distill] = float(np.abs(ort_outputs(ctx.model, x) - ref).max())
    assert moved[1.0] < 1e-3 < moved[0.0]


def test_distillation_recovers_a_pruned_network_closer_to_the_original(digits: Dataset,
                                                                         trained: onnx.ModelProto) -> None:
    """After pruning, distilled fine-tuning brings the outputs closer to the original model's than
    fine-tuning on labels alone (same steps, same seed)."""
    x = digits.inputs["input"]
    ref = ort_outputs(trained, x)
    gap = {}
    for distill in (0.0, 0.9):
        ctx = _pruned(trained)
        ctx.original = trained
        FinetunePass(digits, epochs=2, lr=1e-3, distill=distill, temperature=2.0).run(ctx)
        gap[distill] = float(np.mean((ort_outputs(ctx.model, x) - ref) ** 2))
    assert gap[0.9] < gap[0.0]


def test_teacher_outputs_computed_once_and_reused(digits: Dataset, trained: onnx.ModelProto,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = _pruned(trained)
    FinetunePass(digits, steps=3, distill=0.5).run(ctx)
    result = FinetunePass(digits, steps=1, distill=0.5).run(ctx)
    assert result.data["teacher_accuracy"] == pytest.approx(
        float(np.mean(ort_outputs(trained, digits.inputs["input"]).argmax(1) == digits.labels)))
    assert result.data["teacher_accuracy"] > 0.8
    cached = [v for k, v in ctx.cache.items() if k[0] == "finetune-teacher"]
    assert len(cached) == 1 and cached[0].shape == (len(digits), 10)
    np.testing.assert_allclose(cached[0], ort_outputs(trained, digits.inputs["input"]), rtol=1e-5, atol=1e-5)
    calls = []
    real = finetune_module._Teacher._run
    monkeypatch.setattr(finetune_module._Teacher, "_run", lambda self, idx: calls.append(1) or real(self, idx))
    FinetunePass(digits, steps=3, distill=0.5).run(ctx)  # a later step of a schedule: the outputs are reused
    assert calls == []


def test_teacher_per_batch_when_too_large_gives_the_same_model(digits: Dataset, trained: onnx.ModelProto,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    small = digits.take(300)
    cached_ctx = _pruned(trained)
    FinetunePass(small, epochs=1, distill=0.5).run(cached_ctx)
    monkeypatch.setattr(finetune_module, "TEACHER_CACHE_BYTES", 0)
    batch_ctx = _pruned(trained)
    FinetunePass(small, epochs=1, distill=0.5).run(batch_ctx)
    assert not [k for k in batch_ctx.cache if k[0] == "finetune-teacher"]
    x = small.inputs["input"]
    np.testing.assert_allclose(ort_outputs(batch_ctx.model, x), ort_outputs(cached_ctx.model, x),
                               rtol=1e-4, atol=1e-4)


def test_softmax_output_distills_in_log_space(digits: Dataset) -> None:
    torch.manual_seed(0)
    model = export(torch.nn.Sequential(digits_cnn(), torch.nn.Softmax(dim=1)), (1, 1, 8, 8))
    ctx = Context(model, PROBE)
    FinetunePass(digits, epochs=3, lr=3e-3, distill=0.0).run(ctx)
    teacher = ctx.model
    x = digits.inputs["input"]
    ref = ort_outputs(teacher, x)
    ctx = Context(teacher, PROBE)
    FinetunePass(digits, epochs=1, optimizer="sgd", lr=0.05, momentum=0.0, distill=1.0).run(ctx)
    assert np.abs(ort_outputs(ctx.model, x) - ref).max() < 1e-3


def test_threads_are_set_for_the_run_and_restored(digits: Dataset, digits_model: onnx.ModelProto) -> None:
    before = torch.get_num_threads()
    seen = []
    real = finetune_module.FinetunePass._train

    def spy(self, *a, **k):
        seen.append(torch.get_num_threads())
        return real(self, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(finetune_module.FinetunePass, "_train", spy)
        result = FinetunePass(digits.take(64), steps=1, threads=1).run(Context(digits_model, PROBE))
    assert seen == [1] and result.data["threads"] == 1
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("bad", [{"distill": -0.1}, {"distill": 1.5}, {"temperature": 0}, {"schedule": "step"},
                                 {"threads": -1}])
def test_bad_recovery_options(digits: Dataset, bad: dict) -> None:
    with pytest.raises(UserError):
        FinetunePass(digits, **bad)
