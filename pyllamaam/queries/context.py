"""``"context"``: the queries captured while the context was prefilled (no extra pass).

Enable the buffer before prefill with :meth:`Session.capture_context_queries`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..host import Host


def context_queries(session: Host, span: tuple[int, int], **_: Any) -> dict[int, np.ndarray]:
    got = session.context_queries()
    if not got:
        raise ConfigError(
            "queries='context' needs Session.capture_context_queries() before prefill "
            "(no queries were captured)"
        )
    return got


class QueryBuffer:
    """Per-layer queries with a cap on rows (tokens): when full, keep every other row.

    Halving keeps an evenly strided sample of everything seen, deterministically.
    """

    def __init__(self, cap: int) -> None:
        if cap < 2:
            raise ConfigError(f"the query cap must be at least 2, not {cap}")
        self.cap = int(cap)
        self.stride = 1  # keep every stride-th token seen
        self.seen = 0
        self.layers: dict[int, list[np.ndarray]] = {}

    def add(self, captured: dict[int, list[np.ndarray]]) -> None:
        n = None
        for il, qs in captured.items():
            q = np.concatenate(qs)
            n = q.shape[0]
            take = (self.seen + np.arange(n)) % self.stride == 0
            self.layers.setdefault(il, []).append(q[take])
        if n is None:
            return
        self.seen += n
        while sum(len(a) for a in next(iter(self.layers.values()))) > self.cap:
            self.stride *= 2
            for il, qs in self.layers.items():
                self.layers[il] = [np.concatenate(qs)[::2]]

    def get(self) -> dict[int, np.ndarray]:
        return {il: np.concatenate(qs) for il, qs in sorted(self.layers.items())}
