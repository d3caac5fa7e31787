"""``npcompile batch MODELS... --pipeline P.toml -o OUTDIR``: compile a fleet of models with one recipe.

One folder per model under OUTDIR and an index (``index.json``, ``index.md``, ``junit.xml``). A
failing model does not stop the others. Exit code: 0 all models passed, 1 any model failed (a gate
or an error), 2 bad options (nothing compiled).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from npcompile.cli.main import InputShape, ProbeTimeout, RayAddress, Workers, _setup_logging, app
from npcompile.cli.params import annotation, declared
from npcompile.errors import UserError

__all__ = ["batch_cmd"]


def _default(param: str) -> Any:
    return declared(param).param_default


# the flags batch shares with compile, declared in npcompile.options.groups (some with a help text of their own)
PipelineFile = annotation(declared("pipeline"),
                          help="Pipeline file (TOML) every model runs (default: the lossless passes).")
Output = annotation(declared("output"), help="Output directory (one folder per model).")
Target = annotation(declared("target"))
EvalData = annotation(declared("eval_data"),
                      help="Evaluation data (.npz) for every model: accuracy before/after, search metric.")
Evaluator = annotation(declared("evaluator"),
                       help="auto, accuracy, top1, cosine, neg_mse (fidelity), or module:function.")
Threads = annotation(declared("threads"))
Seed = annotation(declared("seed"))
Benchmark = annotation(declared("benchmark"))
Runs = annotation(declared("runs"), help="Timed runs per latency measurement.")
MaxAccuracyDrop = annotation(declared("max_accuracy_drop"),
                             help="Gate: a model fails if top-1 accuracy drops by more than PP points.")
MinSpeedup = annotation(declared("min_speedup"), help="Gate: a model fails below this speedup.")
MaxSize = annotation(declared("max_size"), help="Gate: a model fails if model.onnx exceeds MB.")
MinParamReduction = annotation(declared("min_param_reduction"),
                               help="Gate: a model fails if less than this fraction of parameters was removed.")
Plots = annotation(declared("plots"), help="Draw plots beside each report.md.")
Quiet = annotation(declared("quiet"))
Verbose = annotation(declared("verbose"), help="Log what each compilation does.")


@app.command("batch")
def batch_cmd(
    models: Annotated[list[Path], typer.Argument(help="ONNX model files.")],
    pipeline: PipelineFile = None,
    output: Output = Path("npcompile-batch"),
    target: Target = _default("target"),
    eval_data: EvalData = None,
    evaluator: Evaluator = _default("evaluator"),
    input_shape: InputShape = None,
    threads: Threads = _default("threads"),
    seed: Seed = _default("seed"),
    benchmark: Benchmark = _default("benchmark"),
    runs: Runs = _default("runs"),
    max_accuracy_drop: MaxAccuracyDrop = None,
    min_speedup: MinSpeedup = None,
    max_size: MaxSize = None,
    min_param_reduction: MinParamReduction = None,
    plots: Plots = False,
    workers: Workers = _default("workers"),
    ray: RayAddress = None,
    probe_timeout: ProbeTimeout = _default("probe_timeout"),
    quiet: Quiet = False,
    verbose: Verbose = False,
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
        index = compile_fleet([str(m.resolve()) for m in models], output, options, backend, done,
                              style="cli")
    c = index["counts"]
    if not quiet:
        typer.echo(f"{c['passed']} passed, {c['failed']} failed a gate, {c['error']} errors; "
                   f"wrote {output}/index.json, index.md, junit.xml")
    return 0 if c["passed"] == index["total"] else 1
