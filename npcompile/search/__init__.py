"""Schedules of the per-layer binary search: which group is searched when, against which floor."""

from npcompile.search.variants import VARIANTS, SearchVariant, Visit, cost_weights, get_variant, visits

__all__ = ["VARIANTS", "SearchVariant", "Visit", "cost_weights", "get_variant", "visits"]
