"""Where a study's tasks run: in this process, in local worker processes, or on a Dask cluster.

Every executor has one method that matters, :meth:`Executor.unordered` (``fn`` over ``args``,
results in the order they finish) and :meth:`close`. Results always come back to the calling
process, the one writer of the results store.

- ``local``: ``workers == 1`` runs the tasks here, one after the other; more start that many
  worker processes (``spawn``: a clean interpreter each, safe with torch's thread pools).
- ``dask``: a ``dask.distributed.LocalCluster`` of ``workers`` single-threaded worker processes,
  or, with ``address``, an existing cluster (``dask scheduler`` and ``dask worker`` processes on
  any machines that have this package and the Omniglot data installed).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Iterator

from batmann.errors import ConfigError
from batmann.utils.allocator import retain_freed_memory

EXECUTORS = ("local", "dask")


def default_workers() -> int:
    """The cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class Executor:
    name = "executor"
    workers = 1

    def unordered(self, fn: Callable, args: Iterable[Any]) -> Iterator[Any]:
        raise NotImplementedError

    def close(self, abort: bool = False) -> None:
        """Release the workers; ``abort`` (after an error or Ctrl-C) stops running tasks too."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(abort=exc_type is not None)


class InlineExecutor(Executor):
    """The tasks run in this process, one after the other."""

    name = "local"

    def unordered(self, fn, args):
        for a in args:
            yield fn(a)


#: seconds between a worker's checks that the process that started it is alive
PARENT_POLL_S = 0.5


def _exit_with_parent(parent: int) -> None:
    """In a worker: end this process as soon as ``parent`` is gone (killed with SIGTERM or SIGKILL,
    it cannot stop its workers), so that no orphan goes on writing what a rerun also writes."""
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _init_worker(env: dict[str, str], parent: int) -> None:
    os.environ.update(env)
    _exit_with_parent(parent)
    retain_freed_memory()
    import torch

    torch.set_num_threads(1)


class ProcessExecutor(Executor):
    """``workers`` local worker processes (spawned)."""

    name = "local"

    def __init__(self, workers: int):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        self.workers = workers
        env = {k: v for k, v in os.environ.items() if k.startswith("BATMANN_")}
        self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                         initializer=_init_worker, initargs=(env, os.getpid()))

    def unordered(self, fn, args):
        from concurrent.futures import as_completed

        futures = [self._pool.submit(fn, a) for a in args]
        try:
            for f in as_completed(futures):
                yield f.result()
        finally:
            for f in futures:
                f.cancel()

    def close(self, abort: bool = False) -> None:
        if abort:  # the cells in flight are lost anyway: do not wait for them
            for p in list(getattr(self._pool, "_processes", {}).values()):
                p.terminate()
        self._pool.shutdown(wait=True, cancel_futures=True)


def _retaining_memory(fn, arg):
    """``fn(arg)`` on a Dask worker, with freed memory kept in the worker (:mod:`batmann.utils.allocator`)."""
    retain_freed_memory()
    return fn(arg)


class DaskExecutor(Executor):
    """A Dask cluster: a new ``LocalCluster`` or the scheduler at ``address``."""

    name = "dask"

    def __init__(self, workers: int, address: str | None = None, timeout: float = 5.0):
        try:
            from dask.distributed import Client, LocalCluster
        except ImportError:
            raise ConfigError("the dask executor needs dask.distributed: pip install 'dask[distributed]'") from None
        self._cluster = None
        if address:
            try:
                self._client = Client(address, timeout=timeout, set_as_default=False)
            except (OSError, TimeoutError) as exc:
                msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ConfigError(f"no Dask scheduler answers at {address}: {msg}") from None
            self.workers = max(1, sum(w.get("nthreads", 1) for w in
                                      self._client.scheduler_info().get("workers", {}).values()))
        else:
            env = {k: v for k, v in os.environ.items() if k.startswith("BATMANN_")}
            self._cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                         dashboard_address=None, env=env, silence_logs=40)
            self._client = Client(self._cluster, set_as_default=False)
            self.workers = workers

    def unordered(self, fn, args):
        from dask.distributed import as_completed

        futures = [self._client.submit(_retaining_memory, fn, a, pure=False) for a in args]
        try:
            for f in as_completed(futures, loop=self._client.loop):
                yield f.result()
        finally:
            self._client.cancel(futures)

    def close(self, abort: bool = False) -> None:
        self._client.close()
        if self._cluster is not None:
            self._cluster.close()


def make_executor(kind: str = "local", workers: int | None = None, address: str | None = None) -> Executor:
    """An executor by name (:data:`EXECUTORS`); ``workers`` defaults to the usable cores."""
    if kind not in EXECUTORS:
        raise ConfigError(f"executor {kind!r} is not one of {', '.join(EXECUTORS)}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"workers must be a positive integer, got {workers!r}")
    if address and kind != "dask":
        raise ConfigError("a Dask address needs --executor dask")
    n = workers or default_workers()
    if kind == "dask":
        return DaskExecutor(n, address)
    return InlineExecutor() if n == 1 else ProcessExecutor(n)
