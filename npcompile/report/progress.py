"""Progress of the long phases (search, sensitivity, budgets, reconstruction, latency measurement,
calibration, fine-tuning), drawn on an interactive terminal only.

One rule for all of them: a bar appears on stderr when stderr is a terminal, npcompile's log level
lets warnings through (``--quiet`` sets it to errors) and ``NPCOMPILE_PROGRESS`` is not ``0``;
``NPCOMPILE_PROGRESS=1`` draws it even when stderr is not a terminal. CI logs (no terminal) stay
quiet. The bars are transient: nothing is left behind once a phase ends.

Usage::

    with progress("binary search", total=len(groups)) as tick:
        for g in groups:
            ...
            tick(1, g.name)
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator

__all__ = ["progress", "enabled", "Tick"]

#: advance the bar by ``n`` steps, optionally naming what is being worked on
Tick = Callable[..., None]


def enabled() -> bool:
    """Whether progress bars are drawn now (see the module docstring)."""
    env = os.environ.get("NPCOMPILE_PROGRESS", "")
    if env == "0":
        return False
    if logging.getLogger("npcompile").getEffectiveLevel() > logging.WARNING:
        return False
    return env == "1" or sys.stderr.isatty()


def _noop(n: int = 1, what: str | None = None) -> None:  # noqa: ARG001
    return None


@contextlib.contextmanager
def progress(label: str, total: int | None = None) -> Iterator[Tick]:
    """A transient bar titled ``label`` for ``total`` steps (``None``: unknown, a counter); yields
    ``tick(n=1, what=None)``. Does nothing, and costs nothing, when :func:`enabled` is false."""
    if not enabled():
        yield _noop
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn(f"{label} " + "{task.fields[what]}"), BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn(), console=Console(stderr=True, force_terminal=True), transient=True)
    task = bar.add_task(label, total=total, what="")

    def tick(n: int = 1, what: str | None = None) -> None:
        bar.update(task, advance=n, **({"what": what} if what is not None else {}))

    with bar:
        yield tick
