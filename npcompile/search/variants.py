"""How the per-layer binary search spends its tolerance.

The paper's search (Zhang, Qin, Chan 2017) visits the groups in topological order, each against
the same floor ``baseline - tolerance``: the first groups it visits may spend the whole tolerance,
and the later ones (often holding most parameters) get none. The variants here keep the binary
search of one group exactly as it is (:func:`npcompile.execution.bisect.search_levels`, from the
group's current width upwards) and change only the *schedule*: the order of the visits and the
floor each visit is searched against.

- ``paper``: topological order, one visit per group, floor ``baseline - tolerance``.
- ``sensitivity``: one visit per group, least sensitive per unit of cost first (sensitivity: the
  metric lost with half of the group removed alone, one evaluation per group), floor
  ``baseline - tolerance``.
- ``share``: topological order; group ``i`` may bring the metric down to
  ``baseline - tolerance * (w_1 + ... + w_i)``, where ``w`` is the group's share of the cost it
  can remove (parameters and FLOPs, equally weighted, see :func:`cost_weights`): every group gets
  a share of the tolerance in proportion to what it can save, and a share left unused rolls over.
- ``rounds``: ``rounds`` sweeps over the groups in topological order; sweep ``r`` is re-based on the
  metric reached before it and may lose ``tolerance / rounds`` more (never below
  ``baseline - tolerance``): the first layers cannot take everything in the first sweep.
- ``share-global``: ``share``, then a final global sweep in which every group, in topological
  order, may go down to ``baseline - tolerance`` (spending what the shares left).

In every variant each accepted step keeps the metric at or above ``baseline - tolerance`` on the
evaluation data, and floors never rise from one visit to the next, so the state before a visit
is acceptable to it (level 0 of its search). A visit of a group with ``n`` levels left costs at most
``ceil(log2(n))`` evaluations; a variant costs at most ``visits_per_group * sum(ceil(log2(n_g)))``
plus the baseline (plus one per group for ``sensitivity``). :func:`eval_bound` gives that bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from npcompile.errors import UserError

__all__ = ["SearchVariant", "VARIANTS", "Visit", "get_variant", "visits", "cost_weights", "eval_bound",
           "DEFAULT_ROUNDS"]

#: sweeps of the ``rounds`` variant
DEFAULT_ROUNDS = 3


@dataclass(frozen=True)
class SearchVariant:
    """A schedule: ``order`` (``topological`` or ``sensitivity``), ``share`` (floors by cost share),
    ``rounds`` (re-based sweeps) and ``final`` (a last sweep down to the global floor)."""

    name: str
    order: str = "topological"
    share: bool = False
    rounds: int = 1
    final: bool = False
    description: str = ""

    @property
    def sweeps(self) -> int:
        """How many times each group is visited."""
        return self.rounds + (1 if self.final else 0)


VARIANTS: dict[str, SearchVariant] = {v.name: v for v in (
    SearchVariant("paper", description="topological order, the whole tolerance for every group (Zhang et al.)"),
    SearchVariant("sensitivity", order="sensitivity",
                  description="least sensitive groups per unit of cost first, the whole tolerance"),
    SearchVariant("share", share=True, description="topological order, each group a share of the tolerance by cost"),
    SearchVariant("rounds", rounds=DEFAULT_ROUNDS,
                  description=f"{DEFAULT_ROUNDS} sweeps, each re-based and allowed tolerance/{DEFAULT_ROUNDS}"),
    SearchVariant("share-global", share=True, final=True,
                  description="share, then a final sweep down to baseline - tolerance"),
)}


def get_variant(name: str) -> SearchVariant:
    """The variant called ``name`` (a one-line error naming the choices otherwise)."""
    if name not in VARIANTS:
        raise UserError(f"unknown search variant {name!r}; choose one of {', '.join(VARIANTS)}")
    return VARIANTS[name]


@dataclass(frozen=True)
class Visit:
    """One binary search: ``group`` (an id) against ``floor``; ``sweep`` counts from 1."""

    group: int
    floor: float
    sweep: int


def cost_weights(savings: Mapping[int, tuple[float, float]], base: tuple[float, float]) -> dict[int, float]:
    """Each group's share (summing to 1) of what the groups can save: ``savings[g]`` is the
    (parameters, FLOPs) removing the most the group may lose saves, ``base`` the model's; the two
    count equally. Equal shares when nothing can be saved."""
    raw = {g: sum(s / b for s, b in zip(sv, base, strict=True) if b > 0) for g, sv in savings.items()}
    total = sum(raw.values())
    if total <= 0:
        return {g: 1.0 / len(savings) for g in savings} if savings else {}
    return {g: r / total for g, r in raw.items()}


def visits(variant: SearchVariant, groups: Sequence[int], baseline: float, tolerance: float,
           current: Callable[[], float], weights: Mapping[int, float] | None = None,
           sensitivity: Mapping[int, float] | None = None) -> Iterator[Visit]:
    """The visits of ``variant`` over ``groups`` (topological order), lazily: ``current()`` is the
    metric of the state reached so far (the ``rounds`` variant re-bases on it). ``weights`` (cost
    shares) are needed by ``share`` and the sensitivity order; ``sensitivity`` (metric lost per
    group at half its width) by the sensitivity order."""
    floor = baseline - tolerance
    slack = 1e-9 * max(1.0, abs(baseline))
    order = list(groups)
    if variant.order == "sensitivity":
        if sensitivity is None or weights is None:
            raise ValueError("the sensitivity order needs the sensitivity and the weights of every group")
        pos = {g: i for i, g in enumerate(order)}
        # loss per unit of cost share; ties (e.g. no loss): the bigger saving, then topological order
        order.sort(key=lambda g: (max(sensitivity[g], 0.0) / max(weights[g], 1e-12), -weights[g], pos[g]))
    if variant.share and weights is None:
        raise ValueError("the share variant needs the cost weights of every group")
    for r in range(1, variant.rounds + 1):
        start = current()
        used = 0.0
        for g in order:
            if variant.share:
                used += weights[g]  # type: ignore[index]
                allowed = tolerance * (r - 1 + min(used, 1.0)) / variant.rounds
                f = baseline - allowed
            elif variant.rounds > 1:
                f = max(start - tolerance / variant.rounds, floor)
            else:
                f = floor
            yield Visit(g, max(f, floor) - slack, r)
    if variant.final:
        for g in groups:
            yield Visit(g, floor - slack, variant.rounds + 1)


def eval_bound(variant: SearchVariant, level_counts: Sequence[int]) -> int:
    """Most evaluations the variant makes over groups with these numbers of levels (level 0
    included): the baseline, one per group for the sensitivity order, and ``ceil(log2(n))`` per
    visit of a group with ``n`` levels."""
    per_sweep = sum(math.ceil(math.log2(n)) for n in level_counts if n > 1)
    extra = len(level_counts) if variant.order == "sensitivity" else 0
    return 1 + extra + variant.sweeps * per_sweep
