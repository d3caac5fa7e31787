"""Include/exclude name patterns: the one matcher behind every ``include``, ``exclude`` and
``--exclude``-like option.

Patterns are :mod:`fnmatch` globs, matched case-sensitively (:func:`fnmatch.fnmatchcase`), given
as a list or as one comma-separated string (:func:`name_patterns`). :func:`matches` says whether
any of several names (a group's name and its members, a layer and its weight tensor) matches
any pattern; :func:`first_match` gives the first pattern a name matches.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

__all__ = ["name_patterns", "matches", "first_match"]


def name_patterns(value: str | Sequence[str] | None) -> list[str]:
    """fnmatch patterns given as a list or a comma-separated string (include/exclude options)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [p.strip() for p in value.split(",") if p.strip()]
    return [str(p) for p in value]


def matches(names: Iterable[str | None], patterns: Iterable[str]) -> bool:
    """Whether any non-empty name of ``names`` matches any of ``patterns`` (case-sensitive)."""
    names = [n for n in names if n]
    return any(fnmatch.fnmatchcase(n, p) for p in patterns for n in names)


def first_match(name: str, patterns: Iterable[str]) -> str | None:
    """The first of ``patterns`` that ``name`` matches (``None``: none, or an empty name)."""
    if not name:
        return None
    return next((p for p in patterns if fnmatch.fnmatchcase(name, p)), None)
