"""The compile options, declared once, in groups (in the order of their ``npcompile compile``
flags). Each group checks its own values and builds the passes it stands for; checks across
groups are in :mod:`npcompile.options.checks`, the assembly of the passes in
:mod:`npcompile.options.specs`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from npcompile.errors import OPT, OptionError, UserError
from npcompile.options.declare import Option, OptionGroup
from npcompile.options.presets import (
    DATA_CRITERIA,
    LATENCY_CRITERIA,
    OPTIMIZERS,
    SEARCHES,
    SPARSITY_SCOPES,
    criteria,
)

if TYPE_CHECKING:
    from npcompile.pipeline.file import PassSpec

__all__ = ["GROUPS", "TARGET", "CRITERIA", "SELECTION", "RUNTIME", "EVALUATION", "SEARCH", "FINETUNE",
           "CALIBRATION", "RECOVERY", "SPARSITY", "BENCHMARK", "PASSES", "GATES", "REPORTING", "EXECUTION",
           "LOGGING", "int_list", "flag"]


def _str(value: Any) -> str | None:
    """A path flag's value as the field keeps it: a string, or ``None``."""
    return str(value) if value else None


def _list(value: list | None) -> list:
    return list(value or [])


def _spec(name: str, options: dict[str, Any] | None = None) -> PassSpec:
    from npcompile.pipeline.file import PassSpec

    return PassSpec(name, options) if options is not None else PassSpec(name)


def _input_shapes(specs: list[str] | None) -> dict[str, tuple[int, ...]]:
    from npcompile.graph.shapes import parse_input_shapes

    return parse_input_shapes(specs)


def int_list(text: str | None, flag: str) -> list[int]:
    """``"1,8,32"`` -> ``[1, 8, 32]``; anything else is a :class:`UserError` naming ``flag``."""
    if not text:
        return []
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise UserError(f"{flag} takes integers separated by commas, got {text!r}") from None


def _gates() -> Any:
    from npcompile.report.gates import Gates

    return Gates()


class _Target(OptionGroup):
    name = "target"
    title = "Where the result goes: the deployment target and the output folder."
    options = (
        Option("target", str, "onnx", "onnx, onnxruntime or tensorrt.", ("--target", "-t")),
        Option("output", Path, Path("npcompile-out"), "Output directory.", ("--output", "-o"), field=False),
    )


class _Criteria(OptionGroup):
    name = "criteria"
    title = "How channels are scored."
    options = (
        Option("criterion", str, "magnitude",
               "Channel score: magnitude (L1), l1, l2, maxout, apoz, mean-abs, or a plugin analysis pass."),
    )

    def check(self, o: Any) -> None:
        known = criteria()
        if o.criterion not in known:
            raise UserError(f"unknown criterion {o.criterion!r}; choose one of {', '.join(known)}")

    def analysis_spec(self, o: Any) -> PassSpec:
        """The analysis pass the criterion stands for (with its calibration options)."""
        name, kw = criteria()[o.criterion]
        kw = dict(kw)
        if o.criterion in DATA_CRITERIA:
            kw.update({"calib": o.calib, "batch_size": o.calib_batch_size, "threads": o.threads})
            if o.criterion == "maxout" and o.mode == "maxout" and o.maxout_units:
                kw["units"] = True
        return _spec(name, kw)


