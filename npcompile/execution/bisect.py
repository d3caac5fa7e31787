"""A binary search that probes ``width`` levels per round and still decides exactly as the
sequential one.

The levels ``0 .. n-1`` of a group are ordered (more channels removed at higher levels) and level
0 is taken as acceptable. The sequential search probes the midpoint ``(lo + hi + 1) // 2`` and
moves ``lo`` up (accepted) or ``hi`` down (rejected). Each round here evaluates, at once, the next
``width`` nodes of that decision tree in breadth-first order (the midpoint, then both midpoints it
may lead to, ...), then follows the sequential path through every result it has. The chosen level
and the path are therefore those of the sequential search for every ``width`` (whether or not the
metric is monotone), in about ``log2(n) / log2(width + 1)`` rounds; the probes off the path are the
price. A rejected level below an accepted one among all the probes marks the metric non-monotone
(reported; the decision is still the sequential one).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["LevelSearch", "search_levels", "round_levels"]


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


def round_levels(lo: int, hi: int, width: int, known: Sequence[int] = ()) -> list[int]:
    """The levels one round probes from the state ``(lo, hi)``: the first ``width`` not yet known
    nodes of the sequential decision tree, breadth first (the rejecting branch first)."""
    out: list[int] = []
    seen = set(known)
    queue = deque([(lo, hi)])
    while queue and len(out) < width:
        a, b = queue.popleft()
        if a >= b:
            continue
        mid = (a + b + 1) // 2
        if mid not in seen:
            out.append(mid)
            seen.add(mid)
        queue.append((a, mid - 1))
        queue.append((mid, b))
    return out


def search_levels(n: int, evaluate: Callable[[Sequence[int]], Sequence[float]], accept: Callable[[float], bool],
                  width: int = 1) -> LevelSearch:
    """Search levels ``0 .. n-1``; ``evaluate(levels)`` gives their metrics (independent probes)."""
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    out = LevelSearch()
    known: dict[int, tuple[float, bool]] = {}
    order: list[int] = []
    path: set[int] = set()
    lo, hi = 0, n - 1
    while lo < hi:
        levels = round_levels(lo, hi, width, list(known))
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
            if ok:
                lo, out.metric = mid, m
            else:
                hi = mid - 1
    out.level = lo
    out.probes = [(lv, known[lv][0], known[lv][1], lv in path) for lv in order]
    accepted = [lv for lv, (_, ok) in known.items() if ok]
    out.monotone = not any(not ok and lv < max(accepted) for lv, (_, ok) in known.items()) if accepted else True
    return out
