"""``--ray ADDRESS``: tasks on a Ray cluster (``auto``: ``ray.init()``'s defaults).

Ray is an optional extra (``pip install 'npcompile[ray]'``), imported only here. Shared objects go
into Ray's object store once (``ray.put``); a task carries the handle (the object reference nested
in it, so Ray does not fetch it for every task) and a worker fetches it on its first task and keeps
it in its process cache. Tasks are Ray tasks with ``max_retries``: a worker that dies has its task
run again elsewhere. A cluster that stops answering ends in an :class:`ExecutionError` after
``timeout`` seconds without progress; Ctrl-C cancels the pending tasks (``ray.cancel(force=True)``).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any

from npcompile.errors import OPT, OptionError
from npcompile.execution.backend import DEFAULT_TIMEOUT, Backend, ExecutionError, Shared, TaskFailure, cached, new_key

__all__ = ["RayBackend", "INSTALL_HINT", "require_ray"]

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'npcompile[ray]'"

#: seconds to wait for ``ray.init`` to connect (a connection is not a probe: ``--probe-timeout`` does not apply)
CONNECT_TIMEOUT = 60.0


def require_ray() -> Any:
    """The ``ray`` module, or a :class:`UserError` naming the install command."""
    try:
        import ray
    except ImportError:
        raise OptionError(f"{OPT:ray} needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


class _RayShared(Shared):
    def __init__(self, key: str, ref: Any) -> None:
        super().__init__(key)
        self.refs = [ref]  # nested in a list: Ray passes the reference, not the object, to tasks

    def resolve(self) -> Any:
        import ray

        return cached(self.key, lambda: ray.get(self.refs[0]))


def _reachable(address: str, timeout: float) -> str | None:
    """Why ``host:port`` cannot be reached over TCP (``None`` when it can, or is no such address)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return None
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=min(timeout, 5.0)):
            return None
    except OSError as e:
        return f"nothing answers at {host}:{port} ({e.strerror or e})"


def _connect(ray: Any, address: str, timeout: float) -> None:
    """``ray.init`` for ``address``, or an :class:`ExecutionError` within ``timeout`` seconds: Ray
    itself keeps retrying an address where no cluster answers (or one whose token does not match),
    so the call runs in a helper thread that is given up on when it takes too long."""
    why = _reachable(address, timeout) if address != "auto" else None
    if why is not None:
        raise ExecutionError(f"cannot connect to the Ray cluster at {address}: {why}")
    box: dict[str, BaseException | bool] = {}

    def init() -> None:
        try:
            kwargs: dict[str, Any] = {} if address == "auto" else {"address": address}
            ray.init(logging_level=logging.ERROR, log_to_driver=False, **kwargs)
            box["ok"] = True
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    thread = threading.Thread(target=init, name="npcompile-ray-init", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise ExecutionError(f"the Ray cluster at {address} did not accept a connection within {timeout:g} s "
                             "(is it up, and does its authentication match?)")
    if "error" in box:
        msg = " ".join(str(box["error"]).split())[:300]
        raise ExecutionError(f"cannot connect to the Ray cluster at {address}: {msg}") from None


def _call(fn: Callable[[Any], Any], item: Any) -> Any:
    return fn(item)


class RayBackend(Backend):
    """Tasks on the Ray cluster at ``address`` (``auto``: ``ray.init()`` with its defaults; an
    already initialised Ray is used as it is). ``workers`` (default: the cluster's CPUs) is how
    many tasks the search plans to run at once."""

    name = "ray"

    def __init__(self, address: str = "auto", workers: int | None = None, timeout: float = DEFAULT_TIMEOUT,
                 retries: int = 2) -> None:
        ray = require_ray()
        self._owned = False
        if not ray.is_initialized():
            _connect(ray, address, CONNECT_TIMEOUT)
            self._owned = True
        self.address = address
        cpus = int(ray.cluster_resources().get("CPU", 1) or 1)
        super().__init__(workers or max(1, cpus), timeout, retries)
        self._task = ray.remote(num_cpus=1, max_retries=retries, retry_exceptions=False)(_call)
        self._refs: list[Any] = []

    @property
    def remote(self) -> bool:
        return True

    def worker_threads(self, threads: int) -> int:
        return threads or 1  # a Ray task holds one CPU

    def share(self, obj: Any) -> Shared:
        import ray

        ref = ray.put(obj)
        self._refs.append(ref)  # keeps the object alive in the store while the backend lives
        return _RayShared(new_key("obj"), ref)

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], return_exceptions: bool = False) -> list[Any]:
        import ray
        from ray.exceptions import RayTaskError, WorkerCrashedError

        refs = [self._task.remote(fn, item) for item in items]
        self.tasks += len(refs)
        index = {r: i for i, r in enumerate(refs)}
        results: dict[int, Any] = {}
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=self.timeout)
                if not done:
                    self._cancel(pending)
                    raise ExecutionError(f"the Ray cluster at {self.address} finished no task within "
                                         f"{self.timeout:g} s ({OPT:probe_timeout}): is it still up?")
                for ref in done:
                    i = index[ref]
                    try:
                        results[i] = ray.get(ref)
                    except RayTaskError as e:
                        cause = e.cause if isinstance(getattr(e, "cause", None), BaseException) else e
                        if not return_exceptions:
                            self._cancel(pending)
                            raise cause from None
                        results[i] = TaskFailure(cause)
                    except WorkerCrashedError as e:
                        err = ExecutionError(f"a Ray worker died {self.retries + 1} times running a task; giving up")
                        if not return_exceptions:
                            self._cancel(pending)
                            raise err from e
                        results[i] = TaskFailure(err)
        except KeyboardInterrupt:
            self._cancel(pending)
            raise
        return [results[i] for i in range(len(items))]

    def _cancel(self, refs: list[Any]) -> None:
        import ray

        for ref in refs:
            with contextlib.suppress(Exception):  # already finished or the cluster is gone
                ray.cancel(ref, force=True)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "address": self.address}

    def close(self) -> None:
        self._refs.clear()
        if self._owned:
            import ray

            ray.shutdown()
            self._owned = False
