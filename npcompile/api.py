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
from npcompile.pipeline import Context, Pipeline, available_passes
from npcompile.pipeline.file import PassSpec, instantiate, load_pipeline_file
from npcompile.pipeline.plugins import load_plugin
from npcompile.report.document import build_report, render_markdown
from npcompile.report.gates import Gates, check_gates, write_junit
from npcompile.report.html import render_html
from npcompile.report.noops import collapse_gate, noop_warnings
from npcompile.report.outdir import OUTPUT_FILES, publish
from npcompile.report.plots import render_plots
from npcompile.report.preflight import preflight
from npcompile.runtime.verify import compare, probe_inputs
from npcompile.targets import BenchmarkOptions, LatencyStats, Target, get_target

__all__ = ["CompileOptions", "CompileResult", "compile", "inspect", "pipeline_specs", "resolve_specs", "CRITERIA"]

log = logging.getLogger(__name__)

#: criterion name -> (analysis pass name, options); plugin analysis passes are criteria by their name
CRITERIA: dict[str, tuple[str, dict[str, Any]]] = {
    "magnitude": ("magnitude", {"p": 1}),
    "l1": ("magnitude", {"p": 1}),
    "l2": ("magnitude", {"p": 2}),
    "maxout": ("maxout", {}),
    "apoz": ("apoz", {}),
    "mean-abs": ("mean-abs", {}),
}
#: criteria measured on calibration data
DATA_CRITERIA = ("maxout", "apoz", "mean-abs")



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
    input_values: dict[str, Any] = field(default_factory=dict)  # inputs that select behaviour (If branches)
    seed: int = 0
    verify_tolerance: float = 1e-4  # largest relative output change where removal must be lossless
    benchmark: bool = True
    warmup: int = 10
    runs: int = 50  # timed runs per round of a latency measurement
    latency_precision: float = 0.02  # measure until the speedup's 95 % interval is within +-this fraction
    latency_max_seconds: float = 30.0  # ... or this long (at least two rounds)
    batch_sizes: list[int] = field(default_factory=list)  # also measure latency at these batch sizes
    extra_passes: list[str] = field(default_factory=list)
    pipeline: str | None = None  # a pipeline file replaces the passes the flags stand for
    plugins: list[str] = field(default_factory=list)
    gates: Gates = field(default_factory=Gates)
    junit: str | None = None
    plots: bool = True  # PNG plots beside report.md (needs matplotlib)
    html: bool = False  # also a single-file report.html
    # evaluation (accuracy before/after, search, budgets)
    eval: str | None = None  # labelled (or unlabelled: fidelity) evaluation data, .npz
    evaluator: str = "auto"  # auto, accuracy, top1, cosine, neg_mse, verification, or module:function
    top_k: int = 1
    eval_batch_size: int = 256
    # binary search and budgets
    search: str | None = None  # "binary"
    tolerance: float | None = None  # metric points the search may lose
    search_variant: str | None = None  # schedule of --search binary (None: passes/search.py's DEFAULT_VARIANT)
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    target_flops: float | None = None  # keep this fraction of FLOPs
    target_params: float | None = None  # keep this fraction of parameters
    target_latency: float | None = None  # reach this fraction of the original latency, measured on the target
    latency_criterion: str = "per-ms"  # latency budget: importance lost per ms saved, or importance only
    latency_cache: str | None = None  # folder of cached latency models (default ~/.cache/npcompile/latency)
    sensitivity: bool = False
    prune_hidden: bool = False  # the hidden width of transformers as one more (lossy) group
    # fine-tuning and iterative schedules
    train: str | None = None
    epochs: int | None = None  # None: enough epochs for ~3000 steps (passes/finetune.py), at most 10
    lr: float = 1e-3
    distill: float = 0.0  # weight of distillation from the original model in fine-tuning (0: labels only)
    optimizer: str = "adam"
    batch_size: int = 64
    steps: int = 1  # analyse -> select -> prune (-> fine-tune), repeated
    # data-driven criteria (maxout, apoz, mean-abs)
    calib: str | None = None
    calib_batch_size: int = 256
    maxout_per_unit: int = 1  # neurons removed from every maxout unit per step
    maxout_units: int = 0  # whole maxout units removed per step
    # training-free recovery (needs --calib)
    reconstruct: bool = False  # refit consumers by least squares instead of plain deletion
    reconstruct_select: bool = False  # choose channels by the reconstruction error they cause
    bias_compensation: bool = False  # fold removed channels' mean contribution into consumer biases
    bn_recalibrate: bool = False  # re-estimate BatchNormalization statistics after pruning
    # weight sparsity after channel pruning: a fraction (unstructured) or "2:4" (structured)
    sparsity: float | str | None = None
    sparsity_scope: str = "layer"  # layer or global (unstructured only)
    sparsity_steps: int = 1  # reach an unstructured level in this many prune (-> fine-tune) steps
    # execution of probes (search, sensitivity, budgets): local worker processes or a Ray cluster
    workers: int = 0  # 0 or 1: in this process
    ray: str | None = None  # a Ray cluster address, or "auto"
    probe_timeout: float = 600.0  # seconds without a finished probe before the backend gives up
    allow_collapse: bool = False  # accept an accuracy at chance level (otherwise a failed gate)

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
        if self.latency_criterion not in ("per-ms", "importance"):
            raise UserError(f"--latency-criterion must be per-ms or importance, got {self.latency_criterion!r}")
        if not 0.0 < self.latency_precision < 1.0 or not self.latency_max_seconds >= 0:
            raise UserError("--latency-precision must be in (0, 1) and --latency-max-seconds >= 0")
        if any(b < 1 for b in self.batch_sizes):
            raise UserError(f"--batch-sizes must be positive, got {self.batch_sizes}")
        if not 0.0 <= self.verify_tolerance < 1.0:
            raise UserError(f"--verify-tolerance must be in [0, 1), got {self.verify_tolerance}")
        modes = [m for m, on in (("--ratio", self.ratio is not None), ("--threshold", self.threshold is not None),
                                 ("--search", self.search is not None),
                                 ("--target-flops/--target-params/--target-latency",
                                  self.target_flops is not None or self.target_params is not None
                                  or self.target_latency is not None),
                                 ("--pipeline", self.pipeline is not None)) if on]
        if len(modes) > 1:
            raise UserError(f"choose one way to select channels, not {' and '.join(modes)}")
        if self.search is not None:
            if self.search != "binary":
                raise UserError(f"unknown --search {self.search!r}; the search is 'binary'")
            if self.tolerance is None:
                raise UserError("--search binary needs --tolerance (metric points it may lose)")
        if self.search_variant is not None:
            from npcompile.search.variants import get_variant

            get_variant(self.search_variant)
            if self.search is None:
                raise UserError("--search-variant is a schedule of --search binary; give --search binary too")
        if self.tolerance is not None and not 0.0 <= self.tolerance <= 100.0:
            raise UserError(f"--tolerance must be between 0 and 100 points, got {self.tolerance}")
        for flag, v in (("--target-flops", self.target_flops), ("--target-params", self.target_params),
                        ("--target-latency", self.target_latency)):
            if v is not None and not 0.0 < v < 1.0:
                raise UserError(f"{flag} is the fraction to keep, in (0, 1); got {v}")
        if (self.steps < 1 or (self.epochs is not None and self.epochs < 1) or self.batch_size < 1
                or self.eval_batch_size < 1 or self.top_k < 1):
            bad = [f for f, v in (("--steps", self.steps), ("--epochs", self.epochs), ("--batch-size", self.batch_size),
                                  ("eval_batch_size", self.eval_batch_size), ("--top-k", self.top_k))
                   if v is not None and v < 1]
            raise UserError(f"{bad[0]} must be >= 1")
        if not self.lr > 0:
            raise UserError(f"--lr must be > 0, got {self.lr}")
        if not 0.0 <= self.distill <= 1.0:
            raise UserError(f"--distill must be in [0, 1], got {self.distill}")
        if self.optimizer not in ("adam", "sgd"):
            raise UserError(f"unknown --optimizer {self.optimizer!r}; choose adam or sgd")
        if self.search and self.eval is None and ":" not in self.evaluator:
            raise UserError("--search needs evaluation data (--eval DATA.npz) or --evaluator module:function")
        if self.steps > 1 and self.mode not in ("ratio", "threshold", "maxout"):
            raise UserError("--steps repeats a --ratio, --threshold or maxout schedule; give one of them")
        if self.criterion in DATA_CRITERIA and self.calib is None and self.pipeline is None:
            raise UserError(f"--criterion {self.criterion} needs calibration data: --calib DATA.npz")
        recovery = [f for f, on in (("--reconstruct", self.reconstruct), ("--reconstruct-select",
                                                                            self.reconstruct_select),
                                     ("--bias-compensation", self.bias_compensation),
                                     ("--bn-recalibrate", self.bn_recalibrate)) if on]
        if recovery and self.calib is None:
            raise UserError(f"{recovery[0]} needs calibration data: --calib DATA.npz")
        if recovery and self.lossless:
            raise UserError(f"{recovery[0]} recovers from pruning: give --ratio, --threshold, --search or a budget")
        if self.prune_hidden and self.lossless:
            raise UserError("--prune-hidden is lossy: give it with --ratio, --threshold, --search or a budget")
        if self.reconstruct and self.bias_compensation:
            raise UserError("--reconstruct already refits biases; give it or --bias-compensation, not both")
        if self.calib_batch_size < 1 or self.maxout_per_unit < 0 or self.maxout_units < 0:
            raise UserError("--calib-batch-size must be >= 1; --maxout-per-unit and --maxout-units >= 0")
        if self.sparsity is not None:
            from npcompile.graph.weights import parse_sparsity

            level = parse_sparsity(self.sparsity)
            if self.sparsity_scope not in ("layer", "global"):
                raise UserError(f"--sparsity-scope must be layer or global, got {self.sparsity_scope!r}")
            if isinstance(level, tuple) and self.sparsity_scope == "global":
                raise UserError("an N:M sparsity pattern is per layer; --sparsity-scope global is for fractions")
            if isinstance(level, tuple) and self.sparsity_steps != 1:
                raise UserError("--sparsity-steps is for a sparsity fraction; an N:M pattern is applied at once")
        if self.sparsity_steps < 1:
            raise UserError(f"--sparsity-steps must be >= 1, got {self.sparsity_steps}")
        if self.mode == "maxout" and self.maxout_per_unit == 0 and self.maxout_units == 0:
            raise UserError("maxout pruning with --maxout-per-unit 0 and --maxout-units 0 removes nothing")
        from npcompile.execution import check_options

        check_options(self.workers, self.ray, self.probe_timeout)
        self.gates.validate()

    @property
    def mode(self) -> str:
        """lossless, ratio, threshold, search, budget or pipeline."""
        if self.pipeline is not None:
            return "pipeline"
        if self.search is not None:
            return "search"
        if self.target_flops is not None or self.target_params is not None or self.target_latency is not None:
            return "budget"
        if self.ratio is not None:
            return "ratio"
        if self.threshold is not None:
            return "threshold"
        if self.criterion == "maxout":
            return "maxout"
        return "sparsity" if self.sparsity is not None else "lossless"

    @property
    def lossless(self) -> bool:
        """Only lossless channel passes (dead channels), possibly followed by weight sparsity."""
        return self.mode in ("lossless", "sparsity")

    @property
    def nm_pattern(self) -> tuple[int, int] | None:
        """The N:M sparsity pattern asked for, if any."""
        if self.sparsity is None:
            return None
        from npcompile.graph.weights import parse_sparsity

        level = parse_sparsity(self.sparsity)
        return level if isinstance(level, tuple) else None


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


