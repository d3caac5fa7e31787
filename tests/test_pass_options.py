"""Pass options declared once (an ``Options`` dataclass): unknown names and bad values are rejected
as before, the options are attributes of the pass, and the report lists the same options in the
same order as when every pass repeated them in its ``__init__``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from npcompile.errors import UserError
from npcompile.graph.shapes import probe_shapes
from npcompile.passes.finetune import FinetunePass
from npcompile.passes.magnitude import MagnitudePass
from npcompile.passes.prune import PrunePass
from npcompile.passes.quantize import QuantizePass
from npcompile.passes.search import BinarySearchPass
from npcompile.passes.select import SelectPass
from npcompile.passes.sparsity import SparsityPass
from npcompile.pipeline import Context, Pass, PassResult, Pipeline
from npcompile.pipeline.file import PassSpec, instantiate


def test_unknown_option_is_rejected_by_the_pipeline_file_loader(lenet) -> None:
    with pytest.raises(UserError) as e:
        instantiate([PassSpec("select", {"ratio": 0.2, "bogus": 1})], lenet)
    assert str(e.value) == ("pass select: unknown option(s) ['bogus']; it takes "
                            "['ratio', 'threshold', 'round_to', 'min_channels', 'include', 'exclude']")
    with pytest.raises(TypeError, match="SelectPass.__init__\\(\\) got an unexpected keyword argument 'bogus'"):
        SelectPass(ratio=0.2, bogus=1)


def test_bad_values_give_the_same_errors(lenet) -> None:
    with pytest.raises(UserError, match="^pass magnitude: magnitude: p must be 1 or 2, got 3$"):
        instantiate([PassSpec("magnitude", {"p": 3})], lenet)  # a ValueError becomes a UserError
    with pytest.raises(ValueError, match="^magnitude: p must be 1 or 2, got 3$"):
        MagnitudePass(p=3)
    with pytest.raises(UserError, match="^select: give exactly one of ratio and threshold$"):
        instantiate([PassSpec("select", {})], lenet)
    with pytest.raises(UserError, match="^round_to must be >= 1, got 0$"):
        SelectPass(ratio=0.2, round_to=0)
    with pytest.raises(UserError, match="^optimizer must be one of adam, sgd, got 'lbfgs'$"):
        FinetunePass(optimizer="lbfgs")
    with pytest.raises(TypeError, match=r"^BinarySearchPass.__init__\(\) missing 1 required positional argument: "
                                        "'evaluator'$"):
        BinarySearchPass(0.5)


def test_options_are_attributes_and_positional_arguments_still_work() -> None:
    p = SelectPass(0.3, round_to=8, include="conv*")
    assert (p.ratio, p.threshold, p.round_to, p.include) == (0.3, None, 8, ["conv*"])
    assert p.config.ratio == 0.3
    f = FinetunePass(epochs=2.0, optimizer="SGD", loss="NLL", lr=1)
    assert (f.epochs, f.optimizer, f.loss, f.lr) == (2, "sgd", "nll", 1.0)
    assert repr(MagnitudePass(2)) == "magnitude(p=2)"


def test_recorded_options_keep_their_content_and_order(lenet) -> None:
    # what the passes recorded when each repeated its options in super().__init__(...)
    assert list(SelectPass(ratio=0.3, include="a").options.items()) == [
        ("ratio", 0.3), ("threshold", None), ("round_to", 1), ("min_channels", 1)]
    assert list(FinetunePass(epochs=2.0, optimizer="SGD", loss="NLL", lr=1, train="x.npz").options.items()) == [
        ("epochs", 2), ("lr", 1.0), ("optimizer", "sgd"), ("batch_size", 64), ("seed", None), ("momentum", 0.9),
        ("weight_decay", 0.0), ("loss", "nll"), ("steps", None), ("keep_zeros", True), ("freeze_bn_stats", True),
        ("output", 0), ("schedule", "cosine"), ("threads", 0), ("distill", 0.0), ("temperature", 2.0)]
    assert SparsityPass(sparsity=1 / 2, scope="GLOBAL", include="a,b", zlib_level=3.0).options == {
        "sparsity": 0.5, "scope": "global", "include": ["a", "b"], "exclude": None, "min_size": 64,
        "max_layer_sparsity": 0.99, "zlib_level": 3.0}
    assert list(QuantizePass(scheme="fp16", exclude="a,b").options) == [
        "scheme", "method", "batch_size", "exclude", "per_channel", "keep_io_types", "activations", "samples",
        "percentile", "preprocess", "reduce_range", "op_types", "quantize_bias", "check", "calib"]
    ctx = Context(lenet, probe_shapes(lenet))
    records = Pipeline([MagnitudePass(p=2), SelectPass(ratio=0.25, round_to=2), PrunePass()]).run(ctx)
    assert [json.dumps(r["options"]) for r in records] == [
        '{"p": 2}', '{"ratio": 0.25, "threshold": null, "round_to": 2, "min_channels": 1}', '{}']


class OldStyle(Pass):
    """A pass written before ``Options``: its own ``__init__``, options recorded by hand."""

    name = "old-style-options"

    def __init__(self, level: int = 1, **extra: Any) -> None:
        super().__init__(level=level)
        self.level = level

    def run(self, ctx: Context) -> PassResult:
        return PassResult(False, f"level {self.level}")


def test_old_style_passes_keep_working(lenet) -> None:
    p = OldStyle(level=3)
    assert p.options == {"level": 3} and p.level == 3
    ctx = Context(lenet, probe_shapes(lenet))
    assert Pipeline([p]).run(ctx)[0]["options"] == {"level": 3}
    # a spec names the class by module:Class; **extra accepts any key, as the signature says
    [q] = instantiate([PassSpec(f"{__name__}:OldStyle", {"level": 2, "anything": 1})], lenet)
    assert q.options == {"level": 2}
