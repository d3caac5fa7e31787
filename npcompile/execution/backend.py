"""Execution backends: where independent tasks run.

A :class:`Backend` maps a module-level function over independent items and returns the results
in item order, whatever order they finished in. Large read-only inputs (a masked model, shards of
the evaluation data) are *shared* once with :meth:`Backend.share`; items carry the small
:class:`Shared` handle and the task calls :meth:`Shared.resolve`, which a worker process does once
and then serves from its cache, so objects derived from it (an ONNX Runtime session) live as long
as the worker.

- :class:`InProcess`: runs the items here, one after the other (the default).
- :class:`~npcompile.execution.local.LocalProcesses`: ``--workers N`` processes on this machine.
- :class:`~npcompile.execution.ray_backend.RayBackend`: tasks on a Ray cluster (``--ray ADDRESS``).

Every backend retries the task of a worker that died (up to ``retries`` times), stops with an
:class:`ExecutionError` when no task finishes within ``timeout`` seconds (a lost cluster, a hung
worker), and cancels its remote work on Ctrl-C.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from npcompile.errors import OPT, OptionError, UserError

__all__ = ["Backend", "InProcess", "Shared", "ExecutionError", "TaskFailure", "cached", "DEFAULT_TIMEOUT"]

log = logging.getLogger(__name__)

R = TypeVar("R")

#: seconds without any finished task before a backend gives up (``--probe-timeout``)
DEFAULT_TIMEOUT = 600.0

_CACHE: OrderedDict[str, Any] = OrderedDict()
_CACHE_SIZE = 16
_KEYS = itertools.count()


class ExecutionError(UserError):
    """The execution environment failed: a lost cluster, a timeout, a worker that kept dying."""


@dataclass
class TaskFailure:
    """What :meth:`Backend.map` returns for an item whose task raised, with ``return_exceptions``."""

    error: BaseException

    def __str__(self) -> str:
        return f"{type(self.error).__name__}: {self.error}"


def cached(key: str, factory: Callable[[], Any]) -> Any:
    """The object cached in this process under ``key`` (made by ``factory`` on first use; the
    least recently used entries are dropped past a few)."""
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    value = factory()
    _CACHE[key] = value
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return value


class Shared:
    """A handle to an object shared with the workers once; :meth:`resolve` gives the object (in a
    worker: loaded on first use, then cached in that process)."""

    def __init__(self, key: str) -> None:
        self.key = key

    def resolve(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.key})"


class _InProcessShared(Shared):
    def __init__(self, key: str, obj: Any) -> None:
        super().__init__(key)
        self.obj = obj

    def resolve(self) -> Any:
        return self.obj


def new_key(prefix: str) -> str:
    """A key unique to this process and run (workers of several drivers never mix them up)."""
    return f"{prefix}-{os.getpid()}-{next(_KEYS)}-{os.urandom(4).hex()}"


class Backend:
    """Runs independent tasks. Subclasses set ``name`` and implement :meth:`map` (and
    :meth:`share` when workers are other processes)."""

    name = "in-process"

    def __init__(self, workers: int = 1, timeout: float = DEFAULT_TIMEOUT, retries: int = 2) -> None:
        if workers < 1:
            raise OptionError(f"{OPT:workers} must be >= 1, got {workers}")
        if not timeout > 0:
            raise OptionError(f"{OPT:probe_timeout} must be > 0 seconds, got {timeout}")
        if retries < 0:
            raise UserError(f"task retries must be >= 0, got {retries}")
        self.workers = workers
        self.timeout = float(timeout)
        self.retries = retries
        self.tasks = 0  # tasks run, for the report
        self.retried = 0  # tasks run again after their worker died

    @property
    def remote(self) -> bool:
        """Whether tasks run in other processes (objects must be shared, functions picklable)."""
        return False

    def worker_threads(self, threads: int) -> int:
        """ONNX Runtime intra-op threads for one worker: ``threads`` when the user gave it, else a
        share of this machine's cores."""
        return threads

    def share(self, obj: Any) -> Shared:
        """Make ``obj`` readable by the workers, once."""
        return _InProcessShared(new_key("obj"), obj)

    def map(self, fn: Callable[[Any], R], items: Sequence[Any], return_exceptions: bool = False) -> list[Any]:
        """``[fn(item) for item in items]``, in item order; ``fn`` is a module-level function. With
        ``return_exceptions``, a task that raised gives a :class:`TaskFailure` instead of stopping
        the others."""
        out: list[Any] = []
        for item in items:
            self.tasks += 1
            try:
                out.append(fn(item))
            except Exception as e:
                if not return_exceptions:
                    raise
                out.append(TaskFailure(e))
        return out

    def describe(self) -> dict[str, Any]:
        """For the report: which backend, how many workers, tasks run and retried."""
        return {"name": self.name, "workers": self.workers, "tasks": self.tasks, "retried": self.retried}

    def close(self) -> None:
        """Stop the workers and free what was shared."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class InProcess(Backend):
    """Every task in this process, one after the other."""

    name = "in-process"
