"""``keep``: keep given positions (a shared keep mask, e.g. from Latent Briefing).

Ranks the given positions first, in position order, then every other key by
``attn-rms`` (used only to refill zero-weight slots). Fits beta and values by default;
``fit=False`` keeps the positions verbatim (pure eviction).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import ConfigError
from .base import SelectionInput, Selector, rank_by_score, register


@register
@dataclass(frozen=True)
class Keep(Selector):
    """Keep the positions in ``keep``.

    Parameters
    ----------
    keep : ndarray
        Bool mask [T] or [H, T], or integer positions [m] shared by all heads.
    """

    name = "keep"
    scores = ("rms",)
    keep: object = None

    def rank(self, inp: SelectionInput) -> np.ndarray:
        H, T = inp.valid.shape
        k = np.asarray(self.keep)
        if k.dtype == bool:
            if k.shape not in ((T,), (H, T)):
                raise ConfigError(f"keep: mask must have shape ({T},) or ({H}, {T})")
            mask = np.broadcast_to(k, (H, T))
        elif k.ndim == 1 and np.issubdtype(k.dtype, np.integer):
            if k.size and (k.min() < 0 or k.max() >= T):
                raise ConfigError(f"keep: positions must lie in [0, {T})")
            mask = np.zeros((H, T), dtype=bool)
            mask[:, k] = True
        else:
            raise ConfigError("keep: give a bool mask or integer positions")
        # Kept positions above every score (scores are softmax weights <= 1).
        score = np.where(mask, 2.0 + (T - np.arange(T)) / T, inp.stats.score_rms)
        return rank_by_score(score, inp.valid)
