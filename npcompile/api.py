"""The Python API: :func:`compile` and :func:`inspect`."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from npcompile.errors import GateError, UserError, VerificationError
from npcompile.gates import Gates, check_gates, write_junit
from npcompile.html_report import render_html
from npcompile.metrics import model_stats
from npcompile.model_io import atomic_write_bytes, load_model, save_model
from npcompile.pipeline import Context, Pipeline, available_passes
from npcompile.pipeline_file import PassSpec, instantiate, load_pipeline_file
from npcompile.plots import render_plots
from npcompile.plugins import load_plugin
from npcompile.report import build_report, render_markdown
from npcompile.shapes import probe_shapes
from npcompile.targets import BenchmarkOptions, Target, get_target
from npcompile.verify import compare, probe_inputs

__all__ = ["CompileOptions", "CompileResult", "compile", "inspect", "pipeline_specs", "resolve_specs", "CRITERIA"]

log = logging.getLogger(__name__)

#: criterion name -> (analysis pass name, options); plugin analysis passes are criteria by their name
CRITERIA: dict[str, tuple[str, dict[str, Any]]] = {
    "magnitude": ("magnitude", {"p": 1}),
    "l1": ("magnitude", {"p": 1}),
    "l2": ("magnitude", {"p": 2}),
}

OUTPUT_FILES = ("model.onnx", "model.onnx.data", "model.ort.onnx", "model.engine", "report.json", "report.md",
                "report.html", "widths.png", "latency.png", "sensitivity.png")


@dataclass
class CompileOptions:
    """Options of one compilation; the CLI flags map one to one onto these fields."""

    criterion: str = "magnitude"
    ratio: float | None = None
    threshold: float | None = None
    round_to: int | None = None  # None: the target's default for ratio pruning, 1 otherwise
    min_channels: int = 1
    target: str = "onnx"
    provider: str = "cpu"
    threads: int = 0
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    seed: int = 0
    tolerance: float = 1e-4
    benchmark: bool = True
    warmup: int = 10
    runs: int = 50
    extra_passes: list[str] = field(default_factory=list)
    pipeline: str | None = None  # a pipeline file replaces the passes the flags stand for
    plugins: list[str] = field(default_factory=list)
    gates: Gates = field(default_factory=Gates)
    junit: str | None = None
    plots: bool = True  # PNG plots beside report.md (needs matplotlib)
    html: bool = False  # also a single-file report.html

    def validate(self) -> None:
        criteria = _criteria()
        if self.criterion not in criteria:
            raise UserError(f"unknown criterion {self.criterion!r}; choose one of {', '.join(criteria)}")
        if self.ratio is not None and self.threshold is not None:
            raise UserError("give either --ratio or --threshold, not both")
        if self.ratio is not None and not 0.0 <= self.ratio < 1.0:
            raise UserError(f"--ratio must be in [0, 1), got {self.ratio}")
        if self.threshold is not None and not self.threshold >= 0.0:
            raise UserError(f"--threshold must be >= 0, got {self.threshold}")
        if self.round_to is not None and not 1 <= self.round_to <= 4096:
            raise UserError(f"--round-to must be between 1 and 4096, got {self.round_to}")
        if self.min_channels < 1:
            raise UserError(f"--min-channels must be >= 1, got {self.min_channels}")
        if self.threads < 0:
            raise UserError(f"--threads must be >= 0, got {self.threads}")
        if self.runs < 1 or self.warmup < 0:
            raise UserError("--runs must be >= 1 and --warmup >= 0")
        if not 0.0 <= self.tolerance < 1.0:
            raise UserError(f"--tolerance must be in [0, 1), got {self.tolerance}")
        if self.pipeline is not None and (self.ratio is not None or self.threshold is not None):
            raise UserError("--pipeline replaces --ratio/--threshold; give one or the other")
        self.gates.validate()

    @property
    def lossless(self) -> bool:
        return self.ratio is None and self.threshold is None and self.pipeline is None


@dataclass
class CompileResult:
    """What :func:`compile` produced: the model, the report, and the files written (if any)."""

    model: onnx.ModelProto
    report: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)


def _criteria() -> dict[str, tuple[str, dict[str, Any]]]:
    out = dict(CRITERIA)
    for name, cls in available_passes().items():
        if cls.kind == "analysis" and name not in out:
            out[name] = (name, {})
    return out


def pipeline_specs(options: CompileOptions, round_to: int) -> list[PassSpec]:
    """The passes the option flags stand for."""
    specs: list[PassSpec] = []
    if options.lossless:
        specs += [PassSpec("dead-channels"), PassSpec("prune")]
    else:
        name, kw = _criteria()[options.criterion]
        specs.append(PassSpec(name, dict(kw)))
        sel = {"round_to": round_to, "min_channels": options.min_channels}
        sel.update({"ratio": options.ratio} if options.ratio is not None else {"threshold": options.threshold})
        specs.append(PassSpec("select", sel))
        specs.append(PassSpec("prune"))
    specs += [PassSpec(spec) for spec in options.extra_passes]
    specs.append(PassSpec("cleanup"))
    return specs


def resolve_specs(options: CompileOptions, target: Target) -> tuple[list[PassSpec], Path | None, int, int]:
    """Specs (from the pipeline file or the flags), their base folder, rounding used and default."""
    default_round = target.default_round_to() if options.ratio is not None else 1
    round_to = options.round_to if options.round_to is not None else default_round
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
    outdir = Path(output_dir) if output_dir is not None else None
    if outdir is not None:
        _check_outdir(outdir, model)
    source_size = Path(model).stat().st_size if isinstance(model, (str, os.PathLike)) and \
        Path(model).is_file() else None
    t0 = time.perf_counter()
    load_info: dict[str, Any] = {}
    original = load_model(model, example_inputs, load_info)
    load_s = time.perf_counter() - t0
    probe = probe_shapes(original, options.input_shapes)
    specs, base, round_to, default_round = resolve_specs(options, target)
    passes = instantiate(specs, original, base)
    ctx = Context(original, probe, seed=options.seed)
    analysis = ctx.analysis
    groups_before = [(g.id, g.name, g.op, g.size, list(g.frozen), int(g.dead.sum()) if g.dead is not None
                      else 0) for g in analysis.groups]
    shapes_before = ctx.shapes
    records = Pipeline(passes).run(ctx)
    compiled = ctx.model
    removed: dict[str, list[int]] = {}
    for applied in ctx.applied:
        for name, idx in applied.items():
            removed.setdefault(name, []).extend(idx)
    t0 = time.perf_counter()
    feeds = probe_inputs(original, probe, batch=2, seed=options.seed)
    verification = compare(original, compiled, feeds, options.threads)
    verify_s = time.perf_counter() - t0
    exact = options.lossless or options.threshold == 0
    if exact and verification.max_rel_diff > options.tolerance:
        raise VerificationError(
            f"removing dead channels changed the output by {verification.max_rel_diff:.3g} (relative), "
            f"more than the tolerance {options.tolerance:g}")
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
        save_model(compiled, build_dir / "model.onnx", external_data=True if load_info.get("external_data") else None)
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
            artifact_info=artifact.info or {}, notes=ctx.notes, pipeline=specs,
        )
        report.update({k: v for k, v in ctx.report_extras.items() if k not in report})
        gate_results = check_gates(options.gates, report)
        report["gates"] = [g.as_dict() for g in gate_results]
        if staging is not None:
            images = render_plots(report) if options.plots else {}
            for name, png in images.items():
                atomic_write_bytes(staging / name, png)
            atomic_write_bytes(staging / "report.json", json.dumps(report, indent=2).encode())
            atomic_write_bytes(staging / "report.md", render_markdown(report, list(images)).encode())
            if options.html:
                atomic_write_bytes(staging / "report.html", render_html(report, images).encode())
            for path in sorted(staging.iterdir()):
                os.replace(path, outdir / path.name)
                files[path.name] = outdir / path.name
        if options.junit:
            write_junit(options.junit, gate_results, report)
    finally:
        if build_dir is not None:
            shutil.rmtree(build_dir, ignore_errors=True)
    log.info("compiled in %.2f s", time.perf_counter() - t_start)
    failed = [g for g in gate_results if not g.passed]
    if failed:
        more = f" (and {len(failed) - 1} more gate(s))" if len(failed) > 1 else ""
        raise GateError(f"gate failed: {failed[0].message}{more}")
    return CompileResult(compiled, report, files)


def _benchmark(target: Target, original: onnx.ModelProto, artifact: Any, probe: dict[str, tuple[int, ...]],
               options: CompileOptions) -> dict[str, Any]:
    feeds = probe_inputs(original, probe, batch=None, seed=options.seed)
    bopts = BenchmarkOptions(warmup=options.warmup, runs=options.runs, threads=options.threads)
    after = target.benchmark(artifact, feeds, bopts)
    if after is None:
        return {}
    with tempfile.TemporaryDirectory(prefix="npcompile-base-") as tmp:
        base = target.build(original, Path(tmp), name="original")
        before = target.benchmark(base, feeds, bopts)
    return {"before": before.as_dict(), "after": after.as_dict(),
            "speedup": before.p50_ms / after.p50_ms if after.p50_ms > 0 else None,
            "batch": after.batch, "threads": options.threads}


def inspect(model: Any, input_shapes: dict[str, tuple[int, ...]] | None = None,
            example_inputs: Any = None) -> dict[str, Any]:
    """Channel groups (width, prunable or frozen with the reason) and per-layer figures."""
    original = load_model(model, example_inputs)
    probe = probe_shapes(original, input_shapes)
    ctx = Context(original, probe)
    analysis = ctx.analysis
    stats = model_stats(original, probe, ctx.shapes)
    groups = []
    for g in analysis.groups:
        groups.append({"name": g.name, "op": g.op, "width": g.size, "prunable": g.prunable,
                       "frozen": list(g.frozen), "dead": int(g.dead.sum()) if g.dead is not None else 0,
                       "blocks": g.blocks, "producers": list(g.members), "sites": len(g.sites)})
    return {"inputs": {k: list(v) for k, v in probe.items()}, "groups": groups, "stats": stats.as_dict()}
