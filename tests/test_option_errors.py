"""Option errors name the option as each surface spells it (issue 14, item 4): the CLI by flag
(``--round-to``), the Python API by keyword (``round_to``), a pipeline file by its key."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

import npcompile
from npcompile.cli.main import main
from npcompile.errors import OPT, OptionError, PassError, UserError
from npcompile.graph.shapes import probe_shapes
from npcompile.options.groups import flag
from npcompile.pipeline import Context, Pipeline
from npcompile.pipeline.file import PassSpec, instantiate
from npcompile.report.gates import Gates

ROOT = Path(__file__).resolve().parents[1]
LENET = ROOT / "examples" / "lenet_mnist" / "model.onnx"


def _cli_error(capsys: pytest.CaptureFixture[str], *args: object) -> str:
    """The one stderr line of a CLI run that must fail with exit code 2."""
    assert main([str(a) for a in args]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("npcompile: error: ")
    return lines[0].removeprefix("npcompile: error: ")


def test_the_same_bad_value_through_the_cli_the_api_and_a_pipeline_file(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert _cli_error(capsys, LENET, "--ratio", "0.3", "--round-to", "0", "-q", "-o", out) == \
        "--round-to must be between 1 and 4096, got 0"
    with pytest.raises(OptionError, match=r"^round_to must be between 1 and 4096, got 0$"):
        npcompile.compile(str(LENET), ratio=0.3, round_to=0)

    pipe = tmp_path / "p.toml"
    pipe.write_text('[[passes]]\nname = "magnitude"\n\n[[passes]]\nname = "select"\nratio = 0.3\nround_to = 0\n\n'
                    '[[passes]]\nname = "prune"\n')
    # the CLI prints it, but the option is the file's key
    assert _cli_error(capsys, LENET, "--pipeline", pipe, "--no-benchmark", "-q", "-o", out) == \
        "round_to must be >= 1, got 0"
    with pytest.raises(UserError, match=r"^round_to must be >= 1, got 0$"):
        npcompile.compile(str(LENET), pipeline=str(pipe), benchmark=False)
    assert not out.exists()


def test_core_checks_name_the_flag_on_the_cli_and_the_keyword_in_python(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    # report/gates.py: the Gates field is max_size_mb, its flag --max-size
    assert _cli_error(capsys, LENET, "--ratio", "0.3", "--max-size", "-1", "-q", "-o", out) == \
        "--max-size must be between 0 and 1e+09, got -1"
    with pytest.raises(OptionError, match=r"^max_size_mb must be between 0 and 1e\+09, got -1$"):
        npcompile.compile(str(LENET), ratio=0.3, gates=Gates(max_size_mb=-1))
    # report/preflight.py: data named by the option that gives it
    assert _cli_error(capsys, LENET, "--ratio", "0.3", "--max-accuracy-drop", "1", "-q", "-o", out) == \
        "--max-accuracy-drop needs evaluation data: give --eval DATA.npz (or --evaluator module:function)"
    with pytest.raises(OptionError, match=r"^max_accuracy_drop needs evaluation data: give eval DATA\.npz "
                                          r"\(or evaluator module:function\)$"):
        npcompile.compile(str(LENET), ratio=0.3, gates=Gates(max_accuracy_drop=1.0))
    assert not out.exists()


def test_a_pass_option_whose_flag_belongs_to_another_compile_option(lenet) -> None:
    from npcompile.passes.latency import LatencyBudgetPass

    with pytest.raises(OptionError) as e:
        LatencyBudgetPass(target_latency=0.5, criterion="nope")
    assert str(e.value) == "criterion must be one of per-ms, importance, got 'nope'"
    assert e.value.render("cli") == "--latency-criterion must be one of per-ms, importance, got 'nope'"
    assert e.value.render("toml") == str(e.value)
    with pytest.raises(OptionError) as e:  # from a pipeline file: the key, whoever prints it
        instantiate([PassSpec("latency-budget", {"target_latency": 0.5, "criterion": "nope"})], lenet,
                    surface="toml")
    assert e.value.render("cli") == "criterion must be one of per-ms, importance, got 'nope'"


def test_a_pass_failing_at_run_time_keeps_the_placeholders(lenet) -> None:
    from npcompile.passes.activation import ApozPass

    with pytest.raises(PassError) as e:
        Pipeline([ApozPass()]).run(Context(lenet, probe_shapes(lenet)))
    assert e.value.exit_code == 2
    assert str(e.value).endswith("needs calibration data (calib DATA.npz)")
    assert e.value.render("cli").endswith("needs calibration data (--calib DATA.npz)")


def test_str_render_and_the_error_types() -> None:
    err = OptionError(f"{OPT:round_to} must be >= 1, got {0}")
    assert isinstance(err, UserError) and err.exit_code == 2
    assert str(err) == "round_to must be >= 1, got 0" and err.args == ("round_to must be >= 1, got 0",)
    assert err.render() == str(err) and err.render("python") == str(err)
    assert err.render("cli") == "--round-to must be >= 1, got 0"
    assert err.render("toml") == "round_to must be >= 1, got 0"
    with pytest.raises(ValueError, match="unknown message style"):
        err.render("yaml")
    again = pickle.loads(pickle.dumps(err))  # errors come back from worker processes
    assert type(again) is OptionError and str(again) == str(err) and again.render("cli") == err.render("cli")
    wrapped = PassError(f"pass select failed: {err.template}", exit_code=err.exit_code)
    assert str(wrapped) == "pass select failed: round_to must be >= 1, got 0"
    assert wrapped.render("cli") == "pass select failed: --round-to must be >= 1, got 0"
    plain = UserError("no options named here")
    assert plain.render("cli") == str(plain) == plain.template == "no options named here"


def test_literal_braces_and_values_with_braces_are_left_alone() -> None:
    value = "{round_to} {OPT:calib} {0} {"  # what a user might write: never parsed
    err = OptionError(f"{OPT:ratio} {{literal}} got {value!r}")
    assert str(err) == "ratio {literal} got '{round_to} {OPT:calib} {0} {'"
    assert err.render("cli") == "--ratio {literal} got '{round_to} {OPT:calib} {0} {'"
    with pytest.raises(ValueError, match="option placeholder"):
        f"{OPT:not an option}"  # noqa: B018
    with pytest.raises(ValueError, match="option placeholder"):
        f"{OPT}"  # noqa: B018


def test_flags_as_declared_or_derived() -> None:
    assert flag("round_to") == "--round-to"  # declared
    assert flag("eval") == "--eval"  # declared, the parameter is eval_data
    assert flag("input_shapes") == "--input-shape"  # declared, singular
    assert flag("plugins") == "--plugin"  # derived from the parameter name
    assert flag("max_accuracy_drop") == "--max-accuracy-drop"  # derived
    assert flag("target") == "--target"  # the long one of --target/-t
    assert flag("no_such_option") == "--no-such-option"  # declared nowhere
