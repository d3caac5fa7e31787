"""Schedules of the binary search (npcompile.search.variants): every variant keeps the metric
within its tolerance on the evaluation data it was given (checked on the really pruned model),
stays within its documented evaluation bound, decides the same with parallel levels, and the
floors are what the docstring says."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest

from npcompile.errors import UserError
from npcompile.execution.probes import ProbeEvaluator
from npcompile.graph.shapes import probe_shapes
from npcompile.passes.magnitude import MagnitudePass
from npcompile.passes.prune import PrunePass
from npcompile.passes.search import DEFAULT_VARIANT, BinarySearchPass, removal_levels
from npcompile.pipeline import Context
from npcompile.runtime.data import Dataset
from npcompile.runtime.evaluate import AccuracyEvaluator
from npcompile.search.variants import VARIANTS, SearchVariant, cost_weights, eval_bound, get_variant, visits

TOL = 2.0


def _search(model: onnx.ModelProto, ev, **options) -> tuple[Context, dict]:
    ctx = Context(model, probe_shapes(model))
    MagnitudePass().run(ctx)
    return ctx, BinarySearchPass(evaluator=ev, **options).run(ctx).data


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_respects_tolerance_and_bound(digits_mlp: tuple[onnx.ModelProto, Dataset], variant: str) -> None:
    model, data = digits_mlp
    ev = AccuracyEvaluator(data)
    ctx, result = _search(model, ev, tolerance=TOL, variant=variant)
    baseline = result["baseline"]
    assert result["variant"] == variant
    levels = [len(removal_levels(g)) for g in ctx.analysis.prunable_groups()]
    assert result["evaluation_bound"] == eval_bound(get_variant(variant), levels)
    assert result["evaluations"] <= result["evaluation_bound"]
    # the bound is the paper's sum of log2(width) per sweep, plus the baseline (and sensitivity probes)
    per_sweep = sum(math.ceil(math.log2(n)) for n in levels)
    assert result["evaluation_bound"] <= 1 + len(levels) + get_variant(variant).sweeps * per_sweep
    for p in result["probes"]:
        assert p["floor"] >= baseline - TOL - 1e-6
        assert p["accepted"] == (p["metric"] >= p["floor"])
    assert ctx.removal, "nothing removed"
    PrunePass().run(ctx)
    pruned = ev.evaluate(ctx.model)
    assert pruned == pytest.approx(result["final"], abs=1e-9)
    assert pruned >= baseline - TOL - 1e-9


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_parallel_levels_decide_the_same(digits_mlp: tuple[onnx.ModelProto, Dataset], variant: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    model, data = digits_mlp
    _, one = _search(model, AccuracyEvaluator(data), tolerance=TOL, variant=variant)
    monkeypatch.setattr(ProbeEvaluator, "width", property(lambda self: 3))
    _, three = _search(model, AccuracyEvaluator(data), tolerance=TOL, variant=variant)
    assert three["levels_per_round"] == 3
    assert three["groups"] == one["groups"] and three["final"] == one["final"]
    assert three["rounds"] <= one["rounds"]


def test_paper_is_the_default_unless_documented(digits_mlp: tuple[onnx.ModelProto, Dataset]) -> None:
    model, data = digits_mlp
    _, default = _search(model, AccuracyEvaluator(data), tolerance=TOL)
    _, named = _search(model, AccuracyEvaluator(data), tolerance=TOL, variant=DEFAULT_VARIANT)
    assert default["variant"] == DEFAULT_VARIANT and default["groups"] == named["groups"]


def test_floors_of_the_schedules() -> None:
    groups = [10, 11, 12]
    w = {10: 0.5, 11: 0.25, 12: 0.25}
    share = [(v.group, round(v.floor, 6)) for v in visits(get_variant("share"), groups, 90.0, 4.0, lambda: 90.0, w)]
    assert share == [(10, 88.0), (11, 87.0), (12, 86.0)]
    # share-global: the shares, then every group once more down to the global floor
    sg = list(visits(get_variant("share-global"), groups, 90.0, 4.0, lambda: 90.0, w))
    assert [v.group for v in sg] == groups * 2 and all(round(v.floor, 6) == 86.0 for v in sg[3:])
    # rounds: re-based on the metric reached before each sweep, never below baseline - tolerance
    reached = [90.0]
    rv = SearchVariant("r", rounds=2)
    floors = []
    for v in visits(rv, groups, 90.0, 4.0, lambda: reached[0]):
        floors.append(round(v.floor, 6))
        reached[0] = 89.5  # after the first visit the state scores 89.5
    assert floors == [88.0, 88.0, 88.0, 87.5, 87.5, 87.5]
    # sensitivity: the least loss per cost share first
    sens = {10: 1.0, 11: 0.0, 12: 1.0}
    order = [v.group for v in visits(get_variant("sensitivity"), groups, 90.0, 4.0, lambda: 90.0, w, sens)]
    assert order == [11, 10, 12]


def test_cost_weights_and_errors() -> None:
    wt = cost_weights({1: (30.0, 0.0), 2: (10.0, 40.0)}, (100.0, 100.0))
    assert wt[1] == pytest.approx(0.3 / 0.8) and sum(wt.values()) == pytest.approx(1.0)
    assert cost_weights({1: (0.0, 0.0), 2: (0.0, 0.0)}, (1.0, 1.0)) == {1: 0.5, 2: 0.5}
    with pytest.raises(UserError, match="unknown search variant"):
        get_variant("nope")
    with pytest.raises(UserError, match="unknown search variant"):
        BinarySearchPass(tolerance=1.0, evaluator=lambda m: 1.0, variant="nope")


def test_cli_options(tmp_path) -> None:
    from npcompile.api import CompileOptions

    with pytest.raises(UserError, match="^search_variant is a schedule of search binary"):
        CompileOptions(search_variant="share").validate()
    with pytest.raises(UserError, match="unknown search variant"):
        CompileOptions(search="binary", tolerance=1.0, eval="x.npz", search_variant="nope").validate()
    assert np.isfinite(TOL)
