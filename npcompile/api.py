"""The Python API: :func:`compile` and :func:`inspect`."""

from __future__ import annotations

import contextlib
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

from npcompile.errors import UserError, VerificationError
from npcompile.metrics import model_stats
from npcompile.model_io import atomic_write_bytes, load_model
from npcompile.pipeline import Context, Pass, Pipeline, get_pass
from npcompile.report import build_report, render_markdown
from npcompile.shapes import probe_shapes
from npcompile.targets import BenchmarkOptions, Target, get_target
from npcompile.verify import compare, probe_inputs

__all__ = ["CompileOptions", "CompileResult", "compile", "inspect", "build_pipeline", "CRITERIA"]

log = logging.getLogger(__name__)

#: criterion name -> (pass name, options)
CRITERIA: dict[str, tuple[str, dict[str, Any]]] = {
    "magnitude": ("magnitude", {"p": 1}),
    "l1": ("magnitude", {"p": 1}),
    "l2": ("magnitude", {"p": 2}),
}


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

    def validate(self) -> None:
        if self.criterion not in CRITERIA:
            raise UserError(f"unknown criterion {self.criterion!r}; choose one of {', '.join(CRITERIA)}")
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

    @property
    def lossless(self) -> bool:
        return self.ratio is None and self.threshold is None


@dataclass
class CompileResult:
    """What :func:`compile` produced: the model, the report, and the files written (if any)."""

    model: onnx.ModelProto
    report: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)


def build_pipeline(options: CompileOptions, round_to: int) -> list[Pass]:
    """The passes a set of options stands for."""
    passes: list[Pass] = []
    if options.lossless:
        passes += [get_pass("dead-channels")(), get_pass("prune")()]
    else:
        name, kw = CRITERIA[options.criterion]
        passes.append(get_pass(name)(**kw))
        passes.append(get_pass("select")(ratio=options.ratio, threshold=options.threshold,
                                         round_to=round_to, min_channels=options.min_channels))
        passes.append(get_pass("prune")())
    passes += [get_pass(spec)() for spec in options.extra_passes]
    passes.append(get_pass("cleanup")())
    return passes


def _target(options: CompileOptions) -> Target:
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
        for name in ("model.onnx", "model.ort.onnx", "model.engine", "report.json", "report.md"):
            if (outdir / name).resolve() == src:
                raise UserError(f"output would overwrite the input model {src}")


def compile(model: Any, output_dir: str | os.PathLike | None = None, options: CompileOptions | None = None,
            example_inputs: Any = None, **kwargs: Any) -> CompileResult:
    """Compile ``model`` (a path, an ``onnx.ModelProto`` or a ``torch.nn.Module`` with
    ``example_inputs``): remove channels as ``options`` say, verify, build the target, report.

    With ``output_dir``, writes ``model.onnx``, ``report.json``, ``report.md`` (and the target's
    artifacts) there, all or nothing. Keyword arguments override fields of ``options``.
    """
    options = options or CompileOptions()
    for key, value in kwargs.items():
        if not hasattr(options, key):
            raise UserError(f"unknown option {key!r}")
        setattr(options, key, value)
    options.validate()
    t_start = time.perf_counter()
    target = _target(options)
    outdir = Path(output_dir) if output_dir is not None else None
    if outdir is not None:
        _check_outdir(outdir, model)
    source_size = Path(model).stat().st_size if isinstance(model, (str, os.PathLike)) and \
        Path(model).is_file() else None
    t0 = time.perf_counter()
    original = load_model(model, example_inputs)
    load_s = time.perf_counter() - t0
    probe = probe_shapes(original, options.input_shapes)
    default_round = target.default_round_to() if options.ratio is not None else 1
    round_to = options.round_to if options.round_to is not None else default_round
    ctx = Context(original, probe, seed=options.seed)
    passes = build_pipeline(options, round_to)
    analysis = ctx.analysis
    groups_before = [(g.id, g.name, g.op, g.size, list(g.frozen), int(g.dead.sum()) if g.dead is not None
                      else 0) for g in analysis.groups]
    shapes_before = ctx.shapes
    records = Pipeline(passes).run(ctx)
    compiled = ctx.model
    # verification
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
    removed: dict[str, list[int]] = {}
    for applied in ctx.applied:
        for name, idx in applied.items():
            removed.setdefault(name, []).extend(idx)
    files: dict[str, Path] = {}
    latency: dict[str, Any] = {}
    staging: Path | None = None
    try:
        if outdir is not None:
            outdir.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=outdir, prefix=".npcompile-"))
        build_dir = staging or Path(tempfile.mkdtemp(prefix="npcompile-"))
        t0 = time.perf_counter()
        artifact = target.build(compiled, build_dir)
        build_s = time.perf_counter() - t0
        if options.benchmark:
            latency = _benchmark(target, original, artifact, probe, options, build_dir)
        report = build_report(
            options=options, round_to=round_to, default_round_to=default_round, target=target,
            groups_before=groups_before, removed=removed, stats_before=stats_before, stats_after=stats_after,
            verification=verification, records=records, latency=latency,
            sizes={"before": source_size or original.ByteSize(), "after": compiled.ByteSize()},
            timings={"load": load_s, "verify": verify_s, "build": build_s,
                     "total": time.perf_counter() - t_start},
            artifact_info=artifact.info or {}, notes=ctx.notes,
        )
        if staging is not None:
            atomic_write_bytes(staging / "report.json", json.dumps(report, indent=2).encode())
            atomic_write_bytes(staging / "report.md", render_markdown(report).encode())
            for path in sorted(staging.iterdir()):
                os.replace(path, outdir / path.name)
                files[path.name] = outdir / path.name
        else:
            shutil.rmtree(build_dir, ignore_errors=True)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    log.info("compiled in %.2f s", time.perf_counter() - t_start)
    return CompileResult(compiled, report, files)


def _benchmark(target: Target, original: onnx.ModelProto, artifact, probe, options: CompileOptions,
               build_dir: Path) -> dict[str, Any]:
    feeds = probe_inputs(original, probe, batch=None, seed=options.seed)
    bopts = BenchmarkOptions(warmup=options.warmup, runs=options.runs, threads=options.threads)
    after = target.benchmark(artifact, feeds, bopts)
    if after is None:
        return {}
    with tempfile.TemporaryDirectory(dir=build_dir.parent if build_dir.parent.exists() else None) as tmp:
        base = target.build(original, Path(tmp), name="original")
        before = target.benchmark(base, feeds, bopts)
        with contextlib.suppress(Exception):
            del base
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
                       "producers": list(g.members),
                       "sites": len(g.sites)})
    return {"inputs": {k: list(v) for k, v in probe.items()}, "groups": groups, "stats": stats.as_dict()}