class _Selection(OptionGroup):
    name = "selection"
    title = "Which channels go: a ratio or a threshold of the scores, and the widths kept."
    options = (
        Option("ratio", float | None, None, "Fraction of every prunable group to remove."),
        Option("threshold", float | None, None, "Remove channels scored <= T (0: exactly the dead channels)."),
        # None: the target's default for ratio pruning, 1 otherwise
        Option("round_to", int | None, None, "Keep widths at multiples of N (default: the target's, for --ratio).",
               ("--round-to",)),
        Option("min_channels", int, 1, "Never keep fewer channels.", ("--min-channels",)),
    )

    def check(self, o: Any) -> None:
        if o.ratio is not None and not 0.0 <= o.ratio < 1.0:
            raise OptionError(f"{OPT:ratio} must be in [0, 1), got {o.ratio}")
        if o.threshold is not None and not o.threshold >= 0.0:
            raise OptionError(f"{OPT:threshold} must be >= 0, got {o.threshold}")
        if o.round_to is not None and not 1 <= o.round_to <= 4096:
            raise OptionError(f"{OPT:round_to} must be between 1 and 4096, got {o.round_to}")
        if o.min_channels < 1:
            raise OptionError(f"{OPT:min_channels} must be >= 1, got {o.min_channels}")

    def common(self, o: Any, round_to: int) -> dict[str, Any]:
        """The options every selection pass takes."""
        return {"round_to": round_to, "min_channels": o.min_channels}

    def select_spec(self, o: Any, common: dict[str, Any]) -> PassSpec:
        """The ``select`` pass of one step of a --ratio or --threshold schedule."""
        sel = dict(common)
        if o.include or o.exclude:
            sel.update({"include": o.include or None, "exclude": o.exclude or None})
        if o.ratio is not None:
            # per step, so that the widths left after all steps are (1 - ratio) of the original
            sel["ratio"] = round(1.0 - (1.0 - o.ratio) ** (1.0 / o.steps), 6)
        else:
            sel["threshold"] = o.threshold
        return _spec("select", sel)


class _Runtime(OptionGroup):
    name = "runtime"
    title = "How the model runs: input shapes, ONNX Runtime, probe inputs, verification."
    options = (
        Option("input_shapes", dict[str, tuple[int, ...]], None,
               "Shape of an input with dynamic dimensions, NAME:1x3x224x224 (repeatable).", ("--input-shape",),
               cli_type=list[str] | None, cli_default=None, param="input_shape", convert=_input_shapes, factory=dict),
        # inputs that select behaviour (If branches)
        # (no flag: messages spell it --input-value NAME=VALUE)
        Option("input_values", dict[str, Any], None, factory=dict, cli=False, flags=("--input-value",)),
        Option("provider", str, "cpu", "ONNX Runtime provider: cpu, cuda, tensorrt."),
        Option("threads", int, 0, "Intra-op threads for ONNX Runtime (0: default)."),
        Option("seed", int, 0, "Seed for probe inputs."),
        # largest relative output change where removal must be lossless
        Option("verify_tolerance", float, 1e-4,
               "Largest relative output change allowed where removal must be lossless."),
    )

    def check(self, o: Any) -> None:
        if o.threads < 0:
            raise OptionError(f"{OPT:threads} must be >= 0, got {o.threads}")
        if not 0.0 <= o.verify_tolerance < 1.0:
            raise OptionError(f"{OPT:verify_tolerance} must be in [0, 1), got {o.verify_tolerance}")


class _Evaluation(OptionGroup):
    name = "evaluation"
    title = "Accuracy before and after, and the metric of the search and the budgets."
    options = (
        # labelled (or unlabelled: fidelity) evaluation data, .npz
        Option("eval", str | None, None,
               "Evaluation data (.npz, inputs + labels): accuracy before/after, search metric.", ("--eval",),
               cli_type=Path | None, param="eval_data", convert=_str),
        Option("evaluator", str, "auto",
               "auto, accuracy, top1, cosine, neg_mse (fidelity), verification (pairs file as --eval), "
               "or module:function."),
        Option("top_k", int, 1, "Top-k accuracy.", ("--top-k",)),
        Option("eval_batch_size", int, 256, cli=False),
    )

    def check(self, o: Any) -> None:
        for flag, value in (("eval_batch_size", o.eval_batch_size), (f"{OPT:top_k}", o.top_k)):
            if value < 1:
                raise OptionError(f"{flag} must be >= 1")


