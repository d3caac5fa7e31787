"""A binary search that probes ``width`` levels per round and still decides exactly as the
sequential one.

The levels ``0 .. n-1`` of a group are ordered (more channels removed at higher levels) and level
0 is taken as acceptable. The sequential search probes the midpoint ``(lo + hi + 1) // 2`` and
moves ``lo`` up (accepted) or ``hi`` down (rejected). Each round here evaluates, at once, the
``width`` not yet known nodes of that decision tree that are most likely to lie on the sequential
path, then follows the path through every result it has. A node's likelihood is the product of
the branch probabilities from the current midpoint to it, with the probability of acceptance
estimated from the decisions made so far (:class:`AcceptRate`, which a caller may carry from one
group to the next). With no evidence both branches are equally likely and a round probes the
tree breadth first (``log2(width + 1)`` levels per round); a search that mostly accepts (or
mostly rejects) follows its likely path deeper, up to ``width`` levels per round.

The chosen level and the path are those of the sequential search for every ``width`` and every
estimate (whether or not the metric is monotone): the estimate only decides which extra probes are
spent. Which probes are spent depends only on the decisions on the path, so the rounds a search
takes with ``width`` workers can be computed from the sequential search's outcome
(:func:`rounds_for`). A rejected level below an accepted one among all the probes marks the metric
non-monotone (reported; the decision is still the sequential one).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["AcceptRate", "LevelSearch", "search_levels", "round_levels", "rounds_for"]


@dataclass
class AcceptRate:
    """The estimated probability that a probe on the path is accepted: Laplace's rule over the
    path decisions seen (``accepted + 1) / (decisions + 2)``, 0.5 with none)."""

    accepted: int = 0
    rejected: int = 0

    @property
    def p(self) -> float:
        return (self.accepted + 1) / (self.accepted + self.rejected + 2)

    def update(self, ok: bool) -> None:
        if ok:
            self.accepted += 1
        else:
            self.rejected += 1


@dataclass
class LevelSearch:
    """The outcome: the level chosen, its metric (``None`` for level 0), every probe as
    ``(level, metric, accepted, on_path)`` in evaluation order, the rounds, and whether acceptance
    looked monotone in the probes made."""

    level: int = 0
    metric: float | None = None
    probes: list[tuple[int, float, bool, bool]] = field(default_factory=list)
    rounds: int = 0
    monotone: bool = True


def round_levels(lo: int, hi: int, width: int, known: Iterable[int] = (), p_accept: float = 0.5) -> list[int]:
    """The levels one round probes from the state ``(lo, hi)``: the ``width`` not yet known nodes
    of the sequential decision tree most likely to be on its path, when a probe is accepted with
    probability ``p_accept`` (ties: shallower first, then the rejecting branch)."""
    if not 0.0 <= p_accept <= 1.0:
        raise ValueError(f"p_accept must be in [0, 1], got {p_accept}")
    out: list[int] = []
    seen = set(known)
    tie = 0
    heap: list[tuple[float, int, int, int]] = [(-1.0, tie, lo, hi)]
    while heap and len(out) < width:
        neg, _, a, b = heapq.heappop(heap)
        if a >= b:
            continue
        mid = (a + b + 1) // 2
        if mid not in seen:
            out.append(mid)
            seen.add(mid)
        prob = -neg
        for child, q in (((a, mid - 1), 1.0 - p_accept), ((mid, b), p_accept)):
            tie += 1
            if q > 0.0 and child[0] < child[1]:
                heapq.heappush(heap, (-prob * q, tie, *child))
    return out


def search_levels(n: int, evaluate: Callable[[Sequence[int]], Sequence[float]], accept: Callable[[float], bool],
                  width: int = 1, rate: AcceptRate | None = None) -> LevelSearch:
    """Search levels ``0 .. n-1``; ``evaluate(levels)`` gives their metrics (independent probes).

    ``rate`` (updated in place with this search's path decisions) steers which extra levels a
    round probes; pass the same object to the searches of several groups to share the evidence."""
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    rate = rate if rate is not None else AcceptRate()
    out = LevelSearch()
    known: dict[int, tuple[float, bool]] = {}
    order: list[int] = []
    path: set[int] = set()
    lo, hi = 0, n - 1
    while lo < hi:
        levels = round_levels(lo, hi, width, known, rate.p)
        metrics = [float(m) for m in evaluate(levels)]
        out.rounds += 1
        for level, m in zip(levels, metrics, strict=True):
            known[level] = (m, accept(m))
            order.append(level)
        while lo < hi:  # follow the sequential path as far as the results go
            mid = (lo + hi + 1) // 2
            if mid not in known:
                break
            path.add(mid)
            m, ok = known[mid]
            rate.update(ok)
            if ok:
                lo, out.metric = mid, m
            else:
                hi = mid - 1
    out.level = lo
    out.probes = [(lv, known[lv][0], known[lv][1], lv in path) for lv in order]
    accepted = [lv for lv, (_, ok) in known.items() if ok]
    out.monotone = not any(not ok and lv < max(accepted) for lv, (_, ok) in known.items()) if accepted else True
    return out


def rounds_for(levels: Sequence[tuple[int, int]], width: int) -> tuple[int, int]:
    """``(rounds, probes)`` that searches of groups with ``(n, chosen level)`` each take with
    ``width`` probes per round, in this order with one shared :class:`AcceptRate` — the same as a
    real search whose sequential outcome those levels are (only the path steers the probes)."""
    rate = AcceptRate()
    rounds = probes = 0
    for n, chosen in levels:
        found = search_levels(n, lambda ls, c=chosen: [1.0 if lv <= c else 0.0 for lv in ls], lambda m: m > 0.5,
                              width, rate)
        rounds += found.rounds
        probes += len(found.probes)
    return rounds, probes
