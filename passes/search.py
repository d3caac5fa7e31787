"""Evaluation-driven selection: binary-search neuron pruning, sensitivity analysis, budgets.

- ``binary-search`` (Zhang, Qin, Chan, ICONIP 2017): channels of each group are ranked by their
  score (``ctx.scores``, e.g. magnitude); for each group in topological order a binary search finds
  the largest number of lowest-ranked channels whose removal keeps the evaluated metric at or above
  ``baseline - tolerance``; earlier groups keep their decision. About ``sum(log2(width))``
  evaluations instead of one per channel.
- ``sensitivity``: the metric of each group with a fraction of its channels removed, the others
  intact: a table that says which layers tolerate pruning.
- ``budget``: reach a FLOPs and/or parameter target (fraction of the model to keep) with the least
  metric loss, guided by the sensitivity table (greedy, one rounding step at a time).

All three evaluate removals on one masked ONNX Runtime session (:mod:`npcompile.channels.masked`); widths
move in multiples of ``round_to`` (grouped convolutions lose the same number per block) and never
go below ``min_channels``. The removal levels, the sensitivity table and the other shared helpers
are in :mod:`npcompile.search.levels` (re-exported here); the schedules of the binary search in
:mod:`npcompile.search.variants`.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any

import numpy as np

from npcompile.channels.analysis import Group
from npcompile.channels.cost import Cost, CostModel
from npcompile.channels.masked import RemovalEvaluator
from npcompile.errors import OPT, OptionError, UserError
from npcompile.execution.bisect import AcceptRate, search_levels
from npcompile.pipeline import Context, Pass, PassResult, option, register_pass
from npcompile.report.progress import progress
from npcompile.search.levels import (
    DEFAULT_FRACTIONS,
    SearchOptions,
    check_removal,
    ensure_scores,
    evaluator_for,
    loss_curve,
    lowest_mask,
    removal_levels,
    score_losses,
    search_groups,
    sensitivity_table,
    table_losses,
)
from npcompile.search.variants import cost_weights, eval_bound, get_variant, visits

__all__ = ["BinarySearchPass", "SensitivityPass", "BudgetPass", "removal_levels", "lowest_mask",
           "search_groups", "sensitivity_table", "DEFAULT_FRACTIONS", "DEFAULT_VARIANT"]

log = logging.getLogger(__name__)

# the helpers' names before they moved to npcompile.search.levels
_ensure_scores, _check_removal, _evaluator_for, _loss_curve = ensure_scores, check_removal, evaluator_for, loss_curve

#: the schedule of ``binary-search`` (``--search-variant``); see :mod:`npcompile.search.variants`
DEFAULT_VARIANT = "share"  # measured best: benchmarks/README.md, search_variants.py


# -- option checks (the shared helpers are in npcompile.search.levels) --------------------------
def _options_check(round_to: int, min_channels: int) -> None:
    if round_to < 1:
        raise OptionError(f"{OPT:round_to} must be >= 1, got {round_to}")
    if min_channels < 1:
        raise UserError(f"min_channels must be >= 1, got {min_channels}")


def _describe(evaluator: Any) -> dict[str, Any]:
    describe = getattr(evaluator, "describe", None)
    return describe() if callable(describe) else {"name": _name(evaluator)}


def _name(evaluator: Any) -> str:
    return str(getattr(evaluator, "name", None) or type(evaluator).__name__)


def _unit(evaluator: Any) -> str:
    return str(getattr(evaluator, "unit", "") or "")


# -- binary search -----------------------------------------------------------------------------
@register_pass
class BinarySearchPass(Pass):
    """Per group, binary-search the largest removal of lowest-ranked channels that keeps the
    metric ``>= floor`` (Zhang, Qin, Chan 2017); ``variant`` chooses the order of the groups and
    the floor of each search (:mod:`npcompile.search.variants`; ``paper``: topological order,
    ``baseline - tolerance`` for every group)."""

    name = "binary-search"
    kind = "select"
    description = "per layer, binary-search the most low-ranked channels removable within a metric tolerance"
    produces = frozenset({"removal"})  # ranks by L1 magnitude when nothing scored
    exact = False

    @dataclass(frozen=True)
    class Options(SearchOptions):
        record_order = ("tolerance", "evaluator", "round_to", "min_channels", "include", "exclude", "variant")
        tolerance: float
        evaluator: Any = option(report=_name)
        _: KW_ONLY
        check: bool = option(True, record=False)
        variant: str = DEFAULT_VARIANT
        #: derived: the variant by that name (:mod:`npcompile.search.variants`)
        search_variant: Any = option(None, init=False)

        def __post_init__(self) -> None:
            tolerance = self.tolerance
            if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
                raise OptionError(f"{OPT:tolerance} must be a finite number >= 0, got {tolerance}")
            if self.evaluator is None:
                raise OptionError(f"binary search needs an evaluator (evaluation data or {OPT:evaluator})")
            _options_check(self.round_to, self.min_channels)
            self._set(search_variant=get_variant(self.variant))

    def _weights(self, ctx: Context, groups: list[Group], counts: dict[int, list[int]]) -> dict[int, float]:
        """Each group's share of the parameters and FLOPs its searchable channels hold."""
        cm = CostModel(ctx.analysis, ctx.shapes)
        base = cm.base
        savings = {}
        for g in groups:
            most = counts[g.id][-1]
            after = cm.cost({g.id: lowest_mask(g, ctx.scores[g.id], most)}) if most else base
            savings[g.id] = (float(base.params - after.params), float(base.flops - after.flops))
        return cost_weights(savings, (float(base.params), float(base.flops)))

    def run(self, ctx: Context) -> PassResult:
        ensure_scores(ctx)
        groups = search_groups(ctx, self.include, self.exclude)
        if not groups:
            ctx.removal = {}
            return PassResult(False, "no prunable groups to search",
                              {"evaluations": 0, "probes": [], "groups": [], "evaluator": _describe(self.evaluator),
                               "variant": self.search_variant.name}).data_section()
        ev = evaluator_for(ctx, self.evaluator, groups, self.threads, self.check)
        baseline = ev({})
        by_id = {g.id: g for g in groups}
        counts = {g.id: removal_levels(g, self.round_to, self.min_channels) for g in groups}
        variant = self.search_variant
        weights = sensitivity = None
        if variant.share or variant.order == "sensitivity":
            weights = self._weights(ctx, groups, counts)
        if variant.order == "sensitivity":
            half = check_removal(groups, ctx.scores)
            probed = [g.id for g in groups if g.id in half]
            metrics = ev.many([{gid: half[gid]} for gid in probed])
            sensitivity = {g.id: 0.0 for g in groups}
            sensitivity.update({gid: baseline - m for gid, m in zip(probed, metrics, strict=True)})
        removal: dict[int, np.ndarray] = {}
        state = {g.id: 0 for g in groups}  # index into counts: the level each group is at
        probes: list[dict[str, Any]] = []
        reached = [baseline]  # the metric of the state so far (the rounds variant re-bases on it)
        rounds, non_monotone = 0, []
        rate = AcceptRate()  # path decisions so far: steer the extra probes of the next groups
        with progress("binary search", total=len(groups) * variant.sweeps) as tick:
            for visit in visits(variant, [g.id for g in groups], baseline, float(self.tolerance), lambda: reached[0],
                                weights, sensitivity):
                tick(1, by_id[visit.group].name)
                g = by_id[visit.group]
                levels = counts[g.id][state[g.id]:]
                if len(levels) < 2:
                    continue
                floor = visit.floor

                def probe(idx: Sequence[int], g: Group = g, levels: list[int] = levels) -> list[float]:
                    return ev.many([{**removal, g.id: lowest_mask(g, ctx.scores[g.id], levels[i])} for i in idx])

                # with W workers, W levels of the sequential search's decision tree per round
                found = search_levels(len(levels), probe, lambda m, floor=floor: m >= floor, getattr(ev, "width", 1),
                                      rate)
                for level, metric, ok, on_path in found.probes:
                    probes.append({"group": g.name, "removed": levels[level] * g.blocks, "width": g.size,
                                   "metric": metric, "accepted": ok, "on_path": on_path, "sweep": visit.sweep,
                                   "floor": floor})
                    log.debug("%s: remove %d/%d -> %.6g (%s)", g.name, levels[level] * g.blocks, g.size, metric,
                              "ok" if ok else "too low")
                rounds += found.rounds
                if not found.monotone and g.name not in non_monotone:
                    non_monotone.append(g.name)
                if found.level:
                    state[g.id] += found.level
                    removal[g.id] = lowest_mask(g, ctx.scores[g.id], levels[found.level])
                    reached[0] = found.metric if found.metric is not None else reached[0]
        final = reached[0]
        decisions = []
        for g in groups:
            removed = counts[g.id][state[g.id]] * g.blocks
            decisions.append({"group": g.name, "width": g.size, "removed": removed, "kept": g.size - removed})
            log.info("%s: removes %d of %d channels", g.name, removed, g.size)
        ctx.removal = removal
        if non_monotone:
            ctx.notes.append(f"binary search: the metric was not monotone in the channels removed in "
                             f"{', '.join(non_monotone)} (the search decided as the sequential one does)")
        n = int(sum(m.sum() for m in removal.values()))
        unit = _unit(self.evaluator)
        bound = eval_bound(variant, [len(counts[g.id]) for g in groups])
        log2_sum = sum(math.log2(g.size) for g in groups)
        summary = (f"removed {n} channels in {len(removal)} of {len(groups)} groups, {ev.evaluations} evaluations "
                   f"(variant {variant.name}; sum of log2(width) {log2_sum:.0f}); "
                   f"{_name(self.evaluator)} {baseline:.4g}{unit} -> {final:.4g}{unit}")
        return PassResult(False, summary, {
            "baseline": baseline, "final": final, "tolerance": float(self.tolerance), "probes": probes,
            "evaluations": ev.evaluations, "groups": decisions, "channels": n,
            "evaluator": _describe(self.evaluator), "fast_path": ev.fast, "check_diff": ev.check_diff,
            "rounds": rounds, "levels_per_round": getattr(ev, "width", 1), "monotone": not non_monotone,
            "non_monotone_groups": non_monotone, "variant": variant.name, "evaluation_bound": bound,
            "log2_width_sum": log2_sum, "sensitivity": None if sensitivity is None else
            {by_id[k].name: v for k, v in sensitivity.items()},
            "weights": None if weights is None else {by_id[k].name: v for k, v in weights.items()}}).data_section()