class _Search(OptionGroup):
    name = "search"
    title = "How much to remove where: the per-layer search, FLOPs, parameter and latency budgets."
    options = (
        Option("search", str | None, None, "Per-layer search: binary (needs --tolerance)."),
        Option("tolerance", float | None, None, "Metric points the search may lose (e.g. 1 = one accuracy point)."),
        # None: passes/search.py's DEFAULT_VARIANT
        Option("search_variant", str | None, None,
               "Schedule of --search binary: share (default: each layer may spend the share of the tolerance "
               "matching what it can remove), paper (in order, the whole tolerance per layer), sensitivity, "
               "rounds, share-global (see npcompile/search/variants.py)."),
        Option("include", list[str], None, "Only groups matching this pattern (repeatable).",
               cli_type=list[str] | None, cli_default=None, convert=_list, factory=list),
        Option("exclude", list[str], None, "Never groups matching this pattern (repeatable).",
               cli_type=list[str] | None, cli_default=None, convert=_list, factory=list),
        Option("target_flops", float | None, None, "Budget: keep this fraction of FLOPs."),
        Option("target_params", float | None, None, "Budget: keep this fraction of parameters."),
        Option("target_latency", float | None, None,
               "Budget: reach this fraction of the original latency, measured on the target."),
        Option("latency_criterion", str, "per-ms",
               "--target-latency plan: per-ms (importance lost per ms saved) or importance."),
        # default ~/.cache/npcompile/latency
        Option("latency_cache", str | None, None,
               "Folder of cached per-layer latency models [default: ~/.cache/npcompile/latency].",
               cli_type=Path | None, convert=_str),
        Option("sensitivity", bool, False, "Measure per-layer sensitivity.", ("--sensitivity",)),
        # the hidden width of transformers as one more (lossy) group
        Option("prune_hidden", bool, False,
               "Transformers: prune the hidden width too (lossy; score it with --criterion mean-abs).",
               ("--prune-hidden",)),
    )

    def check(self, o: Any) -> None:
        if o.latency_criterion not in LATENCY_CRITERIA:
            raise OptionError(f"{OPT:latency_criterion} must be {' or '.join(LATENCY_CRITERIA)}, "
                              f"got {o.latency_criterion!r}")
        if o.search is not None:
            if o.search not in SEARCHES:
                raise OptionError(f"unknown {OPT:search} {o.search!r}; the search is 'binary'")
            if o.tolerance is None:
                raise OptionError(f"{OPT:search} binary needs {OPT:tolerance} (metric points it may lose)")
        if o.search_variant is not None:
            from npcompile.search.variants import get_variant

            get_variant(o.search_variant)
            if o.search is None:
                raise OptionError(f"{OPT:search_variant} is a schedule of {OPT:search} binary; "
                                  f"give {OPT:search} binary too")
        if o.tolerance is not None and not 0.0 <= o.tolerance <= 100.0:
            raise OptionError(f"{OPT:tolerance} must be between 0 and 100 points, got {o.tolerance}")
        for flag, v in ((f"{OPT:target_flops}", o.target_flops), (f"{OPT:target_params}", o.target_params),
                        (f"{OPT:target_latency}", o.target_latency)):
            if v is not None and not 0.0 < v < 1.0:
                raise OptionError(f"{flag} is the fraction to keep, in (0, 1); got {v}")

    def _groups(self, o: Any) -> dict[str, Any]:
        return {"include": o.include or None, "exclude": o.exclude or None}

    def binary_search_spec(self, o: Any, common: dict[str, Any]) -> PassSpec:
        """``--search binary``."""
        variant = {"variant": o.search_variant} if o.search_variant else {}
        return _spec("binary-search", {"tolerance": o.tolerance, "evaluator": "evaluator", **common,
                                       **self._groups(o), **variant})

    def latency_budget_spec(self, o: Any, common: dict[str, Any]) -> PassSpec:
        """``--target-latency`` (with the FLOPs and parameter budgets and tolerance it may have too)."""
        lat = {"target_latency": o.target_latency, "evaluator": "evaluator" if o.eval else None,
               "measure": "measure", **common, **self._groups(o), "threads": o.threads,
               "criterion": o.latency_criterion, "max_seconds": o.latency_max_seconds}
        lat.update({k: v for k, v in (("target_flops", o.target_flops), ("target_params", o.target_params),
                                      ("tolerance", o.tolerance), ("cache", o.latency_cache))
                    if v is not None})
        if o.provider != "cpu":
            from npcompile.targets.ort import PROVIDERS

            lat["provider"] = PROVIDERS.get(o.provider, o.provider)
        if o.target == "tensorrt":  # the layers timed as engines the target builds
            lat["engine"] = "tensorrt"
        return _spec("latency-budget", lat)

    def budget_spec(self, o: Any, common: dict[str, Any]) -> PassSpec:
        """``--target-flops`` / ``--target-params``."""
        return _spec("budget", {"target_flops": o.target_flops, "target_params": o.target_params,
                                "evaluator": "evaluator" if o.eval else None, **common, **self._groups(o)})

    def sensitivity_spec(self, common: dict[str, Any]) -> PassSpec:
        """``--sensitivity``."""
        return _spec("sensitivity", {"evaluator": "evaluator", **common})


