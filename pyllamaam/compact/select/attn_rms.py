"""``attn-rms``: keep the keys with the highest rms attention weight.

Score = the root mean square over queries of each key's softmax weight
(the Attention Matching default).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import SelectionInput, Selector, rank_by_score, register


@register
@dataclass(frozen=True)
class AttnRms(Selector):
    """Top keys by the rms over reference queries of softmax(scale Q K^T + prior)."""

    name = "attn-rms"
    scores = ("rms",)

    def rank(self, inp: SelectionInput) -> np.ndarray:
        return rank_by_score(inp.stats.score_rms, inp.valid)