# -- sensitivity -------------------------------------------------------------------------------
def _check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    fr = tuple(float(f) for f in fractions)
    if not fr or any(not 0.0 < f < 1.0 for f in fr):
        raise UserError(f"sensitivity fractions must lie in (0, 1), got {list(fr)}")
    return tuple(sorted(set(fr)))


@register_pass
class SensitivityPass(Pass):
    """Metric per group with a fraction of its channels removed, every other group intact."""

    name = "sensitivity"
    kind = "analysis"
    description = "metric of each layer pruned alone at several fractions (which layers tolerate pruning)"
    produces = frozenset({"sensitivity", "scores"})  # the table a later budget pass reads; L1 scores if none
    exact = False

    @dataclass(frozen=True)
    class Options(SearchOptions):
        record_order = ("evaluator", "fractions", "round_to", "min_channels", "include", "exclude")
        evaluator: Any = option(report=_name)
        fractions: Sequence[float] = option(DEFAULT_FRACTIONS, report=list)
        _: KW_ONLY
        check: bool = option(True, record=False)

        def __post_init__(self) -> None:
            if self.evaluator is None:
                raise OptionError(f"sensitivity analysis needs an evaluator (evaluation data or {OPT:evaluator})")
            _options_check(self.round_to, self.min_channels)
            self._set(fractions=_check_fractions(self.fractions))

    def run(self, ctx: Context) -> PassResult:
        ensure_scores(ctx)
        groups = search_groups(ctx, self.include, self.exclude)
        if not groups:
            result = PassResult(False, "no prunable groups", {"table": [], "evaluations": 0,
                                                               "evaluator": _describe(self.evaluator)}).data_section()
            ctx.results[self.name] = result
            return result
        ev = evaluator_for(ctx, self.evaluator, groups, self.threads, self.check)
        baseline = ev({})
        table = sensitivity_table(ctx, ev, groups, self.fractions, self.round_to, self.min_channels, baseline)
        summary = f"{len(groups)} groups x {len(self.fractions)} fractions, {ev.evaluations} evaluations"
        result = PassResult(False, summary, {
            "baseline": baseline, "fractions": list(self.fractions), "table": table, "evaluations": ev.evaluations,
            "evaluator": _describe(self.evaluator), "round_to": self.round_to, "fast_path": ev.fast}).data_section()
        ctx.results[self.name] = result  # the pipeline stores it too; a later budget pass reads it
        return result