class _Finetune(OptionGroup):
    name = "finetune"
    title = "Fine-tuning after pruning, and iterative schedules."
    options = (
        Option("train", str | None, None, "Labelled training data (.npz): fine-tune after pruning.",
               cli_type=Path | None, convert=_str),
        # None: enough epochs for ~3000 steps (passes/finetune.py), at most 10
        Option("epochs", int | None, None,
               "Fine-tuning epochs per fine-tuning pass [default: enough for about 3000 steps, at most 10]."),
        Option("lr", float, 1e-3, "Fine-tuning learning rate."),
        # weight of distillation from the original model in fine-tuning (0: labels only)
        Option("distill", float, 0.0, "Fine-tuning: weight of distillation from the original model (0: labels only)."),
        Option("optimizer", str, "adam", f"Fine-tuning optimizer: {' or '.join(OPTIMIZERS)}."),
        Option("batch_size", int, 64, "Fine-tuning batch size."),
        # analyse -> select -> prune (-> fine-tune), repeated
        Option("steps", int, 1, "Repeat analyse -> prune (-> fine-tune) N times."),
    )

    def check(self, o: Any) -> None:
        for flag, value in ((f"{OPT:steps}", o.steps), (f"{OPT:epochs}", o.epochs),
                            (f"{OPT:batch_size}", o.batch_size)):
            if value is not None and value < 1:
                raise OptionError(f"{flag} must be >= 1")
        if not o.lr > 0:
            raise OptionError(f"{OPT:lr} must be > 0, got {o.lr}")
        if not 0.0 <= o.distill <= 1.0:
            raise OptionError(f"{OPT:distill} must be in [0, 1], got {o.distill}")
        if o.optimizer not in OPTIMIZERS:
            raise OptionError(f"unknown {OPT:optimizer} {o.optimizer!r}; choose {' or '.join(OPTIMIZERS)}")

    def specs(self, o: Any) -> list[PassSpec]:
        """The fine-tuning pass the options ask for (none without --train)."""
        if not o.train:
            return []
        kw: dict[str, Any] = {"train": o.train, "epochs": o.epochs, "lr": o.lr, "optimizer": o.optimizer,
                              "batch_size": o.batch_size}
        if o.threads:
            kw["threads"] = o.threads
        if o.distill:
            kw["distill"] = o.distill
        return [_spec("finetune", kw)]


class _Calibration(OptionGroup):
    name = "calibration"
    title = "Calibration data for the data-driven criteria (maxout, apoz, mean-abs) and recovery."
    options = (
        Option("calib", str | None, None, "Calibration data (.npz) for --criterion maxout, apoz, mean-abs.",
               cli_type=Path | None, convert=_str),
        Option("calib_batch_size", int, 256, "Calibration batch size."),
        # neurons removed from every maxout unit per step
        Option("maxout_per_unit", int, 1, "Maxout: neurons removed from every unit per step (least relevant first)."),
        # whole maxout units removed per step
        Option("maxout_units", int, 0, "Maxout: whole units removed per step."),
    )

    def check(self, o: Any) -> None:
        if o.calib_batch_size < 1 or o.maxout_per_unit < 0 or o.maxout_units < 0:
            raise OptionError(f"{OPT:calib_batch_size} must be >= 1; {OPT:maxout_per_unit} and {OPT:maxout_units} >= 0")

    def calib_options(self, o: Any) -> dict[str, Any]:
        """What the passes that read calibration data take."""
        return {"calib": o.calib, "batch_size": o.calib_batch_size, "threads": o.threads}

    def maxout_select_spec(self, o: Any) -> PassSpec:
        """The selection of one maxout step."""
        return _spec("maxout-select", {"per_unit": o.maxout_per_unit, "units": o.maxout_units})


