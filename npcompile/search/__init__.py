"""Evaluation-driven selection, the library side of ``passes/search.py`` and ``passes/latency.py``.

- :mod:`npcompile.search.variants`: schedules of the per-layer binary search (which group is
  searched when, against which floor); re-exported here.
- :mod:`npcompile.search.levels`: removal levels, lowest-score masks, group filters, the
  sensitivity table and loss curves (import it from the module: it needs the pipeline and the
  execution backends, which this package does not load).
"""

from npcompile.search.variants import VARIANTS, SearchVariant, Visit, cost_weights, get_variant, visits

__all__ = ["VARIANTS", "SearchVariant", "Visit", "cost_weights", "get_variant", "visits"]
