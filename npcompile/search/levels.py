"""Removal levels and sensitivity: the helpers every evaluation-driven selection shares.

The selection passes (``binary-search``, ``sensitivity`` and ``budget`` in ``passes/search.py``,
``latency-budget`` in ``passes/latency.py``) use these to decide what a group may lose and what
that costs:

- :func:`removal_levels`: the allowed numbers of channels to remove per block (``round_to``,
  ``min_channels``, ``max_fraction``); :func:`lowest_mask`: the mask of the lowest-scored ones.
- :func:`search_groups`: the scored prunable groups, filtered by ``include`` / ``exclude``;
  :func:`ensure_scores`: L1 magnitude scores when no criterion ran.
- :func:`evaluator_for`: the masked-model evaluator of the groups on the context's execution
  backend, checked once against :func:`check_removal` (half of every group).
- :func:`sensitivity_table`: the metric of each group with fractions of it removed
  (``DEFAULT_FRACTIONS``); :func:`loss_curve`: a loss per level from such a table
  (:func:`table_losses`: from one group's row), :func:`score_losses` where no evaluator measures one.
- :class:`SearchOptions`: the options these passes share (the base of their ``Options``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any

import numpy as np

from npcompile.channels.analysis import Group
from npcompile.channels.masked import RemovalEvaluator
from npcompile.channels.select import lowest_per_block
from npcompile.execution.probes import probe_evaluator
from npcompile.graph.names import matches, name_patterns
from npcompile.importance.magnitude import group_magnitude
from npcompile.pipeline import Context, PassOptions, option
from npcompile.report.progress import enabled as progress_enabled
from npcompile.report.progress import progress

__all__ = ["DEFAULT_FRACTIONS", "SearchOptions", "removal_levels", "lowest_mask", "search_groups", "ensure_scores",
           "check_removal", "evaluator_for", "sensitivity_table", "loss_curve", "table_losses", "score_losses"]

log = logging.getLogger(__name__)

DEFAULT_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def _patterns(patterns: str | Sequence[str] | None) -> list[str] | None:
    return name_patterns(patterns) or None


@dataclass(frozen=True)
class SearchOptions(PassOptions):
    """The options the selection passes share, the base of their ``Options``: the groups searched
    (:func:`search_groups`: ``include`` / ``exclude`` name patterns), how widths move
    (:func:`removal_levels`: multiples of ``round_to``, never below ``min_channels``) and the
    evaluation's ``threads``. Keyword-only, so that each pass's own leading options (``tolerance``,
    ``target_latency``, ...) keep their places in its constructor; a pass's ``record_order`` keeps
    the order its report lists them in."""

    _: KW_ONLY
    round_to: int = 1
    min_channels: int = 1
    include: str | Sequence[str] | None = option(None, report=_patterns)
    exclude: str | Sequence[str] | None = option(None, report=_patterns)
    threads: int = option(0, record=False)


def removal_levels(group: Group, round_to: int = 1, min_channels: int = 1, max_fraction: float = 1.0) -> list[int]:
    """Allowed numbers of channels to remove *per block*, ascending, starting at 0: the kept width
    per block is the full width or a multiple of the per-block rounding, at least
    ``ceil(min_channels / blocks)`` and 1, and at most ``max_fraction`` of the width goes."""
    blocks = group.blocks
    size = group.size // blocks
    if group.kind == "heads":
        round_to = 1  # whole heads: rounding is for widths, not head counts
    unit = max(1, round_to // math.gcd(round_to, blocks))
    min_keep = max(1, math.ceil(min_channels / blocks))
    most = math.floor(max_fraction * size + 1e-9)
    keeps = [k for k in range(unit * ((size - 1) // unit), 0, -unit) if k >= min_keep and size - k <= most]
    return [0] + [size - k for k in keeps]


def lowest_mask(group: Group, scores: np.ndarray, per_block: int) -> np.ndarray:
    """Boolean mask of the ``per_block`` lowest-scored channels of each block (ties: lower index)."""
    return lowest_per_block(scores, group.blocks, per_block)


def _matches(group: Group, patterns: list[str]) -> bool:
    return matches([group.name, *group.members], patterns)


def search_groups(ctx: Context, include: Sequence[str] | None, exclude: Sequence[str] | None) -> list[Group]:
    """Prunable groups with scores, in topological order, filtered by fnmatch ``include`` /
    ``exclude`` patterns on the group name (or the name of any node producing it)."""
    inc, exc = name_patterns(include), name_patterns(exclude)
    out = []
    for g in ctx.analysis.prunable_groups():
        if g.id not in ctx.scores:
            continue
        if inc and not _matches(g, inc):
            continue
        if exc and _matches(g, exc):
            continue
        out.append(g)
    return out


def ensure_scores(ctx: Context) -> None:
    """Rank by L1 magnitude when no analysis pass scored the channels."""
    if ctx.scores:
        return
    ctx.scores = {g.id: group_magnitude(ctx.analysis, g, 1) for g in ctx.analysis.prunable_groups()}
    ctx.criterion = ctx.criterion or "magnitude-l1"
    log.info("no channel scores: ranking by L1 magnitude")


def check_removal(groups: list[Group], scores: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Half of every group (per block): what the masked model is checked against once."""
    out = {}
    for g in groups:
        half = (g.size // g.blocks) // 2
        if half:
            out[g.id] = lowest_mask(g, scores[g.id], half)
    return out


def evaluator_for(ctx: Context, evaluator: Any, groups: list[Group], threads: int,
                  check: bool) -> RemovalEvaluator:
    """Probes of ``groups`` on the context's execution backend (:mod:`npcompile.execution`)."""
    return probe_evaluator(ctx, evaluator, [g.id for g in groups], threads,
                           check_removal(groups, ctx.scores) if check else None)


def _fraction_counts(g: Group, fractions: Sequence[float], round_to: int, min_channels: int) -> list[tuple[float, int]]:
    """(fraction, channels removed per block) for each fraction: the largest allowed removal not
    above ``floor(fraction * width)`` (as ``--ratio`` rounds)."""
    levels = removal_levels(g, round_to, min_channels)
    size = g.size // g.blocks
    out = []
    for f in fractions:
        want = math.floor(f * size + 1e-9)
        out.append((float(f), max(c for c in levels if c <= want)))
    return out


def sensitivity_table(ctx: Context, ev: RemovalEvaluator, groups: list[Group], fractions: Sequence[float],
                      round_to: int, min_channels: int, baseline: float) -> list[dict[str, Any]]:
    """Per group, the metric with each fraction of its lowest-ranked channels removed (others intact)."""
    levels = {g.id: _fraction_counts(g, fractions, round_to, min_channels) for g in groups}
    wanted = list(dict.fromkeys((g.id, c) for g in groups for _, c in levels[g.id] if c))
    by_id = {g.id: g for g in groups}
    # every group's sweep is independent: all probes at once (on the backend's workers)
    probes = [{gid: lowest_mask(by_id[gid], ctx.scores[gid], c)} for gid, c in wanted]
    if progress_enabled():  # in chunks of the backend's width, so that the bar moves
        step = max(1, int(getattr(ev, "width", 1)))
        metrics = []
        with progress("sensitivity", total=len(probes)) as tick:
            for i in range(0, len(probes), step):
                metrics += ev.many(probes[i:i + step])
                tick(len(probes[i:i + step]))
    else:
        metrics = ev.many(probes)
    measured = dict(zip(wanted, metrics, strict=True))
    table = []
    for g in groups:
        points = []
        for f, per_block in levels[g.id]:
            metric = measured[(g.id, per_block)] if per_block else baseline
            points.append({"fraction": f, "removed": per_block * g.blocks, "metric": metric})
        table.append({"group": g.name, "group_id": g.id, "width": g.size, "points": points})
        log.debug("sensitivity %s: %s", g.name, [(p["removed"], round(p["metric"], 4)) for p in points])
    return table


def loss_curve(levels: list[int], blocks: int, points: list[tuple[int, float]]) -> list[float]:
    """Metric loss at each level (per-block count), linear between measured points (total counts)
    and made non-decreasing; levels past the last measured point are left out."""
    pts = sorted({0: 0.0, **dict(points)}.items())
    xs = np.array([p[0] for p in pts], float)
    ys = np.maximum.accumulate(np.maximum(np.array([p[1] for p in pts], float), 0.0))
    out = []
    for c in levels:
        total = c * blocks
        if total > xs[-1] + 1e-9:
            break
        out.append(float(np.interp(total, xs, ys)))
    return out


def table_losses(levels: list[int], blocks: int, row: dict[str, Any], baseline: float) -> list[float]:
    """:func:`loss_curve` of one group's row of a :func:`sensitivity_table`: the metric lost
    (``baseline - metric``) at each of its measured points."""
    return loss_curve(levels, blocks, [(p["removed"], baseline - p["metric"]) for p in row["points"]])


def score_losses(group: Group, scores: np.ndarray, levels: list[int]) -> list[float]:
    """The loss at each level (per-block count) where no evaluator measures one: the share (%) of
    the group's score mass that the lowest-scored channels of each block hold."""
    s = np.sort(np.asarray(scores, float).reshape(group.blocks, -1), axis=1)
    total = max(float(s.sum()), 1e-30)
    cum = np.concatenate([[0.0], np.cumsum(s.sum(axis=0))]) / total * 100.0
    return [float(cum[c]) for c in levels]