class _Recovery(OptionGroup):
    name = "recovery"
    title = "Training-free recovery of the pruned model (needs --calib)."
    options = (
        # refit consumers by least squares instead of plain deletion
        Option("reconstruct", bool, False, "Refit consumer layers by least squares on --calib data (no training).",
               ("--reconstruct",)),
        # choose channels by the reconstruction error they cause
        Option("reconstruct_select", bool, False, "Choose channels by the reconstruction error they cause.",
               ("--reconstruct-select",)),
        # fold removed channels' mean contribution into consumer biases
        Option("bias_compensation", bool, False, "Fold removed channels' mean contribution into the next biases.",
               ("--bias-compensation",)),
        # re-estimate BatchNormalization statistics after pruning
        Option("bn_recalibrate", bool, False, "Re-estimate BatchNorm statistics on --calib data after pruning.",
               ("--bn-recalibrate",)),
    )

    def flags_given(self, o: Any) -> list[str]:
        """The recovery options that are on, in order (as placeholders: ``{OPT:reconstruct}``...)."""
        return [f for f, on in ((f"{OPT:reconstruct}", o.reconstruct),
                                (f"{OPT:reconstruct_select}", o.reconstruct_select),
                                (f"{OPT:bias_compensation}", o.bias_compensation),
                                (f"{OPT:bn_recalibrate}", o.bn_recalibrate)) if on]

    def check(self, o: Any) -> None:
        if o.reconstruct and o.bias_compensation:
            raise OptionError(f"{OPT:reconstruct} already refits biases; give it or {OPT:bias_compensation}, not both")

    def specs(self, o: Any) -> list[PassSpec]:
        """What removes the selected channels: plain deletion, or a training-free recovery pass."""
        calib = CALIBRATION.calib_options(o)
        specs = [_spec("reconstruct-select", dict(calib))] if o.reconstruct_select else []
        if o.reconstruct:
            specs.append(_spec("reconstruct", dict(calib)))
        elif o.bias_compensation:
            specs.append(_spec("bias-compensate", dict(calib)))
        else:
            specs.append(_spec("prune"))
        if o.bn_recalibrate:
            specs.append(_spec("bn-recalibrate", dict(calib)))
        return specs


class _Sparsity(OptionGroup):
    name = "sparsity"
    title = "Weight sparsity after channel pruning: a fraction (unstructured) or N:M (structured)."
    options = (
        Option("sparsity", float | str | None, None,
               "Weight sparsity after pruning: a fraction (0.8, 80%) or 2:4 (TensorRT's structured pattern).",
               cli_type=str | None),
        # layer or global (unstructured only)
        Option("sparsity_scope", str, "layer", f"Unstructured sparsity per {' or '.join(SPARSITY_SCOPES)}."),
        # reach an unstructured level in this many prune (-> fine-tune) steps
        Option("sparsity_steps", int, 1, "Reach the --sparsity fraction gradually, in N prune (-> fine-tune) steps."),
    )

    def check(self, o: Any) -> None:
        if o.sparsity is not None:
            from npcompile.graph.weights import parse_sparsity

            level = parse_sparsity(o.sparsity)
            if o.sparsity_scope not in SPARSITY_SCOPES:
                raise OptionError(f"{OPT:sparsity_scope} must be {' or '.join(SPARSITY_SCOPES)}, "
                                  f"got {o.sparsity_scope!r}")
            if isinstance(level, tuple) and o.sparsity_scope == "global":
                raise OptionError(f"an N:M sparsity pattern is per layer; {OPT:sparsity_scope} global is for fractions")
            if isinstance(level, tuple) and o.sparsity_steps != 1:
                raise OptionError(f"{OPT:sparsity_steps} is for a sparsity fraction; an N:M pattern is applied at once")
        if o.sparsity_steps < 1:
            raise OptionError(f"{OPT:sparsity_steps} must be >= 1, got {o.sparsity_steps}")

    def specs(self, o: Any) -> list[PassSpec]:
        """Weight sparsity after channel pruning. With ``--sparsity-steps N`` an unstructured level S
        is reached gradually: step i keeps ``(1 - S) ** (i / N)`` of the weights (the same share of
        the remaining ones each step), each step fine-tuned when ``--train`` is given (zeros stay zero)."""
        from npcompile.graph.weights import parse_sparsity

        level = parse_sparsity(str(o.sparsity))
        unstructured = isinstance(level, float)
        steps = o.sparsity_steps if unstructured else 1
        specs: list[PassSpec] = []
        for i in range(1, steps + 1):
            step_level = str(o.sparsity) if i == steps else str(round(1.0 - (1.0 - level) ** (i / steps), 6))
            specs.append(_spec("sparsity", {"sparsity": step_level, "scope": o.sparsity_scope}))
            if unstructured:  # filters that became all zero are dead now: remove them losslessly
                specs += [_spec("dead-channels"), _spec("prune")]
            specs += FINETUNE.specs(o)  # fine-tuning keeps the zeros at zero
        return specs


