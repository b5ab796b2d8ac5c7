"""``window``: sink + recent eviction baseline (StreamingLLM-like).

Keeps the first ``n_sink`` valid keys and the most recent ones; original values, no beta.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import ConfigError
from .base import SelectionInput, Selector, rank_by_score, register


@register
@dataclass(frozen=True)
class Window(Selector):
    """Rank the first ``n_sink`` keys first, then the rest from the most recent back.

    Parameters
    ----------
    n_sink : int
        Leading keys always ranked first (attention sinks), default 4.
    """

    name = "window"
    fits = False
    n_sink: int = 4

    def __post_init__(self) -> None:
        if isinstance(self.n_sink, bool) or not isinstance(self.n_sink, int) or self.n_sink < 0:
            raise ConfigError(f"window: n_sink must be an integer >= 0, got {self.n_sink!r}")

    def rank(self, inp: SelectionInput) -> np.ndarray:
        H, T = inp.valid.shape
        pos = np.arange(T, dtype=np.float64)
        # Sinks score above every other key; after them, later is better.
        score = np.where(pos < self.n_sink, 2.0 * T - pos, pos)
        return rank_by_score(np.broadcast_to(score, (H, T)), inp.valid)
