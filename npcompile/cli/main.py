"""The ``npcompile`` command line.

``npcompile MODEL [options]`` compiles (the same as ``npcompile compile MODEL``); ``npcompile
inspect MODEL`` shows channel groups and per-layer figures; ``npcompile passes`` lists passes.
Exit codes: 0 done, 1 a gate failed, 2 user or model error (one line on stderr), 3 internal error.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import Annotated

import typer

from npcompile import __version__
from npcompile.errors import GateError, NpcompileError, UserError

__all__ = ["app", "main"]


def _cli_exceptions() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """(exit, abort, usage-error) exception types of the click flavour typer runs on: typer
    vendors click in recent releases and depends on it in older ones."""
    exits: list[type] = [typer.Exit]
    aborts: list[type] = [typer.Abort]
    usage: list[type] = []
    try:
        from typer import exceptions as tex

        usage.append(tex.TyperException)
    except ImportError:  # pragma: no cover - older typer
        pass
    try:
        import click

        exits.append(click.exceptions.Exit)
        aborts.append(click.exceptions.Abort)
        usage.append(click.exceptions.ClickException)
    except ImportError:
        pass
    return tuple(exits), tuple(aborts), tuple(usage)

app = typer.Typer(add_completion=True, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="npcompile: structured channel pruning for ONNX models, verified and deployed.")

SUBCOMMANDS = ("compile", "inspect", "passes", "targets", "batch")

InputShape = Annotated[list[str] | None, typer.Option(
    "--input-shape", help="Shape of an input with dynamic dimensions, NAME:1x3x224x224 (repeatable).")]
Workers = Annotated[int, typer.Option(help="Evaluate probes (search, sensitivity) in N local worker processes.")]
RayAddress = Annotated[str | None, typer.Option(
    "--ray", help="Evaluate probes on the Ray cluster at ADDRESS ('auto': ray.init() defaults).")]
ProbeTimeout = Annotated[float, typer.Option(
    help="Seconds without a finished probe before the workers or the cluster count as lost.")]


def _console():
    from rich.console import Console

    return Console(no_color=bool(os.environ.get("NO_COLOR")), highlight=False)


def _setup_logging(quiet: bool, verbose: bool) -> None:
    if not verbose:  # library warnings (numpy, onnx) would break the one-line error contract
        warnings.filterwarnings("ignore")
    level = logging.ERROR if quiet else (logging.INFO if verbose else logging.WARNING)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", "-V", help="Print the version and exit.")] = False,
) -> None:
    if version:
        typer.echo(f"npcompile {__version__}")
        raise typer.Exit(0)


@app.command("compile")
def compile_cmd(
    model: Annotated[Path, typer.Argument(help="ONNX model file.")],
    target: Annotated[str, typer.Option("--target", "-t", help="onnx, onnxruntime or tensorrt.")] = "onnx",
    output: Annotated[Path, typer.Option("--output", "-o", help="Output directory.")] = Path("npcompile-out"),
    criterion: Annotated[str, typer.Option(
        help="Channel score: magnitude (L1), l1, l2, maxout, apoz, mean-abs, or a plugin analysis pass.")
    ] = "magnitude",
    ratio: Annotated[float | None, typer.Option(help="Fraction of every prunable group to remove.")] = None,
    threshold: Annotated[float | None, typer.Option(
        help="Remove channels scored <= T (0: exactly the dead channels).")] = None,
    round_to: Annotated[int | None, typer.Option(
        "--round-to", help="Keep widths at multiples of N (default: the target's, for --ratio).")] = None,
    min_channels: Annotated[int, typer.Option("--min-channels", help="Never keep fewer channels.")] = 1,
    input_shape: InputShape = None,
    provider: Annotated[str, typer.Option(help="ONNX Runtime provider: cpu, cuda, tensorrt.")] = "cpu",
    threads: Annotated[int, typer.Option(help="Intra-op threads for ONNX Runtime (0: default).")] = 0,
    seed: Annotated[int, typer.Option(help="Seed for probe inputs.")] = 0,
    verify_tolerance: Annotated[float, typer.Option(
        help="Largest relative output change allowed where removal must be lossless.")] = 1e-4,
    eval_data: Annotated[Path | None, typer.Option(
        "--eval", help="Evaluation data (.npz, inputs + labels): accuracy before/after, search metric.")] = None,
    evaluator: Annotated[str, typer.Option(
        help="auto, accuracy, top1, cosine, neg_mse (fidelity), verification (pairs file as --eval), "
             "or module:function.")] = "auto",
    top_k: Annotated[int, typer.Option("--top-k", help="Top-k accuracy.")] = 1,
    search: Annotated[str | None, typer.Option(help="Per-layer search: binary (needs --tolerance).")] = None,
    tolerance: Annotated[float | None, typer.Option(
        help="Metric points the search may lose (e.g. 1 = one accuracy point).")] = None,
    search_variant: Annotated[str | None, typer.Option(
        help="Schedule of --search binary: share (default: each layer may spend the share of the tolerance "
             "matching what it can remove), paper (in order, the whole tolerance per layer), sensitivity, "
             "rounds, share-global (see npcompile/search/variants.py).")] = None,
    include: Annotated[list[str] | None, typer.Option(help="Only groups matching this pattern (repeatable).")] = None,
    exclude: Annotated[list[str] | None, typer.Option(help="Never groups matching this pattern (repeatable).")] = None,
    target_flops: Annotated[float | None, typer.Option(help="Budget: keep this fraction of FLOPs.")] = None,
    target_params: Annotated[float | None, typer.Option(help="Budget: keep this fraction of parameters.")] = None,
    target_latency: Annotated[float | None, typer.Option(
        help="Budget: reach this fraction of the original latency, measured on the target.")] = None,
    latency_criterion: Annotated[str, typer.Option(
        help="--target-latency plan: per-ms (importance lost per ms saved) or importance.")] = "per-ms",
    latency_cache: Annotated[Path | None, typer.Option(
        help="Folder of cached per-layer latency models [default: ~/.cache/npcompile/latency].")] = None,
    sensitivity: Annotated[bool, typer.Option("--sensitivity", help="Measure per-layer sensitivity.")] = False,
    prune_hidden: Annotated[bool, typer.Option(
        "--prune-hidden",
        help="Transformers: prune the hidden width too (lossy; score it with --criterion mean-abs).")] = False,
    train: Annotated[Path | None, typer.Option(help="Labelled training data (.npz): fine-tune after pruning.")] = None,
    epochs: Annotated[int | None, typer.Option(
        help="Fine-tuning epochs per fine-tuning pass [default: enough for about 3000 steps, at most 10].")] = None,
    lr: Annotated[float, typer.Option(help="Fine-tuning learning rate.")] = 1e-3,
    distill: Annotated[float, typer.Option(
        help="Fine-tuning: weight of distillation from the original model (0: labels only).")] = 0.0,
    optimizer: Annotated[str, typer.Option(help="Fine-tuning optimizer: adam or sgd.")] = "adam",
    batch_size: Annotated[int, typer.Option(help="Fine-tuning batch size.")] = 64,
    steps: Annotated[int, typer.Option(help="Repeat analyse -> prune (-> fine-tune) N times.")] = 1,
    calib: Annotated[Path | None, typer.Option(
        help="Calibration data (.npz) for --criterion maxout, apoz, mean-abs.")] = None,
    calib_batch_size: Annotated[int, typer.Option(help="Calibration batch size.")] = 256,
    maxout_per_unit: Annotated[int, typer.Option(
        help="Maxout: neurons removed from every unit per step (least relevant first).")] = 1,
    maxout_units: Annotated[int, typer.Option(help="Maxout: whole units removed per step.")] = 0,
    reconstruct: Annotated[bool, typer.Option(
        "--reconstruct", help="Refit consumer layers by least squares on --calib data (no training).")] = False,
    reconstruct_select: Annotated[bool, typer.Option(
        "--reconstruct-select", help="Choose channels by the reconstruction error they cause.")] = False,
    bias_compensation: Annotated[bool, typer.Option(
        "--bias-compensation", help="Fold removed channels' mean contribution into the next biases.")] = False,
    bn_recalibrate: Annotated[bool, typer.Option(
        "--bn-recalibrate", help="Re-estimate BatchNorm statistics on --calib data after pruning.")] = False,
    sparsity: Annotated[str | None, typer.Option(
        help="Weight sparsity after pruning: a fraction (0.8, 80%) or 2:4 (TensorRT's structured pattern).")] = None,
    sparsity_scope: Annotated[str, typer.Option(help="Unstructured sparsity per layer or global.")] = "layer",
    sparsity_steps: Annotated[int, typer.Option(
        help="Reach the --sparsity fraction gradually, in N prune (-> fine-tune) steps.")] = 1,
    benchmark: Annotated[bool, typer.Option(help="Measure latency before and after.")] = True,
    runs: Annotated[int, typer.Option(help="Timed runs per round of a latency measurement.")] = 50,
    latency_precision: Annotated[float, typer.Option(
        help="Measure latency until the speedup's 95 % interval is within +- this fraction.")] = 0.02,
    latency_max_seconds: Annotated[float, typer.Option(
        help="... or for at most this many seconds (at least two rounds).")] = 30.0,
    warmup: Annotated[int, typer.Option(help="Warm-up runs before timing.")] = 10,
    batch_sizes: Annotated[str | None, typer.Option(
        help="Also measure latency at these batch sizes, e.g. 1,8,32 (dynamic-batch models).")] = None,
    extra_pass: Annotated[list[str] | None, typer.Option(
        "--pass", help="Extra pass to run after pruning, by name or module:Class (repeatable).")] = None,
    pipeline: Annotated[Path | None, typer.Option(
        help="Pipeline file (TOML): the passes to run, replacing --ratio/--threshold.")] = None,
    plugin: Annotated[list[str] | None, typer.Option(
        help="Load passes/targets from module:Name, a module, or a .py file (repeatable).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resolved pipeline and exit.")] = False,
    max_accuracy_drop: Annotated[float | None, typer.Option(
        help="Gate: fail (exit 1) if top-1 accuracy drops by more than PP points.")] = None,
    min_speedup: Annotated[float | None, typer.Option(
        help="Gate: pass if the speedup's 95 % interval is above X, fail if below, else inconclusive.")] = None,
    inconclusive: Annotated[str, typer.Option(
        help="What an inconclusive latency gate counts as: fail (exit 1) or pass.")] = "fail",
    max_size: Annotated[float | None, typer.Option(help="Gate: fail if model.onnx is larger than MB.")] = None,
    min_param_reduction: Annotated[float | None, typer.Option(
        help="Gate: fail if less than this fraction of parameters was removed.")] = None,
    junit: Annotated[Path | None, typer.Option(help="Write the gates as a JUnit XML report.")] = None,
    allow_collapse: Annotated[bool, typer.Option(
        "--allow-collapse", help="Accept an accuracy that fell to chance level (otherwise exit 1).")] = False,
    plots: Annotated[bool, typer.Option(help="Draw plots beside report.md (needs matplotlib).")] = True,
    html: Annotated[bool, typer.Option("--html", help="Also write a single-file report.html.")] = False,
    workers: Workers = 0,
    ray: RayAddress = None,
    probe_timeout: ProbeTimeout = 600.0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what each pass does.")] = False,
) -> None:
    """Compile MODEL: remove channels, verify, build the target, write model + report to OUTPUT."""
    from npcompile.api import CompileOptions, compile
    from npcompile.graph.shapes import parse_input_shapes
    from npcompile.report.gates import Gates

    _setup_logging(quiet, verbose)
    gates = Gates(max_accuracy_drop=max_accuracy_drop, min_speedup=min_speedup, max_size_mb=max_size,
                  min_param_reduction=min_param_reduction, inconclusive=inconclusive)
    options = CompileOptions(criterion=criterion, ratio=ratio, threshold=threshold, round_to=round_to,
                             min_channels=min_channels, target=target, provider=provider, threads=threads,
                             input_shapes=parse_input_shapes(input_shape), seed=seed, verify_tolerance=verify_tolerance,
                             benchmark=benchmark, runs=runs, warmup=warmup, latency_precision=latency_precision,
                             latency_max_seconds=latency_max_seconds,
                             batch_sizes=_int_list(batch_sizes, "--batch-sizes"),
                             extra_passes=list(extra_pass or []), pipeline=str(pipeline) if pipeline else None,
                             plugins=list(plugin or []), gates=gates, junit=str(junit) if junit else None,
                             plots=plots, html=html, eval=str(eval_data) if eval_data else None,
                             evaluator=evaluator, top_k=top_k, search=search, tolerance=tolerance,
                             search_variant=search_variant, include=list(include or []), exclude=list(exclude or []),
                             target_flops=target_flops,
                             target_params=target_params, target_latency=target_latency, sensitivity=sensitivity,
                             latency_criterion=latency_criterion,
                             latency_cache=str(latency_cache) if latency_cache else None,
                             prune_hidden=prune_hidden,
                             train=str(train) if train else None, epochs=epochs, lr=lr, distill=distill,
                             optimizer=optimizer, batch_size=batch_size, steps=steps,
                             calib=str(calib) if calib else None, calib_batch_size=calib_batch_size,
                             maxout_per_unit=maxout_per_unit, maxout_units=maxout_units, sparsity=sparsity,
                             sparsity_scope=sparsity_scope, sparsity_steps=sparsity_steps,
                             reconstruct=reconstruct, reconstruct_select=reconstruct_select,
                             bias_compensation=bias_compensation, bn_recalibrate=bn_recalibrate,
                             workers=workers, ray=ray, probe_timeout=probe_timeout,
                             allow_collapse=allow_collapse)
    if dry_run:
        _dry_run(options)
        return
    from npcompile.cli.summary import print_summary

    try:
        result = compile(str(model), output, options)
    except GateError as e:
        failed = getattr(e, "result", None)
        if not quiet and failed is not None:
            print_summary(_console(), failed.report, output, failed.files, options.junit, failed=True)
        raise
    if not quiet:
        print_summary(_console(), result.report, output, result.files, options.junit)


def _int_list(text: str | None, flag: str) -> list[int]:
    if not text:
        return []
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise UserError(f"{flag} takes integers separated by commas, got {text!r}") from None


def _dry_run(options) -> None:
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


@app.command("inspect")
def inspect_cmd(
    model: Annotated[Path, typer.Argument(help="ONNX model file.")],
    input_shape: InputShape = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    layers: Annotated[bool, typer.Option(help="Also list per-layer parameters and FLOPs.")] = True,
    graph: Annotated[Path | None, typer.Option(
        "--graph", help="Also draw the graph with its channel groups coloured (prunable / frozen with the reason): "
                        ".dot, or .svg/.png/.pdf with Graphviz installed.")] = None,
    wide: Annotated[bool, typer.Option("--wide", help="Never wrap names (as wide as they need).")] = False,
) -> None:
    """Show the model (inputs, outputs, opsets, op counts), its channel groups (width, prunable or
    frozen with the reason), attention blocks, and params and FLOPs per layer."""
    from npcompile.api import inspect
    from npcompile.graph.shapes import parse_input_shapes
    from npcompile.report.graph_view import check_graph_path, write_graph

    if graph is not None:
        check_graph_path(graph)  # before the analysis: a bad path fails at once
    info = inspect(str(model), parse_input_shapes(input_shape), dot=graph is not None)
    dot = info.pop("dot", None)
    if graph is not None:
        write_graph(dot, graph)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    from rich.markup import escape
    from rich.table import Table

    from npcompile.report.document import _num

    console = _console()
    if wide:
        console.width = max(console.width, 400)
    m = info["model"]
    opsets = ", ".join(f"{d} {v}" for d, v in m["opsets"].items())
    console.print(f"{model.name}: {m['nodes']} nodes, {m['initializers']} initializers, opset {opsets}, "
                  f"IR {m['ir_version']}" + (f", from {m['producer']}" if m["producer"] else ""))
    io = Table(title="inputs and outputs")
    for col in ("", "name", "shape", "type"):
        io.add_column(col, overflow="fold")
    for kind in ("inputs", "outputs"):
        for v in m[kind]:
            dims = v["shape"]
            shape = "?" if dims is None else "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
            io.add_row(kind[:-1], escape(v["name"]), escape(shape), v["dtype"] or "?")
    console.print(io)
    console.print("ops: " + ", ".join(f"{op} {n}" for op, n in m["op_counts"].items()))
    table = Table(title=f"channel groups of {model.name}")
    for col in ("group", "op", "width", "status", "dead"):
        table.add_column(col, overflow="fold", no_wrap=wide)
    for g in info["groups"]:
        status = "prunable" if g["prunable"] else ("frozen: " + "; ".join(g["frozen"]) if g["frozen"]
                                                   else f"pruned with {g['pruned_with']}" if g.get("pruned_with")
                                                   else "single channel")
        table.add_row(escape(g["name"]), g["op"], str(g["width"]), escape(status), str(g["dead"]))
    console.print(table)
    if info.get("attention"):
        gqa = any(b["kv_groups"] is not None for b in info["attention"])
        at = Table(title="attention blocks")
        for col in ("block", "heads", *(("KV groups",) if gqa else ()), "head_dim", "status"):
            at.add_column(col)
        for b in info["attention"]:
            status = "frozen: " + "; ".join(b["frozen"]) if b["frozen"] else "prunable" if b["prunable"] else "kept"
            kv = (str(b["kv_groups"]) if b["kv_groups"] is not None else "-",) if gqa else ()
            at.add_row(b["block"], str(b["heads"]), *kv, str(b["head_dim"]), status)
        console.print(at)
    st = info["stats"]
    if layers:
        lt = Table(title="layers")
        for col in ("layer", "op", "in", "out", "params", "FLOPs"):
            lt.add_column(col)
        for row in st["layers"]:
            lt.add_row(row["name"], row["op"], str(row["in_channels"]), str(row["out_channels"]),
                       _num(row["params"]), _num(row["flops"]))
        console.print(lt)
    n_pr = sum(g["prunable"] for g in info["groups"])
    console.print(f"{len(info['groups'])} groups ({n_pr} prunable) · params {_num(st['params'])} · "
                  f"FLOPs {_num(st['flops'])} (batch 1)")
    if graph is not None:
        console.print(f"wrote {graph}")


@app.command("passes")
def passes_cmd(
    plugin: Annotated[list[str] | None, typer.Option(help="Also load these plugins (repeatable).")] = None,
) -> None:
    """List the passes (built-in, entry-point plugins and --plugin ones)."""
    from npcompile.pipeline import available_passes
    from npcompile.pipeline.plugins import load_plugin

    for spec in plugin or []:
        load_plugin(spec)
    for name, cls in available_passes().items():
        typer.echo(f"{name:16s} {cls.kind:9s} {cls.description}  [{cls.__module__}]")


@app.command("targets")
def targets_cmd() -> None:
    """List the deployment targets and whether each can run here."""
    from npcompile.targets import available_targets, get_target

    for name in available_targets():
        try:
            cls = get_target(name)
            ok, why = cls.available()
        except UserError as e:
            ok, why = False, str(e)
        typer.echo(f"{name:12s} {'available' if ok else 'unavailable: ' + why}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, map errors to exit codes and one-line messages."""
    args = list(sys.argv[1:] if argv is None else argv)
    root_flags = ("--help", "-h", "--version", "-V", "--install-completion", "--show-completion")
    if args and args[0] not in SUBCOMMANDS and args[0] not in root_flags:
        args.insert(0, "compile")  # the bare form: npcompile MODEL [options]
    if not args:  # bare npcompile: the usage, and one line saying what is missing
        app(args=["--help"], prog_name="npcompile", standalone_mode=False)
        print("npcompile: error: give a model: npcompile MODEL [options] (npcompile --help lists them)",
              file=sys.stderr)
        return 2
    exits, aborts, usage = _cli_exceptions()
    try:
        rv = app(args=args, prog_name="npcompile", standalone_mode=False)
        if rv == 130:  # typer returns Ctrl-C as 130 (no command returns that code itself)
            print("npcompile: interrupted", file=sys.stderr)
        return rv if isinstance(rv, int) else 0
    except exits as e:
        return int(getattr(e, "exit_code", 0))
    except aborts:
        print("npcompile: aborted", file=sys.stderr)
        return 130
    except NpcompileError as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        if e.exit_code == 3:  # npcompile's own output failed: an internal error, with its traceback
            traceback.print_exc()
            print(f"npcompile: internal error: {msg} (please report it with the traceback above)", file=sys.stderr)
            return 3
        print(f"npcompile: error: {msg}", file=sys.stderr)
        return e.exit_code
    except usage as e:
        print(f"npcompile: error: {' '.join(e.format_message().split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("npcompile: interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print("npcompile: internal error (please report it with the traceback above)", file=sys.stderr)
        return 3


from npcompile.cli import batch as _batch  # noqa: E402,F401  (registers the batch command)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