# -- budget ------------------------------------------------------------------------------------
@register_pass
class BudgetPass(Pass):
    """Keep ``target_flops`` and/or ``target_params`` of the model (fractions: 0.5 keeps half) with the
    least metric loss: greedily take the rounding step with the smallest loss per cost saved.

    The loss of each step comes from the sensitivity table (the ``sensitivity`` pass's result when it
    ran on this model, else measured here with ``evaluator``); without an evaluator, the share of
    the group's score mass removed stands in for it (``magnitude`` guide). Groups lose at most
    ``max_fraction`` of their width (with an evaluator: at most the largest measured fraction).
    """

    name = "budget"
    kind = "select"
    description = "reach a FLOPs/parameter target with the least metric loss (sensitivity-guided greedy)"
    produces = frozenset({"removal"})  # ranks by L1 magnitude when nothing scored
    exact = False

    @dataclass(frozen=True)
    class Options(SearchOptions):
        record_order = ("target_flops", "target_params", "evaluator", "fractions", "round_to", "min_channels",
                        "include", "exclude", "max_fraction")
        target_flops: float | None = None
        target_params: float | None = None
        evaluator: Any = option(None, report=lambda e: None if e is None else _name(e))
        fractions: Sequence[float] = option(DEFAULT_FRACTIONS, report=list)
        _: KW_ONLY
        max_fraction: float = 0.9
        check: bool = option(True, record=False)
        #: derived: the targets by cost ("flops", "params")
        targets: dict[str, float | None] | None = option(None, init=False)

        def __post_init__(self) -> None:
            target_flops, target_params = self.target_flops, self.target_params
            if target_flops is None and target_params is None:
                raise UserError("budget: give a FLOPs or parameter target (fraction of the model to keep)")
            for what, t in (("FLOPs", target_flops), ("parameter", target_params)):
                if t is not None and not (isinstance(t, (int, float)) and 0.0 < t <= 1.0):
                    raise UserError(f"budget: the {what} target is the fraction to keep, in (0, 1]; got {t}")
            if not 0.0 < self.max_fraction < 1.0:
                raise UserError(f"budget: max_fraction must be in (0, 1), got {self.max_fraction}")
            _options_check(self.round_to, self.min_channels)
            self._set(fractions=_check_fractions(self.fractions),
                      targets={"flops": target_flops, "params": target_params})

    # the loss of every allowed level of every group
    def _losses(self, ctx: Context, groups: list[Group], ev: RemovalEvaluator | None
                ) -> tuple[dict[int, list[int]], dict[int, list[float]], str, float | None]:
        levels = {g.id: removal_levels(g, self.round_to, self.min_channels, self.max_fraction) for g in groups}
        if ev is None:
            losses = {g.id: score_losses(g, ctx.scores[g.id], levels[g.id]) for g in groups}
            return levels, losses, "magnitude", None
        prior = ctx.results.get("sensitivity")
        data = getattr(prior, "data", prior) if prior is not None else None
        table = None
        baseline = None
        if isinstance(data, dict) and data.get("table"):
            by_id = {row["group_id"]: row for row in data["table"]}
            if all(g.id in by_id and by_id[g.id]["group"] == g.name for g in groups):
                table, baseline = [by_id[g.id] for g in groups], float(data["baseline"])
                log.info("budget: using the sensitivity table of the sensitivity pass")
        if table is None:
            baseline = ev({})
            table = sensitivity_table(ctx, ev, groups, self.fractions, self.round_to, self.min_channels, baseline)
        losses = {}
        for g, row in zip(groups, table, strict=True):
            losses[g.id] = table_losses(levels[g.id], g.blocks, row, baseline)
            levels[g.id] = levels[g.id][: len(losses[g.id])]
        return levels, losses, "sensitivity", baseline

    def run(self, ctx: Context) -> PassResult:
        ensure_scores(ctx)
        groups = search_groups(ctx, self.include, self.exclude)
        cm = CostModel(ctx.analysis, ctx.shapes)
        base = cm.base
        goal = {k: None if t is None else t * getattr(base, k) for k, t in self.targets.items()}
        ev = evaluator_for(ctx, self.evaluator, groups, self.threads, self.check) \
            if self.evaluator is not None and groups else None
        levels, losses, guide, baseline = self._losses(ctx, groups, ev)
        by_id = {g.id: g for g in groups}
        state = {g.id: 0 for g in groups}
        version = {g.id: 0 for g in groups}
        removal: dict[int, np.ndarray] = {}
        current = base

        def unmet() -> list[str]:
            return [k for k, v in goal.items() if v is not None and getattr(current, k) > v + 1e-9]

        def candidate(gid: int, open_targets: list[str]) -> tuple | None:
            i = state[gid]
            if i + 1 >= len(levels[gid]):
                return None
            g = by_id[gid]
            mask = lowest_mask(g, ctx.scores[gid], levels[gid][i + 1])
            saved = cm.step_saving(removal, {**removal, gid: mask}, gid)
            weight = sum(getattr(saved, k) / max(getattr(base, k), 1) for k in open_targets)
            if weight <= 0:
                return None
            dloss = losses[gid][i + 1] - losses[gid][i]
            return (dloss / weight, -weight, gid, version[gid], mask, saved)

        def rebuild(open_targets: list[str]) -> list[tuple]:
            heap = [c for gid in state if (c := candidate(gid, open_targets)) is not None]
            heapq.heapify(heap)
            return heap

        open_targets = unmet()
        heap = rebuild(open_targets)
        steps = 0
        last_step = Cost(0, 0)
        while open_targets and heap:
            _, _, gid, ver, mask, saved = heapq.heappop(heap)
            if ver != version[gid]:
                continue
            removal[gid] = mask
            state[gid] += 1
            current = current - saved
            last_step = saved
            steps += 1
            now = unmet()
            touched = {gid} | (cm.neighbours(gid) & state.keys())
            for t in touched:
                version[t] += 1
            if now != open_targets:
                open_targets = now
                heap = rebuild(open_targets)
                continue
            for t in touched:
                c = candidate(t, open_targets)
                if c is not None:
                    heapq.heappush(heap, c)
        exact = cm.cost(removal)
        if abs(exact.flops - current.flops) > 1 or exact.params != current.params:
            log.warning("budget: cost drifted while stepping (%s vs %s)", current, exact)
        current = exact
        reached = not unmet()
        if not reached:
            log.warning("budget: target not reached (kept %s of FLOPs, %s of parameters at the most pruning allowed)",
                        f"{current.flops / max(base.flops, 1):.3f}", f"{current.params / max(base.params, 1):.3f}")
            ctx.notes.append("budget target not reached: every allowed step was taken")
        ctx.removal = removal
        final = ev(removal) if ev is not None else None
        decisions = [{"group": g.name, "width": g.size, "removed": levels[g.id][state[g.id]] * g.blocks,
                      "loss": losses[g.id][state[g.id]]} for g in groups]
        n = int(sum(m.sum() for m in removal.values()))
        kept_f = current.flops / max(base.flops, 1)
        kept_p = current.params / max(base.params, 1)
        summary = f"removed {n} channels in {len(removal)} groups: keeps {kept_f:.1%} of FLOPs, {kept_p:.1%} of params"
        if final is not None and baseline is not None:
            unit = _unit(self.evaluator)
            summary += f"; {_name(self.evaluator)} {baseline:.4g}{unit} -> {final:.4g}{unit}"
        if not reached:
            summary += " (target not reached)"
        return PassResult(False, summary, {
            "target_flops": self.targets["flops"], "target_params": self.targets["params"],
            "base": {"flops": base.flops, "params": base.params},
            "result": {"flops": current.flops, "params": current.params},
            "kept": {"flops": kept_f, "params": kept_p}, "reached": reached, "guide": guide, "steps": steps,
            "last_step": {"flops": last_step.flops, "params": last_step.params}, "channels": n,
            "groups": decisions, "baseline": baseline, "final": final,
            "evaluations": ev.evaluations if ev is not None else 0,
            "evaluator": _describe(self.evaluator) if self.evaluator is not None else None}).data_section()
