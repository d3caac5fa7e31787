"""``npcompile compile MODEL [options]`` (also the bare ``npcompile MODEL``): its flags are the
options declared in :mod:`npcompile.options.groups`, in their order."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer

from npcompile.cli.main import _console, _setup_logging, app
from npcompile.cli.params import parameters
from npcompile.errors import GateError
from npcompile.options.groups import GROUPS

__all__ = ["compile_cmd"]

ModelArg = Annotated[Path, typer.Argument(help="ONNX model file.")]


def compile_cmd(**values: Any) -> None:
    """Compile MODEL: remove channels, verify, build the target, write model + report to OUTPUT."""
    from npcompile.api import compile
    from npcompile.options import from_cli

    _setup_logging(values["quiet"], values["verbose"])
    options = from_cli(values)
    if values["dry_run"]:
        _dry_run(options)
        return
    from npcompile.cli.summary import print_summary

    quiet, output = values["quiet"], values["output"]
    try:
        result = compile(str(values["model"]), output, options)
    except GateError as e:
        failed = getattr(e, "result", None)
        if not quiet and failed is not None:
            print_summary(_console(), failed.report, output, failed.files, options.junit, failed=True)
        raise
    if not quiet:
        print_summary(_console(), result.report, output, result.files, options.junit)


compile_cmd.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=ModelArg), *parameters(GROUPS)],
    return_annotation=None)
app.command("compile")(compile_cmd)


def _dry_run(options: Any) -> None:
    """Print the pipeline the options stand for, as a pipeline file, without running it."""
    from npcompile.api import make_target, prepare, resolve_specs
    from npcompile.pipeline.file import to_toml

    prepare(options, {})
    specs, _, _, _ = resolve_specs(options, make_target(options))
    for spec in specs:  # a pipeline file reads paths relative to itself: write them absolute
        for key, value in spec.options.items():
            if isinstance(value, str) and key != "evaluator" and Path(value).suffix and Path(value).exists():
                spec.options[key] = str(Path(value).resolve())
    text = to_toml(specs)
    if 'evaluator = "evaluator"' in text:
        text = text.replace("# npcompile pipeline", "# npcompile pipeline\n# evaluator = \"evaluator\": the one "
                            "--eval DATA.npz / --evaluator give when this file runs (--pipeline FILE --eval ...)", 1)
    typer.echo(text, nl=False)
