"""``--workers N``: tasks in N local processes.

The processes are started once (``spawn``: a clean interpreter, safe next to ONNX Runtime's
threads) and kept for the backend's lifetime, so what a worker caches (sessions of the masked
model, shards of the data) serves all its later tasks. Shared objects are pickled once into a
private folder; a task carries only the file's key. A worker that dies breaks the pool: a new pool
is started and the tasks that had not finished are submitted again (at most ``retries`` times).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from npcompile.errors import OPT
from npcompile.execution.backend import DEFAULT_TIMEOUT, Backend, ExecutionError, Shared, TaskFailure, cached, new_key

__all__ = ["LocalProcesses"]

log = logging.getLogger(__name__)


class _FileShared(Shared):
    def __init__(self, key: str, path: str) -> None:
        super().__init__(key)
        self.path = path

    def resolve(self) -> Any:
        def load() -> Any:
            with open(self.path, "rb") as f:
                return pickle.load(f)

        return cached(self.key, load)


def _call(fn: Callable[[Any], Any], item: Any) -> Any:
    return fn(item)


class LocalProcesses(Backend):
    """``workers`` processes on this machine."""

    name = "local"

    def __init__(self, workers: int, timeout: float = DEFAULT_TIMEOUT, retries: int = 2) -> None:
        super().__init__(workers, timeout, retries)
        self._pool: ProcessPoolExecutor | None = None
        self._dir: Path | None = None

    @property
    def remote(self) -> bool:
        return True

    def worker_threads(self, threads: int) -> int:
        return threads or max(1, (os.cpu_count() or 1) // self.workers)

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def _kill(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        for p in list(getattr(pool, "_processes", {}).values()):
            if p.is_alive():
                p.kill()
        pool.shutdown(wait=False, cancel_futures=True)

    def share(self, obj: Any) -> Shared:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="npcompile-shared-"))
        key = new_key("obj")
        path = self._dir / f"{key}.pkl"
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
        return _FileShared(key, str(path))

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], return_exceptions: bool = False) -> list[Any]:
        results: dict[int, Any] = {}
        todo = list(range(len(items)))
        attempts = 0
        try:
            while todo:
                pool = self._executor()
                futures: dict[Future, int] = {pool.submit(_call, fn, items[i]): i for i in todo}
                self.tasks += len(todo)
                broken = self._collect(futures, results, return_exceptions)
                todo = [i for i in todo if i not in results]
                if not broken:
                    break
                attempts += 1
                self._kill()
                if attempts > self.retries:
                    raise ExecutionError(f"a local worker died {attempts} times running these tasks "
                                         f"({len(todo)} of {len(items)} unfinished); giving up (from a Python "
                                         "script, keep the call under `if __name__ == \"__main__\":`, as "
                                         "worker processes re-import it)")
                log.warning("a local worker died: running %d unfinished task(s) again (retry %d of %d)",
                            len(todo), attempts, self.retries)
                self.retried += len(todo)
        except KeyboardInterrupt:
            self._kill()
            raise
        return [results[i] for i in range(len(items))]

    def _collect(self, futures: dict[Future, int], results: dict[int, Any], return_exceptions: bool) -> bool:
        """Wait for ``futures``; True when the pool broke (a worker died) before all finished."""
        pending = set(futures)
        broken = False
        while pending:
            done, pending = wait(pending, timeout=self.timeout, return_when=FIRST_COMPLETED)
            if not done:
                self._kill()
                raise ExecutionError(f"no local worker finished a task within {self.timeout:g} s "
                                     f"({OPT:probe_timeout}); stopped them")
            for fut in done:
                try:
                    results[futures[fut]] = fut.result()
                except BrokenProcessPool:
                    broken = True
                except Exception as e:
                    if not return_exceptions:
                        self._kill()
                        raise
                    results[futures[fut]] = TaskFailure(e)
        return broken

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
