"""Attention fidelity of a compacted layer on held-out queries (not the fitted ones)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._attention import attend
from .result import CompactedHead, CompactedLayer


@dataclass(frozen=True)
class AttentionErrors:
    """Per-head errors of a compacted layer.

    Attributes
    ----------
    output : ndarray, float64, [H]
        ``||O_c - O||_F / ||O||_F`` over the queries, O = attention output.
    mass : ndarray, float64, [H]
        Mean over queries of ``|M_c / M - 1|``, M = sum of exp(logits) (attention mass).
    """

    output: np.ndarray
    mass: np.ndarray


def attention_errors(
    K: np.ndarray,
    V: np.ndarray,
    Q: np.ndarray,
    scale: float,
    result: CompactedLayer | CompactedHead,
    prior_bias: np.ndarray | None = None,
    dtype: type = np.float64,
) -> AttentionErrors:
    """Relative errors of output and mass of ``result`` against the original cells.

    Parameters
    ----------
    K, V : ndarray, [H, T, d] (or [T, d] with a CompactedHead)
        The original span that was compacted.
    Q : ndarray, [H, n, d] (or [n, d])
        Held-out queries.
    scale : float
    result : CompactedLayer or CompactedHead
    prior_bias : ndarray or None, [H, T] (or [T])
    dtype : float64 or float32
        What the attention is computed in (see :func:`~pyllamaam.compact.attend`).

    Returns
    -------
    AttentionErrors
        With one entry per head ([1] for a CompactedHead).
    """
    if isinstance(result, CompactedHead):
        K, V, Q = (np.asarray(a)[None] for a in (K, V, Q))
        prior_bias = None if prior_bias is None else np.asarray(prior_bias)[None]
        result = CompactedLayer(
            result.indices[None], result.beta[None], result.values[None], np.zeros(1, int)
        )
    out0, logm = attend(K, V, Q, scale, prior_bias, dtype)
    live = result.kept.any(axis=1)
    beta = np.where(live[:, None], result.beta, 0.0)  # an empty head: error 1, not NaN
    Oc, logmc = attend(result.keys(K), result.values, Q, scale, beta, dtype)
    Oc[~live], logmc[~live] = 0.0, -np.inf
    out = np.linalg.norm((Oc - out0).reshape(len(out0), -1), axis=1)
    out /= np.maximum(np.linalg.norm(out0.reshape(len(out0), -1), axis=1), 1e-300)
    mass = np.abs(np.expm1(logmc - logm)).mean(axis=1)
    return AttentionErrors(out, mass)
