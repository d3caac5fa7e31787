"""FLOPs and parameter costs from the channel analysis, sensitivity tables, and budget selection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import zoo
from searchkit import random_removal

from npcompile.channels.cost import CostModel, group_costs
from npcompile.channels.rewrite import apply_removal
from npcompile.errors import UserError
from npcompile.graph.model_io import load_model
from npcompile.graph.shapes import probe_shapes
from npcompile.graph.stats import model_stats
from npcompile.passes.magnitude import MagnitudePass
from npcompile.passes.prune import PrunePass
from npcompile.passes.search import BudgetPass, SensitivityPass
from npcompile.pipeline import Context, Pipeline
from npcompile.runtime.data import Dataset
from npcompile.runtime.evaluate import AccuracyEvaluator


def _zoo(name: str, tmp: Path) -> onnx.ModelProto:
    torch.manual_seed(0)
    builder, shape = zoo.ZOO[name]
    path = tmp / f"{name}.onnx"
    zoo.export(zoo.randomize_bn(builder(), 0), shape, str(path), dynamo=False)
    return load_model(path)


@pytest.mark.parametrize("name", ["resnet_basic", "mobilenet_v2", "grouped_conv_net", "densenet"])
def test_cost_model_matches_model_stats(name: str, tmp_path: Path) -> None:
    model = _zoo(name, tmp_path)
    probe = probe_shapes(model)
    ctx = Context(model, probe)
    cm = CostModel(ctx.analysis, ctx.shapes)
    before = model_stats(model, probe)
    assert (cm.base.flops, cm.base.params) == (before.flops, before.params)
    costs = group_costs(ctx.analysis, ctx.shapes, cm)
    assert set(costs) == {g.id for g in ctx.analysis.prunable_groups()}
    assert all(f > 0 and p > 0 for f, p in costs.values())
    removal = random_removal(ctx, np.random.default_rng(3))
    predicted = cm.cost(removal)
    apply_removal(ctx.graph, ctx.analysis, removal)
    ctx.set_graph(ctx.graph)
    after = model_stats(ctx.model, probe)
    assert (predicted.flops, predicted.params) == (after.flops, after.params)


@pytest.mark.parametrize("target", [0.5, 0.3])
def test_budget_reaches_flops_target_within_one_step(target: float, tmp_path: Path) -> None:
    model = _zoo("vgg", tmp_path)
    probe = probe_shapes(model)
    ctx = Context(model, probe)
    records = Pipeline([MagnitudePass(), BudgetPass(target_flops=target, round_to=4), PrunePass()]).run(ctx)
    data = ctx.results["budget"].data
    assert data["reached"] and data["guide"] == "magnitude" and data["evaluations"] == 0
    base = model_stats(model, probe).flops
    flops = model_stats(ctx.model, probe).flops
    assert flops == data["result"]["flops"]
    assert flops <= target * base < flops + data["last_step"]["flops"]
    for g in data["groups"]:
        kept = g["width"] - g["removed"]
        assert kept == g["width"] or kept % 4 == 0
    assert "keeps" in records[1]["summary"]


def test_sensitivity_guides_budget(digits_mlp: tuple[onnx.ModelProto, Dataset]) -> None:
    model, data = digits_mlp
    ev = AccuracyEvaluator(data)
    probe = probe_shapes(model)
    fractions = (0.25, 0.5, 0.75)
    ctx = Context(model, probe)
    MagnitudePass().run(ctx)
    sens = SensitivityPass(ev, fractions=fractions).run(ctx)
    table = sens.data["table"]
    groups = ctx.analysis.prunable_groups()
    assert [row["group"] for row in table] == [g.name for g in groups]
    assert sens.data["evaluations"] <= 1 + len(groups) * len(fractions)
    for row in table:
        removed = [p["removed"] for p in row["points"]]
        assert removed == sorted(removed) and removed[-1] > 0
    assert ctx.results["sensitivity"] is sens
    # the budget reuses the table: one evaluation (the final one)
    budget = BudgetPass(target_params=0.6, evaluator=ev, fractions=fractions).run(ctx)
    assert budget.data["guide"] == "sensitivity" and budget.data["evaluations"] == 1
    assert budget.data["reached"] and budget.data["kept"]["params"] <= 0.6
    chosen = dict(ctx.removal)
    # alone it measures its own table, and takes the same decisions
    ctx2 = Context(model, probe)
    MagnitudePass().run(ctx2)
    alone = BudgetPass(target_params=0.6, evaluator=ev, fractions=fractions).run(ctx2)
    assert alone.data["evaluations"] == sens.data["evaluations"] + 1
    assert {k: v.tolist() for k, v in ctx2.removal.items()} == {k: v.tolist() for k, v in chosen.items()}
    PrunePass().run(ctx2)
    assert ev.evaluate(ctx2.model) == pytest.approx(alone.data["final"])
    assert model_stats(ctx2.model, probe).params <= 0.6 * model_stats(model, probe).params


def test_budget_unreachable_and_options(digits_mlp: tuple[onnx.ModelProto, Dataset]) -> None:
    model, _ = digits_mlp
    ctx = Context(model, probe_shapes(model))
    MagnitudePass().run(ctx)
    result = BudgetPass(target_flops=0.01).run(ctx)
    assert not result.data["reached"] and "not reached" in result.summary
    assert ctx.removal  # it still went as far as it could
    with pytest.raises(UserError, match="FLOPs or parameter target"):
        BudgetPass()
    with pytest.raises(UserError, match="fraction to keep"):
        BudgetPass(target_flops=1.5)
    with pytest.raises(UserError, match="fractions"):
        SensitivityPass(AccuracyEvaluator(Dataset({"input": np.zeros((1, 1, 8, 8), np.float32)}, np.zeros(1, int))),
                        fractions=(0.5, 1.0))
