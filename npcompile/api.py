"""The Python API: :func:`compile` and :func:`inspect`."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from npcompile.channels.heads import attention_blocks, heads_after
from npcompile.errors import GateError, UserError, VerificationError
from npcompile.execution import make_backend
from npcompile.graph.model_io import atomic_write_bytes, load_model, save_model, serialized
from npcompile.graph.shapes import input_specs, probe_shapes
from npcompile.graph.stats import model_stats
from npcompile.options import CRITERIA, DATA_CRITERIA, CompileOptions, pipeline_specs  # noqa: F401 (re-exported)
from npcompile.pipeline import Context, Pipeline
from npcompile.pipeline.file import PassSpec, instantiate, load_pipeline_file
from npcompile.pipeline.plugins import load_plugin
from npcompile.report.document import build_report, render_markdown
from npcompile.report.gates import check_gates, write_junit
from npcompile.report.html import render_html
from npcompile.report.noops import collapse_gate, noop_warnings
from npcompile.report.outdir import OUTPUT_FILES, publish
from npcompile.report.plots import render_plots
from npcompile.report.preflight import preflight
from npcompile.runtime.data import sample_shapes
from npcompile.runtime.verify import compare, probe_inputs
from npcompile.targets import BenchmarkOptions, LatencyStats, Target, get_target

__all__ = ["CompileOptions", "CompileResult", "compile", "inspect", "pipeline_specs", "resolve_specs", "CRITERIA"]

log = logging.getLogger(__name__)


@dataclass
class CompileResult:
    """What :func:`compile` produced: the model, the report, and the files written (if any)."""

    model: onnx.ModelProto
    report: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)

    def to_torch(self, freeze_bn_stats: bool = True) -> Any:
        """The compiled graph as a trainable ``torch.nn.Module`` (:func:`npcompile.finetune.to_torch`)."""
        from npcompile.finetune import to_torch

        return to_torch(self.model, freeze_bn_stats)


def resolve_specs(options: CompileOptions, target: Target) -> tuple[list[PassSpec], Path | None, int, int]:
    """Specs (from the pipeline file or the flags), their base folder, rounding used and default."""
    default_round = target.default_round_to() if options.mode in ("ratio", "search", "budget") else 1
    if options.target_latency is not None and options.pipeline is None:
        default_round = 1  # widths at the steps of the measured latency curve
    round_to = options.round_to if options.round_to is not None else default_round
    nm = options.nm_pattern
    if nm is not None and options.mode not in ("lossless", "sparsity"):
        round_to = math.lcm(round_to, nm[1])  # widths the N:M groups along input channels can use
    if options.pipeline:
        specs, base = load_pipeline_file(options.pipeline)
        return specs, base, round_to, default_round
    return pipeline_specs(options, round_to), None, round_to, default_round


def make_target(options: CompileOptions) -> Target:
    """The target object for ``options``; a target that cannot run here is a :class:`UserError`."""
    cls = get_target(options.target)
    ok, why = cls.available()
    if not ok:
        hint = f"; install: {cls.install_hint}" if cls.install_hint else ""
        raise UserError(f"target {options.target} is not available: {why}{hint}")
    kwargs: dict[str, Any] = {}
    if options.target == "onnxruntime":
        kwargs = {"provider": options.provider, "threads": options.threads}
    elif options.target == "tensorrt":
        kwargs = {"sparse": options.nm_pattern == (2, 4)}
    return cls(**kwargs)


def _check_outdir(outdir: Path, source: Any) -> None:
    if outdir.exists() and not outdir.is_dir():
        raise UserError(f"output path exists and is not a directory: {outdir}")
    probe = outdir
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"output directory is not writable: {outdir}")
    if isinstance(source, (str, os.PathLike)):
        src = Path(source).resolve()
        for name in OUTPUT_FILES:
            if (outdir / name).resolve() == src:
                raise UserError(f"output would overwrite the input model {src}")


def prepare(options: CompileOptions, kwargs: dict[str, Any]) -> CompileOptions:
    """Apply keyword overrides, load plugins, validate."""
    for key, value in kwargs.items():
        if not hasattr(options, key):
            raise UserError(f"unknown option {key!r}")
        setattr(options, key, value)
    for spec in options.plugins:
        load_plugin(spec)
    options.validate()
    return options


def compile(model: Any, output_dir: str | os.PathLike | None = None, options: CompileOptions | None = None,
            example_inputs: Any = None, **kwargs: Any) -> CompileResult:
    """Compile ``model`` (a path, an ``onnx.ModelProto`` or a ``torch.nn.Module`` with
    ``example_inputs``): remove channels as ``options`` say, verify, build the target, report.

    With ``output_dir``, writes ``model.onnx``, ``report.json``, ``report.md`` (and the target's
    artifacts) there, all or nothing. Keyword arguments override fields of ``options``. A violated
    gate raises :class:`~npcompile.errors.GateError` after the outputs are written.
    """
    options = prepare(options or CompileOptions(), kwargs)
    t_start = time.perf_counter()
    target = make_target(options)
    preflight(options, target)
    outdir = Path(output_dir) if output_dir is not None else None
    if outdir is not None:
        _check_outdir(outdir, model)
    source_size = Path(model).stat().st_size if isinstance(model, (str, os.PathLike)) and \
        Path(model).is_file() else None
    t0 = time.perf_counter()
    load_info: dict[str, Any] = {}
    original = load_model(model, example_inputs, load_info)
    load_s = time.perf_counter() - t0
    probe = probe_shapes(original, options.input_shapes, values=options.input_values,
                         samples=sample_shapes([options.calib, options.eval, options.train]))
    specs, base, round_to, default_round = resolve_specs(options, target)
    evaluator = _make_evaluator(options, original)
    passes = instantiate(specs, original, base, {"evaluator": evaluator, "measure": _latency_measure(target, options)},
                         surface="toml" if options.pipeline else None)
    ctx = Context(original, probe, seed=options.seed)
    analysis = ctx.analysis
    groups_before = [(g.id, g.name, g.op, g.size, list(g.frozen), int(g.dead.sum()) if g.dead is not None
                      else 0) for g in analysis.groups]
    shapes_before = ctx.shapes
    blocks_before = attention_blocks(analysis)
    with make_backend(options.workers, options.ray, options.probe_timeout) as ctx.backend:
        # the passes' report sections land in ctx.report_extras; a pipeline from the flags alone (no
        # pipeline file, --pass or other criterion) is npcompile's own: a missing requirement is a bug
        internal = base is None and not options.extra_passes and options.criterion in CRITERIA
        records = Pipeline(passes, internal=internal).run(ctx)
        ctx.report_extras["execution"] = ctx.backend.describe()
    compiled = ctx.model
    removed: dict[str, list[int]] = {}  # channels removed per group, counted over all steps
    for applied in ctx.applied:
        for name, idx in applied.items():
            removed.setdefault(name, []).extend(idx)
    t0 = time.perf_counter()
    feeds = probe_inputs(original, probe, batch=2, seed=options.seed)
    # serialized once for the checker, the session and the saved file (seconds on a large model)
    compiled_bytes = serialized(compiled, deterministic=True)
    verification = compare(original, compiled, feeds, options.threads, compiled_bytes=compiled_bytes)
    verify_s = time.perf_counter() - t0
    # lossless when every pass that modified the model was exact (the passes declare it, Pass.exact)
    exact = ctx.lossless
    if exact and verification.max_rel_diff > options.verify_tolerance:
        raise VerificationError(
            f"removing dead channels changed the output by {verification.max_rel_diff:.3g} (relative), "
            f"more than the tolerance {options.verify_tolerance:g}")
    if evaluator is not None:
        ctx.report_extras["accuracy"] = {"metric": evaluator.name, "unit": getattr(evaluator, "unit", ""),
                                         "evaluator": evaluator.describe(),
                                         "before": float(evaluator.evaluate(original)),
                                         "after": float(evaluator.evaluate(compiled)),
                                         "classes": _classes(evaluator)}
    stats_before = model_stats(original, probe, shapes_before)
    stats_after = model_stats(compiled, probe)
    files: dict[str, Path] = {}
    staging: Path | None = None
    build_dir: Path | None = None
    try:
        if outdir is not None:
            outdir.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=outdir, prefix=".npcompile-"))
        build_dir = staging or Path(tempfile.mkdtemp(prefix="npcompile-"))
        t0 = time.perf_counter()
        save_model(compiled, build_dir / "model.onnx", external_data=True if load_info.get("external_data") else None,
                   data=compiled_bytes)
        compiled_bytes = None
        artifact = target.build(compiled, build_dir)
        build_s = time.perf_counter() - t0
        latency = _benchmark(target, original, artifact, probe, options) if options.benchmark else {}
        size_after = (build_dir / "model.onnx").stat().st_size if (build_dir / "model.onnx").exists() \
            else compiled.ByteSize()
        report = build_report(
            options=options, round_to=round_to, default_round_to=default_round, target=target,
            groups_before=groups_before, removed=removed, stats_before=stats_before, stats_after=stats_after,
            verification=verification, records=records, latency=latency,
            sizes={"before": source_size or original.ByteSize(), "after": size_after},
            timings={"load": load_s, "verify": verify_s, "build": build_s,
                     "total": time.perf_counter() - t_start},
            artifact_info=artifact.info or {}, notes=ctx.notes + list(latency.get("warnings", [])), pipeline=specs,
        )
        report.update({k: v for k, v in ctx.report_extras.items() if k not in report})
        if blocks_before:
            report["attention"] = heads_after(blocks_before, report["groups"])
        # the plan per step: indices refer to the model each step received
        report["plan"] = [{k: v for k, v in sorted(step.items()) if v} for step in ctx.applied]
        if ctx.criterion and report.get("criterion") != ctx.criterion:
            report["criterion"] = ctx.criterion
        gate_results = check_gates(options.gates, report)
        gate_results += [g for g in [collapse_gate(report, options.allow_collapse)] if g is not None]
        for warning in noop_warnings(options, report):
            log.warning("%s", warning)
            report["notes"].append(warning)
        report["gates"] = [g.as_dict() for g in gate_results]
        if staging is not None:
            images = render_plots(report) if options.plots else {}
            for name, png in images.items():
                atomic_write_bytes(staging / name, png)
            atomic_write_bytes(staging / "report.json", json.dumps(report, indent=2).encode())
            atomic_write_bytes(staging / "report.md", render_markdown(report, list(images)).encode())
            if options.html:
                atomic_write_bytes(staging / "report.html", render_html(report, images).encode())
            files = publish(staging, outdir)
        if options.junit:
            write_junit(options.junit, gate_results, report)
    finally:
        if build_dir is not None:
            shutil.rmtree(build_dir, ignore_errors=True)
    log.info("compiled in %.2f s", time.perf_counter() - t_start)
    failed = [g for g in gate_results if not g.passed]
    if failed:
        more = f" (and {len(failed) - 1} more gate(s))" if len(failed) > 1 else ""
        err = GateError(f"gate failed: {failed[0].message}{more}")
        err.result = CompileResult(compiled, report, files)  # the CLI still prints what the run did
        raise err
    return CompileResult(compiled, report, files)


def _classes(evaluator: Any) -> int | None:
    """Number of classes in the evaluation labels (for the chance level), if labelled."""
    labels = getattr(getattr(evaluator, "dataset", None), "labels", None)
    if labels is None:
        labels = getattr(evaluator, "labels", None)
    return int(len(set(labels.tolist()))) if labels is not None and getattr(labels, "size", 0) else None


def _latency_measure(target: Target, options: CompileOptions) -> Any:
    """A runner factory on the compilation's target: ``factory(model, feeds)(runs, warmup)`` times
    the model built by the target (ONNX Runtime on the CPU where the target measures nothing, like
    ``onnx``). The build folder lives as long as the runner."""
    from npcompile.report.preflight import target_measures

    if not target_measures(target):
        from npcompile.runtime.latency_model import ort_runner

        return ort_runner(options.threads)

    def factory(model: onnx.ModelProto, feeds: dict) -> Any:
        tmp = tempfile.TemporaryDirectory(prefix="npcompile-lat-")
        artifact = target.build(model, Path(tmp.name), name="probe")
        run = _runner(target, artifact, feeds, options.threads)
        run.keep = tmp  # removed with the runner
        return run

    return factory


def _make_evaluator(options: CompileOptions, model: onnx.ModelProto) -> Any:
    """The evaluator the options ask for (``None`` without evaluation data or a callable)."""
    from npcompile.runtime.evaluate import make_evaluator

    if options.eval is None and ":" not in options.evaluator:
        return None
    dataset = None
    if options.eval is not None:
        from npcompile.runtime.data import load_data

        dataset = load_data(options.eval, model, labels="optional", what="evaluation data")
    return make_evaluator(options.evaluator, dataset=dataset, model=model, top_k=options.top_k,
                          batch_size=options.eval_batch_size, threads=options.threads)


def _runner(target: Target, artifact: Any, feeds: dict, threads: int) -> Any:
    """Time ``runs`` calls of the artifact after ``warmup`` untimed ones: milliseconds per call."""
    def run(runs: int, warmup: int) -> list[float]:
        stats = target.benchmark(artifact, feeds, BenchmarkOptions(warmup=warmup, runs=runs, threads=threads))
        return list(stats.samples_ms or [stats.p50_ms] * stats.runs)

    return run


def stable_options(options: CompileOptions) -> Any:
    """How long latency is measured, from the compile options."""
    from npcompile.runtime.timing import StableOptions

    return StableOptions(runs=options.runs, warmup=options.warmup, precision=options.latency_precision,
                         max_seconds=options.latency_max_seconds)


def _benchmark(target: Target, original: onnx.ModelProto, artifact: Any, probe: dict[str, tuple[int, ...]],
               options: CompileOptions) -> dict[str, Any]:
    """Latency of the original and the compiled model on the target, measured in interleaved rounds
    until the speedup is stable (:mod:`npcompile.runtime.timing`), at the probe batch size and at
    ``options.batch_sizes`` (dynamic-batch models only)."""
    from npcompile.runtime.timing import compare as compare_latency

    bopts = BenchmarkOptions(warmup=options.warmup, runs=options.runs, threads=options.threads)
    sopts = stable_options(options)
    feeds = probe_inputs(original, probe, batch=None, seed=options.seed)
    probe_stats = target.benchmark(artifact, feeds, BenchmarkOptions(warmup=1, runs=1, threads=options.threads))
    if probe_stats is None:
        return {}
    batch = probe_stats.batch
    with tempfile.TemporaryDirectory(prefix="npcompile-base-") as tmp:
        base = target.build(original, Path(tmp), name="original")
        cmp = compare_latency(_runner(target, base, feeds, options.threads),
                              _runner(target, artifact, feeds, options.threads), sopts)
        for w in cmp["warnings"]:
            log.warning("%s", w)
        before, after = LatencyStats.from_ms(cmp["before"], batch), LatencyStats.from_ms(cmp["after"], batch)
        per_batch = []
        dynamic = all(not spec.type.tensor_type.shape.dim[0].HasField("dim_value")
                      for spec in input_specs(original) if spec.type.tensor_type.shape.dim)
        for b in options.batch_sizes if dynamic else []:
            fb = probe_inputs(original, probe, batch=b, seed=options.seed)
            x, y = target.benchmark(base, fb, bopts), target.benchmark(artifact, fb, bopts)
            per_batch.append({"batch": b, "before_p50_ms": x.p50_ms, "after_p50_ms": y.p50_ms,
                              "speedup": x.p50_ms / y.p50_ms if y.p50_ms > 0 else None,
                              "throughput_before": x.throughput, "throughput_after": y.throughput})
    return {"before": before.as_dict(), "after": after.as_dict(), "speedup": cmp["speedup"],
            "speedup_low": cmp["speedup_low"], "speedup_high": cmp["speedup_high"],
            "rounds": cmp["rounds"], "stable": cmp["stable"], "seconds": cmp["seconds"], "load": cmp["load"],
            "measurement": cmp["options"], "warnings": cmp["warnings"],
            "batch": batch, "threads": options.threads, "batches": per_batch}


def inspect(model: Any, input_shapes: dict[str, tuple[int, ...]] | None = None,
            example_inputs: Any = None, dot: bool = False) -> dict[str, Any]:
    """Channel groups (width, prunable or frozen with the reason), per-layer figures, attention
    blocks, and the model itself (``"model"``: inputs and outputs with shapes and types, opsets,
    producer, op counts). ``dot=True`` adds ``"dot"``: the graph in Graphviz DOT with the groups'
    producers coloured by status (:func:`npcompile.report.graph_view.groups_dot`)."""
    from npcompile.report.graph_view import groups_dot, model_summary

    original = load_model(model, example_inputs)
    probe = probe_shapes(original, input_shapes)
    ctx = Context(original, probe)
    analysis = ctx.analysis
    stats = model_stats(original, probe, ctx.shapes)
    groups = []
    for g in analysis.groups:
        groups.append({"name": g.name, "op": g.op, "width": g.size, "prunable": g.prunable,
                       "frozen": list(g.frozen), "dead": int(g.dead.sum()) if g.dead is not None else 0,
                       "blocks": g.blocks, "producers": list(g.members), "sites": len(g.sites), "kind": g.kind,
                       "pruned_with": analysis.group(g.locked_by).name if g.locked_by is not None else None})
    info = {"inputs": {k: list(v) for k, v in probe.items()}, "groups": groups, "stats": stats.as_dict(),
            "attention": attention_blocks(analysis), "model": model_summary(original)}
    if dot:
        info["dot"] = groups_dot(original, groups)
    return info
