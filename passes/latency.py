"""Latency budget: keep the widths whose latency on the target is at most ``target_latency`` of
the original's, planned from a latency model measured on the target, then checked on the whole
pruned model.

1. The per-layer latency model (:mod:`npcompile.runtime.latency_model`) is built, or read from
   its cache, for the deployment session (provider, threads, input shapes), on ONNX Runtime or,
   with ``engine="tensorrt"``, on engines the target builds.
2. Every group's candidate widths are the *steps* of its measured curve: widths where the
   predicted latency drops below that of every wider candidate; for convolutions whose width is a
   multiple of the CPU's vector width, only multiples of it (``round_to`` > 1 forces multiples of
   it instead). Their widths off the vector width are measured (the half steps show the
   staircase) but not planned: in the whole graph they break ONNX Runtime's blocked (NCHWc)
   layout between layers, which isolated layers do not show (VGG at ``--ratio 0.3`` with free
   widths ran 1.2-1.7x *slower* than unpruned). A greedy plan takes, step by step, the candidate
   with the least importance lost per millisecond saved (``criterion="per-ms"``;
   ``"importance"``: the least importance lost, latency only deciding when to stop) until the
   predicted latency meets the goal (and the parameter/FLOPs budgets, when given). Importance is
   the share of the group's score mass removed, squared (a layer's loss grows faster than the
   share it loses, so no group is drained for its latency: with the share alone a transformer
   encoder's plan cut its MLPs to 1/8 and kept 29 % of the FLOPs where, squared, it keeps 45-56 %
   at the same latency); with an evaluator, each group's sensitivity, and
   the ``shortlist`` best candidates of every step are evaluated on the *whole* removal, so the
   plan ranks by the loss the model really has (per-layer losses add up far worse than their sum
   in a network that is not fine-tuned) and a ``tolerance`` caps that loss.
3. The pruned model is measured against the original (interleaved rounds, 95 % interval). If it
   misses (the estimate above the target less its upward uncertainty, at most ``margin`` of the
   target, so that a second measurement still finds it under), or lands more than ``slack``
   below the target, the latency model's calibration is refitted to every plan measured so far
   and the plan rebuilt for that aim, at most ``refine`` times. The least pruning that met the
   target wins; a plan that still misses is kept and reported, and the compilation's
   ``target-latency`` gate fails with the gap when it misses beyond the uncertainty.
"""

from __future__ import annotations

import logging
import math
from dataclasses import KW_ONLY, dataclass
from typing import Any, NamedTuple

import numpy as np

from npcompile.channels.analysis import Group
from npcompile.channels.cost import CostModel
from npcompile.channels.masked import prune_copy
from npcompile.errors import OPT, OptionError, UserError
from npcompile.pipeline import Context, Pass, PassResult, option, register_pass
from npcompile.report.progress import progress
from npcompile.runtime.latency_model import (
    LatencyModel,
    LatencyModelOptions,
    build_latency_model,
    kept_dims,
    ort_runner,
    removed_counts,
    weight_axes,
    width_grid,
)
from npcompile.runtime.timing import StableOptions, compare
from npcompile.search.levels import (
    DEFAULT_FRACTIONS,
    SearchOptions,
    ensure_scores,
    evaluator_for,
    lowest_mask,
    removal_levels,
    score_losses,
    search_groups,
    sensitivity_table,
    table_losses,
)

__all__ = ["LatencyBudgetPass", "CRITERIA", "ort_runner", "predict_ms"]

log = logging.getLogger(__name__)

#: how the plan ranks the next step of a group
CRITERIA = ("per-ms", "importance")
#: channel granularity of the latency model on a GPU engine (FP16 tensor cores)
GPU_CHANNEL_STEP = 8


def predict_ms(ctx: Context, model: LatencyModel, axes: dict, removal: dict[int, np.ndarray]) -> float:
    """The latency model's prediction (ms) of the whole model under ``removal``."""
    removed = removed_counts(ctx.analysis, removal) if model.residuals else None  # a hot path: only when used
    return model.predict_ms(kept_dims(ctx.analysis, axes, removal), removed)


