"""The pass contract: requires/produces/exact declarations, the pipeline's precondition check, the
ONNX checker after every modifying pass, report sections from PassResult, and losslessness derived
from the passes that ran (plugins written before the contract keep working)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import npcompile
from npcompile.errors import NpcompileError, PassError, UserError, VerificationError
from npcompile.graph.shapes import probe_shapes
from npcompile.passes.cleanup import CleanupPass
from npcompile.passes.magnitude import MagnitudePass
from npcompile.passes.prune import PrunePass
from npcompile.passes.select import DeadChannelsPass, SelectPass
from npcompile.pipeline import Context, Pass, PassResult, Pipeline, available_passes

ROOT = Path(__file__).resolve().parents[1]
LENET = ROOT / "examples" / "lenet_mnist" / "model.onnx"


def context(model) -> Context:
    return Context(model, probe_shapes(model))


class OldScore(Pass):
    """A plugin pass written before the contract: no requires, produces or exact."""

    name = "old-score"
    kind = "analysis"

    def run(self, ctx: Context) -> PassResult:
        MagnitudePass().run(ctx)
        return PassResult(False, "scored")


class OldRewrite(Pass):
    name = "old-rewrite"
    kind = "rewrite"

    def run(self, ctx: Context) -> PassResult:
        graph = ctx.graph
        ctx.set_graph(graph)
        return PassResult(True, "rewrote", report={"note": "mine"})


class Breaker(Pass):
    """Produces a model the ONNX checker rejects (a node reading a tensor nothing produces)."""

    name = "breaker"
    kind = "rewrite"
    produces = frozenset({"model"})
    exact = True

    def run(self, ctx: Context) -> PassResult:
        model = type(ctx.model)()
        model.CopyFrom(ctx.model)
        model.graph.node[0].input[0] = "nowhere"
        ctx.set_model(model)
        return PassResult(True, "broke it")


class Adder(Pass):
    name = "adder"
    produces = frozenset()
    exact = True
    section, accumulate = "shared", True

    def __init__(self, tag: str = "a") -> None:
        super().__init__(tag=tag)
        self.tag = tag

    def run(self, ctx: Context) -> PassResult:
        return PassResult(False, self.tag, report={"rows": [self.tag], "last": self.tag})


def test_every_built_in_pass_declares_its_contract() -> None:
    built_in = {n: c for n, c in available_passes().items() if c.__module__.startswith("npcompile.passes")}
    assert len(built_in) >= 20
    for name, cls in built_in.items():
        assert cls.produces is not None, name
        assert cls.exact is not None, name
        assert all(isinstance(r, str) for r in cls.requires), name
    assert SelectPass(threshold=0).exact and not SelectPass(ratio=0.3).exact
    assert PrunePass.requires == {"removal"} and SelectPass.requires == {"scores"}


def test_a_missing_requirement_names_the_pass_and_the_product(lenet) -> None:
    ctx = context(lenet)
    with pytest.raises(UserError, match=r"pass #1 select requires scores.*magnitude"):
        Pipeline([SelectPass(ratio=0.3), PrunePass()]).run(ctx)
    assert ctx.model is lenet  # nothing ran
    with pytest.raises(PassError, match="npcompile bug") as info:
        Pipeline([SelectPass(ratio=0.3)], internal=True).run(ctx)
    assert info.value.exit_code == 3 and not isinstance(info.value, UserError)


def test_requirements_met_by_the_context_or_an_undeclared_plugin(lenet) -> None:
    ctx = context(lenet)
    Pipeline([MagnitudePass(), SelectPass(threshold=0)]).run(ctx)
    Pipeline([PrunePass()]).run(ctx)  # the removal came from the pipeline before
    ctx = context(lenet)
    Pipeline([OldScore(), SelectPass(ratio=0.25), PrunePass()]).run(ctx)  # old-score may make anything
    assert ctx.applied and not ctx.lossless


def test_a_pipeline_file_out_of_order_is_a_user_error(tmp_path: Path) -> None:
    pipe = tmp_path / "p.toml"
    pipe.write_text('[[passes]]\nname = "prune"\n\n[[passes]]\nname = "dead-channels"\n')
    with pytest.raises(UserError, match="prune requires removal"):
        npcompile.compile(LENET, None, pipeline=str(pipe), benchmark=False, plots=False)


def test_the_checker_runs_after_a_modifying_pass_and_names_it(lenet) -> None:
    with pytest.raises(VerificationError, match="pass breaker .*plugin.*fails the ONNX checker") as info:
        Pipeline([MagnitudePass(), Breaker()]).run(context(lenet))
    assert info.value.exit_code == 3 and isinstance(info.value, NpcompileError)


@pytest.mark.parametrize(("passes", "lossless"), [
    (lambda: [DeadChannelsPass(), PrunePass(), CleanupPass()], True),
    (lambda: [MagnitudePass(), SelectPass(threshold=0), PrunePass(), CleanupPass()], True),
    (lambda: [MagnitudePass(), SelectPass(ratio=0.3), PrunePass(), CleanupPass()], False),
    (lambda: [OldScore(), SelectPass(threshold=0), PrunePass()], True),
    (lambda: [DeadChannelsPass(), PrunePass(), OldRewrite()], False),
])
def test_lossless_is_derived_from_the_passes_that_ran(lenet, passes: Any, lossless: bool) -> None:
    ctx = context(lenet)
    Pipeline(passes()).run(ctx)
    assert ctx.lossless is lossless


def test_report_sections_replace_or_accumulate(lenet) -> None:
    ctx = context(lenet)
    Pipeline([OldRewrite(), Adder("a"), Adder("b")]).run(ctx)
    assert ctx.report_extras["old-rewrite"] == {"note": "mine"}
    assert ctx.report_extras["shared"] == {"rows": ["a", "b"], "last": "b"}
    assert ctx.results["adder"].report == {"rows": ["b"], "last": "b"}


def test_compile_reports_the_sections_of_the_passes(tmp_path: Path) -> None:
    res = npcompile.compile(LENET, None, round_to=1, benchmark=False, plots=False,
                            search="binary", eval=str(ROOT / "examples" / "lenet_mnist" / "eval.npz"),
                            tolerance=0.02)
    section = res.report["binary-search"]
    assert section["summary"] == next(p["summary"] for p in res.report["passes"] if p["name"] == "binary-search")
    assert "evaluations" in section


def test_a_criterion_that_scores_nothing_is_a_user_error() -> None:
    # every analysis pass is accepted as --criterion; prune-hidden produces no scores for select
    with pytest.raises(UserError, match="select requires scores.*prune-hidden"):
        npcompile.compile(LENET, None, criterion="prune-hidden", ratio=0.3, benchmark=False, plots=False)
