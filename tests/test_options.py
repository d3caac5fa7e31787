"""The option declarations (npcompile.options): CompileOptions and the compile command come from them."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
import typer.main

from npcompile.api import CompileOptions
from npcompile.cli.main import app
from npcompile.errors import UserError
from npcompile.options import FIELDS, GROUPS, from_cli
from npcompile.report.gates import Gates


def compile_command():
    return typer.main.get_command(app).commands["compile"]


def test_every_field_and_flag_is_declared_once() -> None:
    names = [o.name for g in GROUPS for o in g.options]
    assert len(names) == len(set(names))
    params = [o.param_name for g in GROUPS for o in g.options if o.cli]
    assert len(params) == len(set(params))
    assert [f.name for f in dataclasses.fields(CompileOptions)] == list(FIELDS)
    assert [p.name for p in compile_command().params] == ["model", *params]


def test_compile_options_keeps_its_python_api() -> None:
    o = CompileOptions(ratio=0.3, criterion="l2")
    assert (o.ratio, o.criterion, o.mode, o.lossless, o.nm_pattern) == (0.3, "l2", "ratio", False, None)
    assert CompileOptions().lossless and CompileOptions(sparsity="2:4").nm_pattern == (2, 4)
    assert CompileOptions().include == [] and CompileOptions().include is not CompileOptions().include
    assert isinstance(CompileOptions().gates, Gates)
    o.validate()
    copy = dataclasses.replace(o, ratio=0.5)
    assert copy.ratio == 0.5 and copy.criterion == "l2"
    assert pickle.loads(pickle.dumps(o)) == o  # fleets send options to worker processes
    with pytest.raises(UserError, match=r"^ratio must be in \[0, 1\), got 1.5$"):
        CompileOptions(ratio=1.5).validate()
    with pytest.raises(TypeError):
        CompileOptions(no_such_option=1)


def test_cli_values_become_fields() -> None:
    ctx = compile_command().make_context("compile", ["m.onnx", "--ratio", "0.3", "--pass", "quantize",
                                                     "--batch-sizes", "1,8", "--input-shape", "x:1x3",
                                                     "--max-size", "5", "--eval", "e.npz", "--no-plots"])
    o = from_cli(ctx.params)
    assert (o.ratio, o.extra_passes, o.batch_sizes, o.input_shapes) == (0.3, ["quantize"], [1, 8], {"x": (1, 3)})
    assert (o.gates.max_size_mb, o.eval, o.plots, o.include) == (5.0, "e.npz", False, [])
    defaults = from_cli(compile_command().make_context("compile", ["m.onnx"]).params)
    assert defaults == CompileOptions()
