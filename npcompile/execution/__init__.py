"""Where probes and compilations run: in this process, in local worker processes or on Ray.

:func:`make_backend` picks the backend the options ask for (``--workers N``, ``--ray ADDRESS``);
:func:`backend_of` is the one a pipeline context carries (in-process when none was set). Results
never depend on the backend: see :mod:`npcompile.execution.probes`.
"""

from __future__ import annotations

from typing import Any

from npcompile.errors import OPT, OptionError
from npcompile.execution.backend import DEFAULT_TIMEOUT, Backend, ExecutionError, InProcess, Shared, TaskFailure

__all__ = ["Backend", "InProcess", "Shared", "ExecutionError", "TaskFailure", "make_backend", "backend_of",
           "check_options", "DEFAULT_TIMEOUT"]


def check_options(workers: int, ray: str | None, timeout: float) -> None:
    """Validate ``--workers``/``--ray``/``--probe-timeout`` without starting anything (Ray must be
    importable when ``--ray`` is given: the error names the install command)."""
    if workers < 0:
        raise OptionError(f"{OPT:workers} must be >= 0, got {workers}")
    if not timeout > 0:
        raise OptionError(f"{OPT:probe_timeout} must be > 0 seconds, got {timeout}")
    if ray is not None:
        if not ray.strip():
            raise OptionError(f"{OPT:ray} needs an address (host:port, ray://host:port) or auto")
        from npcompile.execution.ray_backend import require_ray

        require_ray()


def make_backend(workers: int = 0, ray: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> Backend:
    """``--ray`` → :class:`~npcompile.execution.ray_backend.RayBackend` (``workers``: tasks planned
    at once, default the cluster's CPUs); ``workers > 1`` → local processes; else in-process."""
    check_options(workers, ray, timeout)
    if ray is not None:
        from npcompile.execution.ray_backend import RayBackend

        return RayBackend(ray, workers or None, timeout)
    if workers > 1:
        from npcompile.execution.local import LocalProcesses

        return LocalProcesses(workers, timeout)
    return InProcess(1, timeout)


def backend_of(ctx: Any) -> Backend:
    """The backend of a pipeline context (in-process when it has none)."""
    backend = getattr(ctx, "backend", None)
    return backend if backend is not None else InProcess()
