"""``attn-max``: keep the keys with the highest max attention weight.

Score = the maximum over queries of each key's softmax weight (KVzip-like).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import SelectionInput, Selector, rank_by_score, register


@register
@dataclass(frozen=True)
class AttnMax(Selector):
    """Top keys by the max over reference queries of softmax(scale Q K^T + prior)."""

    name = "attn-max"
    scores = ("max",)

    def rank(self, inp: SelectionInput) -> np.ndarray:
        return rank_by_score(inp.stats.score_max, inp.valid)
