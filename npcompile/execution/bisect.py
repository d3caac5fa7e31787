"""A binary search that probes ``width`` levels per round (a (width+1)-ary search).

The levels ``0 .. n-1`` of a group are ordered (more channels removed at higher levels) and level
0 is taken as acceptable. Each round evaluates up to ``width`` levels spread evenly over the open
interval at once; with ``width == 1`` the probes are exactly those of the classic binary search
(the midpoint ``(lo + hi + 1) // 2``). Where acceptance is monotone in the level (every level
below an acceptable one is acceptable) the result is the same for every width, in
``log_{width+1}(n)`` rounds instead of ``log_2(n)``. A round that sees a rejected level below an
accepted one marks the search non-monotone; it then keeps the acceptable prefix (the highest
level with no rejection below it in that round).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["LevelSearch", "search_levels", "round_levels"]


@dataclass
class LevelSearch:
    """The outcome: the level chosen, its metric (``None`` for level 0), every probe as
    ``(level, metric, accepted)`` in evaluation order, the rounds, and whether acceptance looked
    monotone."""

    level: int = 0
    metric: float | None = None
    probes: list[tuple[int, float, bool]] = field(default_factory=list)
    rounds: int = 0
    monotone: bool = True


def round_levels(lo: int, hi: int, width: int) -> list[int]:
    """The levels one round probes in ``(lo, hi]``: ``lo + ceil(j (hi - lo) / (width + 1))``."""
    n = hi - lo
    return sorted({lo + -(-j * n // (width + 1)) for j in range(1, width + 1)})


def search_levels(n: int, evaluate: Callable[[Sequence[int]], Sequence[float]], accept: Callable[[float], bool],
                  width: int = 1) -> LevelSearch:
    """Search levels ``0 .. n-1``; ``evaluate(levels)`` gives their metrics (independent probes)."""
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    out = LevelSearch()
    lo, hi = 0, n - 1
    while lo < hi:
        levels = round_levels(lo, hi, width)
        metrics = [float(m) for m in evaluate(levels)]
        oks = [accept(m) for m in metrics]
        out.rounds += 1
        out.probes += list(zip(levels, metrics, oks, strict=True))
        prefix = next((i for i, ok in enumerate(oks) if not ok), len(oks))
        if any(oks[prefix:]):
            out.monotone = False
        if prefix:
            lo, out.metric = levels[prefix - 1], metrics[prefix - 1]
        if prefix < len(levels):
            hi = levels[prefix] - 1
    out.level = lo
    return out