class _Benchmark(OptionGroup):
    name = "benchmark"
    title = "Latency before and after, measured on the target until the speedup is stable."
    options = (
        Option("benchmark", bool, True, "Measure latency before and after."),
        # timed runs per round of a latency measurement
        Option("runs", int, 50,
               "Timed runs per round of a latency measurement (at least: a tiny model's rounds last 50 ms)."),
        # measure until the speedup's 95 % interval is within +-this fraction
        Option("latency_precision", float, 0.02,
               "Measure latency until the speedup's 95 % interval is within +- this fraction."),
        # ... or this long (at least two rounds)
        Option("latency_max_seconds", float, 30.0, "... or for at most this many seconds (at least two rounds)."),
        Option("warmup", int, 10, "Warm-up runs before timing."),
        # also measure latency at these batch sizes
        Option("batch_sizes", list[int], None,
               "Also measure latency at these batch sizes, e.g. 1,8,32 (dynamic-batch models).",
               cli_type=str | None, cli_default=None, convert=lambda text: int_list(text, "--batch-sizes"),
               factory=list),
    )

    def check(self, o: Any) -> None:
        if o.runs < 1 or o.warmup < 0:
            raise OptionError(f"{OPT:runs} must be >= 1 and {OPT:warmup} >= 0")
        if not 0.0 < o.latency_precision < 1.0 or not o.latency_max_seconds >= 0:
            raise OptionError(f"{OPT:latency_precision} must be in (0, 1) and {OPT:latency_max_seconds} >= 0")
        if any(b < 1 for b in o.batch_sizes):
            raise OptionError(f"{OPT:batch_sizes} must be positive, got {o.batch_sizes}")


class _Passes(OptionGroup):
    name = "passes"
    title = "Extra passes, a pipeline file instead of the flags, plugins."
    options = (
        Option("extra_passes", list[str], None,
               "Extra pass to run after pruning, by name or module:Class (repeatable).", ("--pass",),
               cli_type=list[str] | None, cli_default=None, param="extra_pass", convert=_list, factory=list),
        # a pipeline file replaces the passes the flags stand for
        Option("pipeline", str | None, None, "Pipeline file (TOML): the passes to run, replacing --ratio/--threshold.",
               cli_type=Path | None, convert=_str),
        Option("plugins", list[str], None,
               "Load passes/targets from module:Name, a module, or a .py file (repeatable).",
               cli_type=list[str] | None, cli_default=None, param="plugin", convert=_list, factory=list),
        Option("dry_run", bool, False, "Print the resolved pipeline and exit.", ("--dry-run",), field=False),
    )

    def specs(self, o: Any) -> list[PassSpec]:
        """The --pass passes."""
        return [_spec(spec) for spec in o.extra_passes]


