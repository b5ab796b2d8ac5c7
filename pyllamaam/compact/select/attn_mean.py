"""``attn-mean``: keep the keys with the highest mean attention weight.

Score = the mean over queries of each key's softmax weight (H2O-like accumulated attention).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import SelectionInput, Selector, rank_by_score, register


@register
@dataclass(frozen=True)
class AttnMean(Selector):
    """Top keys by the mean over reference queries of softmax(scale Q K^T + prior)."""

    name = "attn-mean"
    scores = ("mean",)

    def rank(self, inp: SelectionInput) -> np.ndarray:
        return rank_by_score(inp.stats.score_mean, inp.valid)