def _removed(g: Group, widths: list[int]) -> list[int]:
    """Channels removed per block at each kept width (per block)."""
    return [g.size // g.blocks - w for w in widths]


class _Step(NamedTuple):
    """A candidate step of the plan: group ``gid`` to its ``i``-th width, the ``removal`` and
    predicted ``ms`` after it, the loss it adds and the share of latency (or budget) it saves;
    ``key`` ranks it (lower first)."""

    key: float
    gid: int
    i: int
    removal: dict[int, np.ndarray]
    ms: float
    dloss: float
    gain: float


class _JointLoss:
    """The metric lost by whole removals, measured with the evaluator and remembered by plan state
    (group id -> step), so that the refinements, which retrace the same greedy path, reuse them."""

    def __init__(self, ev: Any, baseline: float) -> None:
        self.ev, self.baseline = ev, float(baseline)
        self.memo: dict[tuple, float] = {}
        self.evaluations = 0

    def losses(self, states: list[tuple], removals: list[dict[int, np.ndarray]]) -> list[float]:
        todo = [(st, rem) for st, rem in zip(states, removals, strict=True) if st not in self.memo]
        todo = list({st: rem for st, rem in todo}.items())
        if todo:
            metrics = self.ev.many([rem for _, rem in todo])
            self.evaluations += len(todo)
            for (st, _), m in zip(todo, metrics, strict=True):
                self.memo[st] = self.baseline - float(m)
        return [self.memo[st] for st in states]


@register_pass
class LatencyBudgetPass(Pass):
    """Select channels so that the measured latency is at most ``target_latency`` x the original's."""

    name = "latency-budget"
    kind = "select"
    description = "plan widths from a measured per-layer latency model to reach a fraction of the original latency"
    produces = frozenset({"removal"})  # ranks by L1 magnitude when nothing scored
    exact = False

    @dataclass(frozen=True)
    class Options(SearchOptions):
        # include / exclude are not listed; threads is (the latency model is measured with them)
        record_order = ("target_latency", "round_to", "min_channels", "target_params", "target_flops", "tolerance",
                        "criterion", "refine", "levels", "threads")
        target_latency: float
        evaluator: Any = option(None, record=False)
        measure: Any = option(None, record=False)
        _: KW_ONLY
        threads: int = 0
        provider: str = option("CPUExecutionProvider", record=False)
        #: what the latency model is measured on: "onnxruntime" (a session with ``threads`` and
        #: ``provider``), or another name ("tensorrt"): every layer and the whole model built
        #: and timed by ``measure``, the deployment target's runner factory
        engine: str = option("onnxruntime", record=False)
        target_params: float | None = None
        target_flops: float | None = None
        tolerance: float | None = None
        criterion: str = "per-ms"
        refine: int = 3
        cache: str | None = option(None, record=False)
        use_cache: bool = option(True, record=False)
        step: int = option(0, record=False)
        levels: int = 8
        max_fraction: float = option(0.9, record=False)
        precision: float = option(0.03, record=False)
        max_seconds: float = option(15.0, record=False)
        slack: float = option(0.05, record=False)
        #: a plan counts as meeting the target when its measured fraction is under it by the
        #: measurement's upward uncertainty, at most this share of the target
        margin: float = option(0.03, record=False)
        #: with an evaluator: how many of each step's best candidates (by the per-group
        #: sensitivities) are evaluated on the whole removal; 0: trust the sensitivities' sum
        shortlist: int = option(4, record=False)
        #: derived: the target as a float, the FLOPs/parameter budgets, the latency runner factory and
        #: how stable a comparison must be
        target: float = option(0.0, init=False)
        budgets: dict[str, float | None] | None = option(None, init=False)
        runner: Any = option(None, init=False)
        stable: StableOptions | None = option(None, init=False)

        def __post_init__(self) -> None:
            if not 0.0 < float(self.target_latency) < 1.0:
                raise OptionError(f"{OPT:target_latency} is the fraction of the original latency to reach, in (0, 1); "
                                  f"got {self.target_latency}")
            if self.criterion not in CRITERIA:
                raise OptionError(f"{OPT:criterion=latency_criterion} must be one of {', '.join(CRITERIA)}, "
                                  f"got {self.criterion!r}")
            if self.engine != "onnxruntime" and not callable(self.measure):
                raise UserError(f"latency budget: the {self.engine} latency model needs the target's runner (measure)")
            if self.refine < 0 or self.levels < 2 or self.round_to < 1 or not 0.0 <= self.margin < 1.0:
                raise UserError("latency budget: refine must be >= 0, levels >= 2, round_to >= 1, margin in [0, 1)")
            measure = self.measure
            self._set(target=float(self.target_latency),
                      budgets={"flops": self.target_flops, "params": self.target_params},
                      runner=measure if callable(measure) else ort_runner(self.threads, self.provider),
                      stable=StableOptions(runs=20, warmup=5, precision=self.precision, min_rounds=2, max_rounds=12,
                                           max_seconds=self.max_seconds))

    # -- the latency model -------------------------------------------------------------------
    def model_options(self) -> LatencyModelOptions:
        """How the latency model is measured (the deployment session and the width grid)."""
        from npcompile.targets.ort import cpu_vector_width

        # GPUs' tensor cores take channels in multiples of 8 (FP16); a CPU its vector width
        lanes = cpu_vector_width()[0] if self.engine == "onnxruntime" else GPU_CHANNEL_STEP
        return LatencyModelOptions(threads=self.threads, provider=self.provider, step=self.step or lanes,
                                   levels=self.levels)

    def cache_key(self, ctx: Context, feeds: dict, machine: dict[str, Any] | None = None) -> str:
        """The latency model's cache key for this model, session, input shapes and machine."""
        from npcompile.runtime import latency_cache as lc

        shapes = {k: list(v.shape) for k, v in feeds.items()}
        return lc.cache_key(ctx.model.SerializeToString(), self.engine, self.model_options().key_fields(), shapes,
                            machine)

    def _model(self, ctx: Context, feeds: dict, groups: list[Group]) -> tuple[LatencyModel, dict[str, Any]]:
        from npcompile.runtime import latency_cache as lc

        opts = self.model_options()
        step = opts.step
        key = self.cache_key(ctx, feeds)
        folder = lc.cache_dir(self.cache)
        cached = lc.load_cached(folder, key) if self.use_cache else None
        if cached is not None:
            log.info("latency model: reusing %s", folder / f"{key[:40]}.json")
            return LatencyModel.from_dict(cached["model"]), {"key": key, "cache": str(folder), "reused": True,
                                                             "step": step, "engine": self.engine}
        half = {}  # the calibration model: about half of every group, at widths the plan may take
        for g in groups:
            keep = min(self._candidates(g, step), key=lambda w, size=g.size // g.blocks: abs(w - size / 2))
            if keep < g.size // g.blocks:
                half[g.id] = lowest_mask(g, ctx.scores[g.id], g.size // g.blocks - keep)
        # attention heads also shrink ops no layer table holds (scores, softmax, their reshapes):
        # each heads group is removed alone in the whole graph, at the calibration's width
        differential = {g.id: half[g.id] for g in groups if g.kind == "heads" and g.id in half}
        with progress("measuring layer latency", total=None) as tick:
            model = build_latency_model(ctx, feeds, opts, half, progress=lambda name: tick(1, name),
                                        runner=None if self.engine == "onnxruntime" else self.measure,
                                        differential=differential)
        path = lc.store(folder, key, {"model": model.as_dict()}) if self.use_cache else None
        return model, {"key": key, "cache": str(path) if path else None, "reused": False, "step": step,
                       "engine": self.engine}

    def _candidates(self, g: Group, step: int) -> list[int]:
        """Kept widths (per block) a group may take, descending from the full width."""
        size = g.size // g.blocks
        allowed = {size - c for c in removal_levels(g, 1, self.min_channels, self.max_fraction)}
        if g.blocks > 1 or g.kind != "channels":
            grid = set(width_grid(size, 1, self.levels, False)) if size > 16 else set(range(1, size + 1))
        elif self.round_to > 1:
            grid = {w for w in range(self.round_to, size, self.round_to)} | {size}
        elif g.op == "Conv" and size % step == 0:  # off-width widths break the blocked layout between layers
            grid = {w for w in width_grid(size, step, self.levels, False) if w % step == 0}
        else:
            grid = set(width_grid(size, step, self.levels, True))
        return sorted((grid & allowed) | {size}, reverse=True)

    def steps(self, ctx: Context, groups: list[Group], model: LatencyModel, axes: dict, step: int
              ) -> tuple[dict[int, list[int]], list[dict[str, Any]]]:
        """Every group's plannable widths (per block, widest first): the candidates where the
        predicted latency drops below that of every wider one; and the curves for the report."""
        steps, curves = {}, []
        noise = 0.002 * model.t_full
        for g in groups:
            widths = self._candidates(g, step)
            pred = [predict_ms(ctx, model, axes, {} if w == g.size // g.blocks else
                               {g.id: lowest_mask(g, ctx.scores[g.id], g.size // g.blocks - w)}) for w in widths]
            kept, floor = [], math.inf
            for w, ms in zip(widths, pred, strict=True):  # widest first: a step is where latency drops
                if ms < floor - noise or not kept:
                    kept.append(w)
                    floor = ms
            steps[g.id] = kept
            curves.append({"group": g.name, "width": g.size, "widths": [w * g.blocks for w in widths],
                           "ms": [round(x, 5) for x in pred], "steps": [w * g.blocks for w in kept]})
        return steps, curves

    @staticmethod
    def _shares(ctx: Context, model: LatencyModel) -> list[dict[str, Any]]:
        """Each timed layer's share of the latency beside its share of the FLOPs (FLOPs are not speed)."""
        from npcompile.channels.cost import node_macs

        macs = {n.name: m for n in ctx.analysis.graph.nodes if (m := node_macs(n, ctx.shapes)) is not None}
        return [{**r, **{k: round(r[k], 5) for k in ("ms", "excess_ms") if k in r},
                 "latency": round(r["latency"], 4), "flops": round(r["flops"], 4)}
                for r in model.shares(macs, sum(macs.values()))]

    # -- planning ------------------------------------------------------------------------------
    def _plan(self, ctx: Context, groups: list[Group], steps: dict[int, list[int]], losses: dict[int, list[float]],
              model: LatencyModel, axes: dict, cm: CostModel, goal_ms: float, joint: _JointLoss | None = None
              ) -> tuple[dict[int, np.ndarray], float, float]:
        """Greedy steps from the full widths until the predicted latency meets ``goal_ms``. Each
        step takes the candidate with the least loss per millisecond saved; with ``joint`` (an
        evaluator), the loss of the ``shortlist`` best candidates by the per-group estimate is
        measured on the whole removal, so that losses that add up worse than their parts (an
        unrecovered network collapses long before any one layer's sensitivity says so) are seen."""
        by_id = {g.id: g for g in groups}
        state = {g.id: 0 for g in groups}
        removal: dict[int, np.ndarray] = {}
        base = cm.base
        goals = {k: None if t is None else t * getattr(base, k) for k, t in self.budgets.items()}

        def predict(rem: dict[int, np.ndarray]) -> float:
            return predict_ms(ctx, model, axes, rem)

        def mask(gid: int, i: int) -> np.ndarray:
            g = by_id[gid]
            return lowest_mask(g, ctx.scores[gid], g.size // g.blocks - steps[gid][i])

        current = predict(removal)
        cost = cm.cost(removal)
        loss_total = 0.0
        while True:
            open_budgets = [k for k, v in goals.items() if v is not None and getattr(cost, k) > v]
            if current <= goal_ms and not open_budgets:
                break
            best = None
            # latency first while it is open; the parameter/FLOPs budgets when it is met, or when no
            # step saves latency any more
            for by_latency in ([True, False] if current > goal_ms else [False]):
                if not by_latency and not open_budgets:
                    break
                cands = []
                for gid in state:
                    i = state[gid] + 1
                    if i >= len(steps[gid]) or i >= len(losses[gid]):
                        continue
                    dloss = losses[gid][i] - losses[gid][state[gid]]
                    if self.tolerance is not None and self.evaluator is not None and joint is None \
                            and loss_total + dloss > self.tolerance:
                        continue
                    trial = {**removal, gid: mask(gid, i)}
                    ms = predict(trial)
                    if by_latency:
                        gain = (current - ms) / max(model.t_full, 1e-9)
                    else:
                        c = cm.cost(trial)
                        gain = sum((getattr(cost, k) - getattr(c, k)) / max(getattr(base, k), 1)
                                   for k in open_budgets)
                    if gain > 0:
                        cands.append(_Step(self._key(dloss, gain), gid, i, trial, ms, dloss, gain))
                cands.sort(key=lambda c: (c.key, c.gid))
                if joint is not None and cands:  # the shortlist re-ranked by the loss measured on the whole removal
                    short = cands[:self.shortlist]
                    total = joint.losses([tuple(sorted({**state, c.gid: c.i}.items())) for c in short],
                                         [c.removal for c in short])
                    cands = sorted((c._replace(key=self._key(t - loss_total, c.gain), dloss=t - loss_total)
                                    for c, t in zip(short, total, strict=True)
                                    if self.tolerance is None or t <= self.tolerance), key=lambda c: (c.key, c.gid))
                if cands:
                    best = cands[0]
                    break
            if best is None:
                break
            state[best.gid] = best.i
            removal, current = best.removal, best.ms
            loss_total += best.dloss
            cost = cm.cost(removal)
        return removal, current, loss_total

    def _aim(self, frac: float, high: float) -> float:
        """The fraction a measurement must not exceed for the plan to count as meeting the target:
        the target less the measurement's upward uncertainty (``high - frac``), at most ``margin``
        of the target, so that another measurement of the same model (the report's, the user's)
        still finds it under the target."""
        return self.target - min(max(high - frac, 0.0), self.margin * self.target)

    def _next_goal(self, frac: float, high: float) -> float | None:
        """The planning goal of the next refinement after measuring ``frac`` (interval top
        ``high``): the aim (see :meth:`_aim`), planned with the refitted calibration, when the plan
        missed it (or met the target only within the uncertainty) or landed more than ``slack``
        below the target; None when this plan is to be kept."""
        aim = self._aim(frac, high)
        if frac > aim or high < self.target - self.slack:
            return min(max(aim, 0.01), 0.999)
        return None

    def _choose(self, attempts: list[dict[str, Any]]) -> dict[str, Any]:
        """The measured plan to keep: the least pruned of those under the target with their
        uncertainty (see :meth:`_aim`), else of those whose estimate is under it, else the
        closest miss."""
        for ok in (lambda a: a["measured"] <= self._aim(a["measured"], a["high"]),
                   lambda a: a["measured"] <= self.target):
            meeting = [a for a in attempts if ok(a)]
            if meeting:
                return max(meeting, key=lambda a: a["measured"])
        return min(attempts, key=lambda a: a["measured"])

    def _key(self, dloss: float, gain: float) -> float:
        """How a candidate step ranks (lower first): loss per share of latency (or budget) saved, or
        the loss alone (the saving breaking ties)."""
        return dloss / gain if self.criterion == "per-ms" else dloss - 1e-9 * gain

    def _losses(self, ctx: Context, groups: list[Group], steps: dict[int, list[int]], ev: Any,
                baseline: float) -> tuple[dict, str]:
        """Importance lost at every candidate width: sensitivity with an evaluator ``ev`` (None:
        none), else the share of the group's score mass removed, squared."""
        if ev is not None:
            table = sensitivity_table(ctx, ev, groups, DEFAULT_FRACTIONS, 1, self.min_channels, baseline)
            return {g.id: table_losses(_removed(g, steps[g.id]), g.blocks, row, baseline)
                    for g, row in zip(groups, table, strict=True)}, "sensitivity"
        # the share of score mass removed, squared: a layer's loss grows faster than the share it
        # loses (sensitivity curves are convex), so that no group is drained for its latency
        return {g.id: [100.0 * (x / 100.0) ** 2 for x in score_losses(g, ctx.scores[g.id], _removed(g, steps[g.id]))]
                for g in groups}, "magnitude"

    def run(self, ctx: Context) -> PassResult:
        from npcompile.runtime.verify import probe_inputs

        ensure_scores(ctx)
        groups = [g for g in search_groups(ctx, self.include, self.exclude) if g.id in ctx.scores]
        feeds = probe_inputs(ctx.model, ctx.probe, batch=None, seed=ctx.seed)
        model, where = self._model(ctx, feeds, groups)
        axes = weight_axes(ctx.analysis)
        cm = CostModel(ctx.analysis, ctx.shapes)
        steps, curves = self.steps(ctx, groups, model, axes, where["step"])
        ev = evaluator_for(ctx, self.evaluator, groups, self.threads, True) if self.evaluator is not None else None
        baseline = ev({}) if ev is not None else 0.0
        losses, guide = self._losses(ctx, groups, steps, ev, baseline)
        # shortlist 0: the per-group sensitivities alone, added up
        joint = _JointLoss(ev, baseline) if ev is not None and self.shortlist >= 1 else None
        original_runner = self.runner(ctx.model, feeds)
        goal = self.target
        attempts: list[dict[str, Any]] = []
        removal: dict[int, np.ndarray] = {}
        seen: list[dict[int, np.ndarray]] = []

        def same(a: dict, b: dict) -> bool:
            return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

        points: list[tuple[float, float, float]] = []
        calibrated = model.kappa
        for _ in range(self.refine + 1):
            removal, pred_ms, loss = self._plan(ctx, groups, steps, losses, model, axes, cm, goal * model.t_full, joint)
            if any(same(removal, r) for r in seen):
                break  # the plan cannot change any more
            seen.append(removal)
            pruned = prune_copy(ctx.model, ctx.analysis, removal, ctx.probe) if removal else ctx.model
            cmp = compare(original_runner, self.runner(pruned, feeds), self.stable)
            frac, low, high = 1 / cmp["speedup"], 1 / cmp["speedup_high"], 1 / cmp["speedup_low"]
            attempts.append({"goal": goal, "predicted": pred_ms / model.t_full, "measured": frac, "low": low,
                             "high": high, "aim": self._aim(frac, high), "rounds": cmp["rounds"],
                             "busy": cmp["load"]["busy"],
                             "loss": loss, "_removal": removal})
            log.info("latency budget: plan for %.3f predicted %.3f, measured %.3f (%.3f-%.3f) of the original",
                     goal, pred_ms / model.t_full, frac, low, high)
            next_goal = self._next_goal(frac, high)
            if next_goal is None:
                break
            # the calibration refitted to every plan measured so far, then planned for the aim:
            # a scale that is off (the half-width calibration point far from where the plan goes)
            # is corrected where a goal scaled by the miss would chase it
            points.append((*model.savings(kept_dims(ctx.analysis, axes, removal),
                                          removed_counts(ctx.analysis, removal)),
                           model.t_full * (1.0 - frac)))
            model = model.refit(points)
            attempts[-1]["kappa_next"] = model.kappa
            goal = next_goal
        last = self._choose(attempts) if attempts else \
            {"measured": 1.0, "low": 1.0, "high": 1.0, "predicted": 1.0, "_removal": {}}
        removal = last["_removal"]
        last = {k: v for k, v in last.items() if k != "_removal"}
        ctx.removal = removal
        cost = cm.cost(removal)
        kept = {"flops": cost.flops / max(cm.base.flops, 1), "params": cost.params / max(cm.base.params, 1)}
        met = last["low"] <= self.target
        verified = {"fraction": last["measured"], "low": last["low"], "high": last["high"]}
        for a in attempts:
            a.pop("_removal", None)
        pred_err = [abs(a["predicted"] - a["measured"]) / a["measured"] for a in attempts if a["measured"] > 0]
        n = int(sum(m.sum() for m in removal.values()))
        summary = (f"removed {n} channels in {len(removal)} groups: keeps {kept['flops']:.1%} of FLOPs, "
                   f"{kept['params']:.1%} of params; latency {last['measured']:.3f} "
                   f"({last['low']:.3f}-{last['high']:.3f}) of {model.t_full:.3f} ms for target {self.target:g}, "
                   f"{len(attempts)} check(s)")
        if not met:
            summary += " (target missed)"
        data = {"target_latency": self.target, "original_ms": model.t_full, "kept": kept, "verified": verified,
                "met": met, "attempts": attempts, "guide": guide, "criterion": self.criterion,
                "prediction_error": float(np.median(pred_err)) if pred_err else None, "channels": n}
        if joint is not None:
            data["evaluations"] = joint.evaluations
        model_info = {**where, "kappa": calibrated, "kappa_refit": model.kappa, "t_full_ms": model.t_full,
                      **model.info, "curves": curves, "shares": self._shares(ctx, model)}
        return PassResult(False, summary, data, report={"summary": summary, **data},
                          sections={"latency-model": model_info})