class _Gates(OptionGroup):
    name = "gates"
    title = "Deployment gates (exit 1 when one fails) and their JUnit report."
    options = (
        Option("max_accuracy_drop", float | None, None,
               "Gate: fail (exit 1) if top-1 accuracy drops by more than PP points.", field=False),
        Option("min_speedup", float | None, None,
               "Gate: pass if the speedup's 95 % interval is above X, fail if below, else inconclusive.", field=False),
        Option("inconclusive", str, "fail", "What an inconclusive latency gate counts as: fail (exit 1) or pass.",
               field=False),
        Option("max_size", float | None, None, "Gate: fail if model.onnx is larger than MB.", field=False),
        Option("min_param_reduction", float | None, None,
               "Gate: fail if less than this fraction of parameters was removed.", field=False),
        Option("gates", "Gates", None, factory=_gates, cli=False),  # npcompile.report.gates.Gates
        Option("junit", str | None, None, "Write the gates as a JUnit XML report.", cli_type=Path | None,
               convert=_str),
        # accept an accuracy at chance level (otherwise a failed gate)
        Option("allow_collapse", bool, False, "Accept an accuracy that fell to chance level (otherwise exit 1).",
               ("--allow-collapse",)),
    )

    def check(self, o: Any) -> None:
        o.gates.validate()

    def from_cli(self, values: dict[str, Any]) -> dict[str, Any]:
        from npcompile.report.gates import Gates

        gates = Gates(max_accuracy_drop=values["max_accuracy_drop"], min_speedup=values["min_speedup"],
                      max_size_mb=values["max_size"], min_param_reduction=values["min_param_reduction"],
                      inconclusive=values["inconclusive"])
        return {"gates": gates, **super().from_cli(values)}


class _Reporting(OptionGroup):
    name = "reporting"
    title = "What is written beside report.json and report.md."
    options = (
        Option("plots", bool, True, "Draw plots beside report.md (needs matplotlib)."),
        Option("html", bool, False, "Also write a single-file report.html.", ("--html",)),
    )


class _Execution(OptionGroup):
    name = "execution"
    title = "Where probes (search, sensitivity, budgets) run: local worker processes or a Ray cluster."
    options = (
        # 0 or 1: in this process
        Option("workers", int, 0, "Evaluate probes (search, sensitivity) in N local worker processes."),
        # a Ray cluster address, or "auto"
        Option("ray", str | None, None, "Evaluate probes on the Ray cluster at ADDRESS ('auto': ray.init() defaults).",
               ("--ray",)),
        # seconds without a finished probe before the backend gives up
        Option("probe_timeout", float, 600.0,
               "Seconds without a finished probe before the workers or the cluster count as lost."),
    )

    def check(self, o: Any) -> None:
        from npcompile.execution import check_options

        check_options(o.workers, o.ray, o.probe_timeout)


class _Logging(OptionGroup):
    name = "logging"
    title = "What the command prints."
    options = (
        Option("quiet", bool, False, "Print nothing but errors.", ("--quiet", "-q"), field=False),
        Option("verbose", bool, False, "Log what each pass does.", ("--verbose", "-v"), field=False),
    )


TARGET = _Target()
CRITERIA = _Criteria()
SELECTION = _Selection()
RUNTIME = _Runtime()
EVALUATION = _Evaluation()
SEARCH = _Search()
FINETUNE = _Finetune()
CALIBRATION = _Calibration()
RECOVERY = _Recovery()
SPARSITY = _Sparsity()
BENCHMARK = _Benchmark()
PASSES = _Passes()
GATES = _Gates()
REPORTING = _Reporting()
EXECUTION = _Execution()
LOGGING = _Logging()

#: every group, in the order of the ``npcompile compile`` flags
GROUPS: tuple[OptionGroup, ...] = (TARGET, CRITERIA, SELECTION, RUNTIME, EVALUATION, SEARCH, FINETUNE, CALIBRATION,
                                   RECOVERY, SPARSITY, BENCHMARK, PASSES, GATES, REPORTING, EXECUTION, LOGGING)


def flag(name: str) -> str:
    """The CLI flag of the declared option ``name`` (:attr:`Option.flag`); a name declared nowhere
    (a pass option of its own) is ``--`` and the name with dashes."""
    for group in GROUPS:
        for o in group.options:
            if o.name == name:
                return o.flag
    return "--" + name.replace("_", "-")
