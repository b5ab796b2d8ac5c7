"""Fit several layers at once: one thread per core, each with a single-threaded BLAS.

The kernel's work is numpy elementwise passes (one core each) and many small BLAS calls. A
multi-threaded BLAS wakes its threads for every small call and stalls badly when another
process holds a core (measured: 30 layers of SmolLM2 at T = 8K took 45 s with 2 BLAS threads
and one core busy, 8.5 s with 1). Layers are independent, so threads over layers use the
cores instead; numpy and BLAS release the GIL.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from threadpoolctl import threadpool_limits

X = TypeVar("X")
Y = TypeVar("Y")


def default_workers() -> int:
    """Cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def map_layers(fn: Callable[[X], Y], items: Iterable[X], workers: int | None = None) -> list[Y]:
    """``[fn(x) for x in items]`` on ``workers`` threads (default: the usable cores), in order.

    The first exception raised by ``fn`` propagates (after the running calls finish).
    """
    items = list(items)
    workers = min(len(items), default_workers() if workers is None else int(workers))
    with threadpool_limits(limits=1, user_api="blas"):
        if workers <= 1:
            return [fn(x) for x in items]
        # each call in a copy of the caller's context (where the attention passes run: arrays.use)
        contexts = [contextvars.copy_context() for _ in items]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pyllamaam-fit") as pool:
            return list(pool.map(lambda c, x: c.run(fn, x), contexts, items))
