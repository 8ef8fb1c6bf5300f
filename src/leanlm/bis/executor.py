"""Where per-file work runs: in this process, in a local process pool, or as Ray tasks.

An executor knows nothing of what it runs: :func:`map_ordered` calls ``fn(*args)`` for every item and yields
the results in item order (so outputs can be appended in file order as soon as each earlier file is done).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

EXECUTORS = ("serial", "process", "ray")


def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def map_ordered(fn: Callable[..., Any], items: Sequence[tuple[Any, ...]], kind: str = "serial", workers: int = 1
                ) -> Iterator[Any]:
    """``fn(*item)`` for every item, results in item order. ``kind``: serial, process (``workers`` processes)
    or ray (Ray tasks on the connected cluster, or a local one)."""
    if kind == "serial" or (kind == "process" and workers <= 1):
        for item in items:
            yield fn(*item)
        return
    if kind == "process":
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(fn, *item) for item in items]
            try:
                for fut in futures:
                    yield fut.result()
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
        return
    if kind == "ray":
        import ray

        if not ray.is_initialized():
            ray.init(num_cpus=workers if workers > 0 else None, include_dashboard=False, log_to_driver=False)
        remote = ray.remote(_call)
        refs = [remote.remote(fn, *item) for item in items]
        for ref in refs:
            yield ray.get(ref)
        return
    raise ValueError(f"unknown executor {kind!r}; choose from {', '.join(EXECUTORS)}")
