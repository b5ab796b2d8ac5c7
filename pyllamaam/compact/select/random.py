"""``random``: keep keys uniformly at random (a floor every method must beat)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import SelectionInput, Selector, rank_by_score, register


@register
@dataclass(frozen=True)
class Random(Selector):
    """Uniformly random ranking drawn from ``numpy.random.default_rng(seed)``."""

    name = "random"
    fits = False

    def rank(self, inp: SelectionInput) -> np.ndarray:
        rng = np.random.default_rng(inp.seed)
        return rank_by_score(rng.random(inp.valid.shape), inp.valid)
