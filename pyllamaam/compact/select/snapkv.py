"""``snapkv``: SnapKV-like eviction baseline.

Scores keys by the attention of an observation window of queries (the selection input's
``obs`` queries when given, else the last ``window`` rows of Q, or explicit ``obs_rows``),
smoothed by a max-pool along the token
axis, so that neighbours of a hit survive together. Original values, no beta.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import maximum_filter1d

from ...errors import ConfigError
from .._attention import logits
from .base import SelectionInput, Selector, check_positive_int, rank_by_score, register


@register
@dataclass(frozen=True)
class SnapKV(Selector):
    """Rank keys by max-pooled attention of the observation queries.

    Parameters
    ----------
    window : int
        Number of trailing rows of Q used as the observation window, default 32.
        Q rows of a group are stacked along n, so order them with the observation
        window last, or pass ``obs_rows``.
    kernel : int
        Max-pool width along tokens (odd), default 7.
    obs_rows : tuple of int or None
        Explicit row indices of Q to observe; overrides ``window``.
    """

    name = "snapkv"
    fits = False
    window: int = 32
    kernel: int = 7
    obs_rows: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        check_positive_int("snapkv", "window", self.window)
        check_positive_int("snapkv", "kernel", self.kernel)
        if self.kernel % 2 == 0:
            raise ConfigError(f"snapkv: kernel must be odd, got {self.kernel}")
        if self.obs_rows is not None and len(self.obs_rows) == 0:
            raise ConfigError("snapkv: obs_rows must not be empty")

    def rank(self, inp: SelectionInput) -> np.ndarray:
        n = inp.Q.shape[1]
        if self.obs_rows is not None:
            rows = np.asarray(self.obs_rows)
            if rows.min() < -n or rows.max() >= n:
                raise ConfigError(f"snapkv: obs_rows out of range for {n} queries")
            Qo = inp.Q[:, rows]
        elif inp.obs is not None:
            Qo = inp.obs
        else:
            Qo = inp.Q[:, max(0, n - self.window) :]
        return rank_by_score(observed_scores(Qo, inp.K, inp.scale, inp.prior_bias, self.kernel), inp.valid)


def observed_scores(Qo: np.ndarray, K: np.ndarray, scale: float, prior: np.ndarray | None, kernel: int) -> np.ndarray:
    """SnapKV's key scores [H, T]: the attention the observation queries ``Qo`` [H, m, d] give each
    key of ``K`` [H, T, d] (softmax over the span), summed, then max-pooled over ``kernel`` keys."""
    L = logits(Qo, K, scale, prior).astype(np.float64)
    L -= L.max(axis=2, keepdims=True)
    A = np.exp(L)
    A /= A.sum(axis=2, keepdims=True)
    return maximum_filter1d(A.sum(axis=1), size=kernel, axis=1, mode="constant")