def _criteria() -> dict[str, tuple[str, dict[str, Any]]]:
    out = dict(CRITERIA)
    for name, cls in available_passes().items():
        if cls.kind == "analysis" and name not in out:
            out[name] = (name, {})
    return out


def _removal_specs(options: CompileOptions) -> list[PassSpec]:
    """What removes the selected channels: plain deletion, or a training-free recovery pass."""
    calib = {"calib": options.calib, "batch_size": options.calib_batch_size, "threads": options.threads}
    specs = [PassSpec("reconstruct-select", dict(calib))] if options.reconstruct_select else []
    if options.reconstruct:
        specs.append(PassSpec("reconstruct", dict(calib)))
    elif options.bias_compensation:
        specs.append(PassSpec("bias-compensate", dict(calib)))
    else:
        specs.append(PassSpec("prune"))
    if options.bn_recalibrate:
        specs.append(PassSpec("bn-recalibrate", dict(calib)))
    return specs


def _finetune_specs(options: CompileOptions) -> list[PassSpec]:
    """The fine-tuning pass the flags ask for (none without --train)."""
    if not options.train:
        return []
    kw: dict[str, Any] = {"train": options.train, "epochs": options.epochs, "lr": options.lr,
                          "optimizer": options.optimizer, "batch_size": options.batch_size}
    if options.threads:
        kw["threads"] = options.threads
    if options.distill:
        kw["distill"] = options.distill
    return [PassSpec("finetune", kw)]


