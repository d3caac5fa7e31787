"""Binary-search pruning: the evaluation bound, the tolerance on a trained model (checked on the
really pruned model), rounding and blocks, group filters, the slow path, and callables."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import zoo

from npcompile.channels.masked import MaskedModel
from npcompile.errors import UserError
from npcompile.graph.model_io import load_model
from npcompile.graph.shapes import probe_shapes
from npcompile.graph.stats import model_stats
from npcompile.passes.magnitude import MagnitudePass
from npcompile.passes.prune import PrunePass
from npcompile.passes.search import BinarySearchPass, removal_levels
from npcompile.pipeline import Context, Pipeline, get_pass
from npcompile.runtime.data import Dataset
from npcompile.runtime.evaluate import AccuracyEvaluator, CallableEvaluator, FidelityEvaluator


def _bound(ctx: Context, names: set[str] | None = None) -> int:
    groups = [g for g in ctx.analysis.prunable_groups() if names is None or g.name in names]
    return 1 + sum(math.ceil(math.log2(g.size + 1)) for g in groups)


def _search(model: onnx.ModelProto, evaluator, **options) -> tuple[Context, dict, int]:
    ctx = Context(model, probe_shapes(model))
    MagnitudePass().run(ctx)
    bound = _bound(ctx)
    data = BinarySearchPass(evaluator=evaluator, **options).run(ctx).data
    return ctx, data, bound


def test_search_keeps_accuracy_within_tolerance(digits_mlp: tuple[onnx.ModelProto, Dataset]) -> None:
    model, data = digits_mlp
    ev = AccuracyEvaluator(data)
    baseline = ev.evaluate(model)
    assert baseline > 90
    ctx, result, bound = _search(model, ev, tolerance=1.0)
    assert result["evaluations"] <= bound
    assert result["evaluations"] == 1 + len(result["probes"])  # the baseline counts once
    assert result["baseline"] == pytest.approx(baseline)
    assert result["fast_path"] and result["check_diff"] <= 1e-4
    for p in result["probes"]:
        # each visit's floor is its share of the tolerance (the default schedule), never below the global one
        assert p["floor"] >= baseline - 1.0 - 1e-6
        assert p["accepted"] == (p["metric"] >= p["floor"])
    assert ctx.removal, "nothing removed"
    # the really pruned model, evaluated on a plain session, scores what the search reported
    PrunePass().run(ctx)
    pruned = ev.evaluate(ctx.model)
    assert pruned == pytest.approx(result["final"], abs=1e-9)
    assert pruned >= baseline - 1.0
    probe = probe_shapes(model)
    assert model_stats(ctx.model, probe).params < model_stats(model, probe).params
    removed = {g["group"]: g["removed"] for g in result["groups"]}
    assert sum(removed.values()) == result["channels"] > 0


def test_rounding_min_channels_and_filters(digits_mlp: tuple[onnx.ModelProto, Dataset]) -> None:
    model, data = digits_mlp
    ev = AccuracyEvaluator(data)
    ctx, result, _ = _search(model, ev, tolerance=5.0, round_to=8, min_channels=16)
    for g in result["groups"]:
        assert g["kept"] == g["width"] or (g["kept"] % 8 == 0 and g["kept"] >= 16)
    for p in result["probes"]:
        assert (p["width"] - p["removed"]) % 8 == 0
    names = [g.name for g in ctx.analysis.prunable_groups()]
    ctx2, only, _ = _search(model, ev, tolerance=5.0, include=[names[1]])
    assert [g["group"] for g in only["groups"]] == [names[1]]
    assert set(ctx2.removal) <= {ctx2.analysis.prunable_groups()[1].id}
    _, rest, _ = _search(model, ev, tolerance=5.0, exclude=names[1])
    assert [g["group"] for g in rest["groups"]] == names[:1] + names[2:]
    ctx4, none, _ = _search(model, ev, tolerance=5.0, include="no-such-layer*")
    assert none["evaluations"] == 0 and ctx4.removal == {}


def test_slow_path_gives_the_same_decisions(digits_mlp, monkeypatch: pytest.MonkeyPatch) -> None:
    model, data = digits_mlp
    ev = AccuracyEvaluator(data)
    ctx_fast, fast, _ = _search(model, ev, tolerance=2.0)
    monkeypatch.setattr(MaskedModel, "max_rel_diff", lambda self, removal, inputs: 1.0)
    ctx_slow, slow, _ = _search(model, ev, tolerance=2.0)
    assert fast["fast_path"] and not slow["fast_path"]
    assert [g["removed"] for g in fast["groups"]] == [g["removed"] for g in slow["groups"]]
    assert fast["final"] == pytest.approx(slow["final"])


def test_callable_evaluator_drives_the_search(digits_mlp: tuple[onnx.ModelProto, Dataset]) -> None:
    model, data = digits_mlp
    acc = AccuracyEvaluator(data)
    seen: list[int] = []

    def user_metric(m: onnx.ModelProto) -> float:
        seen.append(len(m.graph.initializer))
        return acc.evaluate(m)

    _, reference, _ = _search(model, acc, tolerance=2.0)
    _, result, bound = _search(model, CallableEvaluator(user_metric), tolerance=2.0)
    assert len(seen) == result["evaluations"] <= bound
    assert [g["removed"] for g in result["groups"]] == [g["removed"] for g in reference["groups"]]


def test_grouped_convolutions_keep_blocks(tmp_path: Path) -> None:
    torch.manual_seed(0)
    builder, shape = zoo.ZOO["grouped_conv_net"]
    path = tmp_path / "g.onnx"
    zoo.export(zoo.randomize_bn(builder(), 0), shape, str(path), dynamo=False)
    model = load_model(path)
    x = np.random.default_rng(0).standard_normal((16, *shape[1:])).astype(np.float32)
    ev = FidelityEvaluator.from_model(Dataset({"input": x}), model, "cosine")
    ctx = Context(model, probe_shapes(model))
    blocked = [g for g in ctx.analysis.prunable_groups() if g.blocks > 1]
    assert blocked
    ctx2 = Context(model, ctx.probe)
    records = Pipeline([MagnitudePass(), BinarySearchPass(0.02, ev, round_to=4)]).run(ctx2)
    assert records[1]["changed"] is False and records[1]["options"]["evaluator"] == "fidelity-cosine"
    result = ctx2.results["binary-search"].data
    assert result["evaluations"] <= _bound(ctx2)
    assert any(g.id in ctx2.removal for g in blocked)
    for g in blocked:
        mask = ctx2.removal.get(g.id)
        if mask is not None:
            counts = mask.reshape(g.blocks, -1).sum(axis=1)
            assert len(set(counts.tolist())) == 1
    PrunePass().run(ctx2)
    assert ev.evaluate(ctx2.model) == pytest.approx(result["final"], abs=1e-5)
    assert ev.evaluate(ctx2.model) >= result["baseline"] - 0.02


def test_levels() -> None:
    from npcompile.channels.analysis import Group

    g = Group(0, 24, "g", "Conv", blocks=3)  # 8 per block
    assert removal_levels(g) == list(range(8))
    assert removal_levels(g, round_to=6) == [0, 2, 4, 6]  # per block a multiple of 2: keeps 8, 6, 4, 2
    assert removal_levels(g, round_to=6, min_channels=12) == [0, 2, 4]
    assert removal_levels(Group(1, 10, "h", "Gemm"), round_to=4) == [0, 2, 6]
    assert removal_levels(Group(1, 10, "h", "Gemm"), max_fraction=0.5) == [0, 1, 2, 3, 4, 5]


def test_options_and_registry() -> None:
    assert get_pass("binary-search") is BinarySearchPass
    ev = CallableEvaluator(lambda m: 1.0)
    with pytest.raises(UserError, match="tolerance"):
        BinarySearchPass(-1, ev)
    with pytest.raises(UserError, match="needs an evaluator"):
        BinarySearchPass(1.0, None)
    with pytest.raises(UserError, match="round_to"):
        BinarySearchPass(1.0, ev, round_to=0)
    assert BinarySearchPass(1.0, ev, include="a*,b*").options["include"] == ["a*", "b*"]
