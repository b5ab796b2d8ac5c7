"""Progress of a compaction: ``callback(stage, done, total)`` at its stage boundaries.

The stages, in order: ``extract`` (read the cache), ``queries`` (the reference passes and the
probes read before), ``select`` (the cells kept whole in every head: option ``spans``,
methods ``chunkkv`` and ``kvzip``; skipped by the rest), ``fit`` (``done`` counts the layers
fitted, ``total`` is every compacted layer), ``write`` (write the cells back), ``verify`` (the
gates). Each stage reports ``(stage, 0, total)`` when it starts and ``(stage, total, total)`` when it ends.

The callback runs on the thread that compacts (for ``fit``, on the threads that fit layers;
calls never overlap). An exception it raises ends the compaction like any failure: the
original cache is restored.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

X = TypeVar("X")
Y = TypeVar("Y")

#: The stages of :func:`pyllamaam.pipeline.compact`, in order.
STAGES = ("extract", "queries", "select", "fit", "write", "verify")

ProgressCallback = Callable[[str, int, int], None]


class Progress:
    """Serializes the calls of one compaction's callback (None: reports nothing)."""

    def __init__(self, callback: ProgressCallback | None) -> None:
        self._callback = callback
        self._lock = threading.Lock()
        self._done: dict[str, int] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self._callback is not None:
            with self._lock:
                self._callback(stage, done, total)

    def counting(self, stage: str, fn: Callable[[X], Y], total: int) -> Callable[[X], Y]:
        """``fn`` that reports ``(stage, done, total)`` after each call (calls from any thread)."""

        def counted(x: X) -> Y:
            y = fn(x)
            if self._callback is not None:
                with self._lock:
                    self._done[stage] = done = self._done.get(stage, 0) + 1
                    self._callback(stage, done, total)
            return y

        return counted