def _sparsity_specs(options: CompileOptions) -> list[PassSpec]:
    """Weight sparsity after channel pruning. With ``--sparsity-steps N`` an unstructured level S is
    reached gradually: step i keeps ``(1 - S) ** (i / N)`` of the weights (the same share of the
    remaining ones each step), each step fine-tuned when ``--train`` is given (zeros stay zero)."""
    from npcompile.graph.weights import parse_sparsity

    level = parse_sparsity(str(options.sparsity))
    unstructured = isinstance(level, float)
    steps = options.sparsity_steps if unstructured else 1
    specs: list[PassSpec] = []
    for i in range(1, steps + 1):
        step_level = str(options.sparsity) if i == steps else str(round(1.0 - (1.0 - level) ** (i / steps), 6))
        specs.append(PassSpec("sparsity", {"sparsity": step_level, "scope": options.sparsity_scope}))
        if unstructured:  # filters that became all zero are dead now: remove them losslessly
            specs += [PassSpec("dead-channels"), PassSpec("prune")]
        specs += _finetune_specs(options)  # fine-tuning keeps the zeros at zero
    return specs


def pipeline_specs(options: CompileOptions, round_to: int) -> list[PassSpec]:
    """The passes the option flags stand for."""
    specs: list[PassSpec] = []
    remove = _removal_specs(options)
    finetune = _finetune_specs(options)
    if options.lossless:
        specs += [PassSpec("dead-channels"), PassSpec("prune")]
    else:
        name, kw = _criteria()[options.criterion]
        kw = dict(kw)
        if options.criterion in DATA_CRITERIA:
            kw.update({"calib": options.calib, "batch_size": options.calib_batch_size, "threads": options.threads})
            if options.criterion == "maxout" and options.mode == "maxout" and options.maxout_units:
                kw["units"] = True
        criterion = PassSpec(name, kw)
        common = {"round_to": round_to, "min_channels": options.min_channels}
        if options.search == "binary":
            variant = {"variant": options.search_variant} if options.search_variant else {}
            specs += [criterion, PassSpec("binary-search", {"tolerance": options.tolerance, "evaluator": "evaluator",
                                                            **common, "include": options.include or None,
                                                            "exclude": options.exclude or None, **variant}),
                      *remove]
        elif options.target_latency is not None:
            lat = {"target_latency": options.target_latency, "evaluator": "evaluator" if options.eval else None,
                   "measure": "measure", **common, "include": options.include or None,
                   "exclude": options.exclude or None, "threads": options.threads,
                   "criterion": options.latency_criterion, "max_seconds": options.latency_max_seconds}
            lat.update({k: v for k, v in (("target_flops", options.target_flops),
                                          ("target_params", options.target_params),
                                          ("tolerance", options.tolerance), ("cache", options.latency_cache))
                        if v is not None})
            if options.provider != "cpu":
                from npcompile.targets.ort import _PROVIDERS

                lat["provider"] = _PROVIDERS.get(options.provider, options.provider)
            specs += [criterion, PassSpec("latency-budget", lat), *remove]
        elif options.target_flops is not None or options.target_params is not None:
            if options.sensitivity:
                specs.append(PassSpec("sensitivity", {"evaluator": "evaluator", **common}))
            specs += [criterion, PassSpec("budget", {"target_flops": options.target_flops,
                                                     "target_params": options.target_params,
                                                     "evaluator": "evaluator" if options.eval else None, **common,
                                                     "include": options.include or None,
                                                     "exclude": options.exclude or None}),
                      *remove]
        elif options.mode == "maxout":
            sel_spec = PassSpec("maxout-select", {"per_unit": options.maxout_per_unit, "units": options.maxout_units})
            for _ in range(options.steps):
                specs += [criterion, sel_spec, *remove] + finetune
            finetune = []
        else:
            sel = dict(common)
            if options.include or options.exclude:
                sel.update({"include": options.include or None, "exclude": options.exclude or None})
            if options.ratio is not None:
                # per step, so that the widths left after all steps are (1 - ratio) of the original
                sel["ratio"] = round(1.0 - (1.0 - options.ratio) ** (1.0 / options.steps), 6)
            else:
                sel["threshold"] = options.threshold
            for _ in range(options.steps):
                specs += [criterion, PassSpec("select", dict(sel)), *remove] + finetune
            finetune = []
        if options.sensitivity and options.search == "binary":
            specs.insert(1, PassSpec("sensitivity", {"evaluator": "evaluator", **common}))
    if options.prune_hidden and not options.lossless:
        specs.insert(0, PassSpec("prune-hidden"))
    if options.sparsity is not None:
        specs += _sparsity_specs(options)
        finetune = []
    specs += finetune
    specs += [PassSpec(spec) for spec in options.extra_passes]
    specs.append(PassSpec("cleanup"))
    return specs


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
    probe = probe_shapes(original, options.input_shapes, values=options.input_values)
    specs, base, round_to, default_round = resolve_specs(options, target)
    evaluator = _make_evaluator(options, original)
    passes = instantiate(specs, original, base, {"evaluator": evaluator, "measure": _latency_measure(target, options)})
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
