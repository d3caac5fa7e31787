"""``npcompile batch MODELS... --pipeline P.toml -o OUTDIR``: compile a fleet of models with one recipe.

One folder per model under OUTDIR and an index (``index.json``, ``index.md``, ``junit.xml``). A
failing model does not stop the others. Exit code: 0 all models passed, 1 any model failed (a gate
or an error), 2 bad options (nothing compiled).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from npcompile.cli.main import InputShape, ProbeTimeout, RayAddress, Workers, _setup_logging, app
from npcompile.errors import UserError

__all__ = ["batch_cmd"]


@app.command("batch")
def batch_cmd(
    models: Annotated[list[Path], typer.Argument(help="ONNX model files.")],
    pipeline: Annotated[Path | None, typer.Option(
        help="Pipeline file (TOML) every model runs (default: the lossless passes).")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Output directory (one folder per model).")
                      ] = Path("npcompile-batch"),
    target: Annotated[str, typer.Option("--target", "-t", help="onnx, onnxruntime or tensorrt.")] = "onnx",
    eval_data: Annotated[Path | None, typer.Option(
        "--eval", help="Evaluation data (.npz) for every model: accuracy before/after, search metric.")] = None,
    evaluator: Annotated[str, typer.Option(
        help="auto, accuracy, top1, cosine, neg_mse (fidelity), or module:function.")] = "auto",
    input_shape: InputShape = None,
    threads: Annotated[int, typer.Option(help="Intra-op threads for ONNX Runtime (0: default).")] = 0,
    seed: Annotated[int, typer.Option(help="Seed for probe inputs.")] = 0,
    benchmark: Annotated[bool, typer.Option(help="Measure latency before and after.")] = True,
    runs: Annotated[int, typer.Option(help="Timed runs per latency measurement.")] = 50,
    max_accuracy_drop: Annotated[float | None, typer.Option(
        help="Gate: a model fails if top-1 accuracy drops by more than PP points.")] = None,
    min_speedup: Annotated[float | None, typer.Option(help="Gate: a model fails below this speedup.")] = None,
    max_size: Annotated[float | None, typer.Option(help="Gate: a model fails if model.onnx exceeds MB.")] = None,
    min_param_reduction: Annotated[float | None, typer.Option(
        help="Gate: a model fails if less than this fraction of parameters was removed.")] = None,
    plots: Annotated[bool, typer.Option(help="Draw plots beside each report.md.")] = False,
    workers: Workers = 0,
    ray: RayAddress = None,
    probe_timeout: ProbeTimeout = 600.0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what each compilation does.")] = False,
) -> int:
    """Compile every model with the same pipeline (in parallel with --workers or --ray)."""
    from npcompile.api import CompileOptions
    from npcompile.execution import make_backend
    from npcompile.execution.fleet import compile_fleet
    from npcompile.graph.shapes import parse_input_shapes
    from npcompile.report.gates import Gates

    _setup_logging(quiet, verbose)
    if not models:
        raise UserError("batch needs at least one model")
    if output.exists() and not output.is_dir():
        raise UserError(f"output path exists and is not a directory: {output}")
    if pipeline is not None and not pipeline.is_file():
        raise UserError(f"pipeline file not found: {pipeline}")
    if eval_data is not None and not eval_data.is_file():
        raise UserError(f"evaluation data not found: {eval_data}")
    gates = Gates(max_accuracy_drop=max_accuracy_drop, min_speedup=min_speedup, max_size_mb=max_size,
                  min_param_reduction=min_param_reduction)
    options = CompileOptions(target=target, pipeline=str(pipeline.resolve()) if pipeline else None,
                             eval=str(eval_data.resolve()) if eval_data else None, evaluator=evaluator,
                             input_shapes=parse_input_shapes(input_shape), threads=threads, seed=seed,
                             benchmark=benchmark, runs=runs, gates=gates, plots=plots,
                             workers=workers, ray=ray, probe_timeout=probe_timeout)
    options.validate()  # bad options are one error for the whole batch, before anything runs

    def done(entry: dict) -> None:
        if not quiet:
            more = f": {entry['message']}" if entry["message"] else ""
            typer.echo(f"{entry['status']:6s} {entry['model']} -> {entry['output']} ({entry['seconds']:.1f} s){more}")

    with make_backend(workers, ray, probe_timeout) as backend:
        index = compile_fleet([str(m.resolve()) for m in models], output, options, backend, done)
    c = index["counts"]
    if not quiet:
        typer.echo(f"{c['passed']} passed, {c['failed']} failed a gate, {c['error']} errors; "
                   f"wrote {output}/index.json, index.md, junit.xml")
    return 0 if c["passed"] == index["total"] else 1
