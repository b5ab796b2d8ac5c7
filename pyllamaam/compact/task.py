"""Task-guided scoring (Latent Briefing): one keep mask shared by every head.

Queries of the upcoming task prompt score each context position; the per-head scores
(mean softmax weight over the task queries, which sums to 1 over positions) are
aggregated over heads and layers into one score per position. Positions are kept by an
adaptive threshold ``score > median + k * MAD`` (smaller k keeps more) or by a fixed top-k.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..errors import ConfigError
from ._attention import attention_stats
from ._checks import check_inputs


def task_position_scores(
    layers: Iterable[tuple[np.ndarray, np.ndarray, float]],
    *,
    reduce: str = "mean",
) -> np.ndarray:
    """One score per position from task-prompt queries, over all layers and heads.

    Parameters
    ----------
    layers : iterable of (K, Q, scale)
        Per layer: keys K [H, T, d] of the context, task queries Q [H, n, d], kq_scale.
        T must be the same for every layer.
    reduce : {"mean", "max"}
        How per-head scores combine across heads and layers.

    Returns
    -------
    ndarray, float64, [T]
    """
    if reduce not in ("mean", "max"):
        raise ConfigError(f"reduce must be 'mean' or 'max', got {reduce!r}")
    acc, count = None, 0
    for K, Q, scale in layers:
        K = np.asarray(K)
        V = np.zeros(K.shape[:2] + (0,), dtype=np.float32)
        K, V, Q, _, _, _ = check_inputs(K, V, Q, 1, scale, None)
        score = attention_stats(K, V, Q, scale).score_mean  # [H, T], rows sum to 1
        if acc is not None and score.shape[1] != acc.shape[0]:
            raise ConfigError("every layer must have the same number of positions T")
        part = score.sum(axis=0) if reduce == "mean" else score.max(axis=0)
        if acc is None:
            acc = part
        else:
            acc = acc + part if reduce == "mean" else np.maximum(acc, part)
        count += score.shape[0]
    if acc is None:
        raise ConfigError("no layers given")
    return acc / count if reduce == "mean" else acc


def keep_mask_mad(scores: np.ndarray, k: float) -> np.ndarray:
    """Keep positions with ``score > median + k * MAD``.

    Parameters
    ----------
    scores : ndarray, [T]
    k : float
        Aggressiveness: larger k keeps fewer positions.

    Returns
    -------
    ndarray, bool, [T]
    """
    s = _scores(scores)
    if not np.isfinite(k):
        raise ConfigError(f"k must be finite, got {k!r}")
    med = np.median(s)
    mad = np.median(np.abs(s - med))
    return s > med + k * mad


def keep_mask_topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Keep the ``k`` highest-scoring positions (ties: earlier position first).

    Parameters
    ----------
    scores : ndarray, [T]
    k : int, 0 <= k <= T

    Returns
    -------
    ndarray, bool, [T]
    """
    s = _scores(scores)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= s.size:
        raise ConfigError(f"k must be an integer in [0, {s.size}], got {k!r}")
    keep = np.zeros(s.size, dtype=bool)
    keep[np.argsort(-s, kind="stable")[:k]] = True
    return keep


def _scores(scores: np.ndarray) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.size == 0 or not np.isfinite(s).all():
        raise ConfigError("scores must be a non-empty finite 1-D array")
    return s
