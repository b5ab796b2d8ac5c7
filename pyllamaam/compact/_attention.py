"""Chunked attention statistics over the full span: the one pass every method needs.

Shapes follow the package convention (see ``pyllamaam.compact``): H KV heads, T keys,
n reference queries, d head dim. Logits are in post-scale units,
``logit = scale * q . k + bias``, exactly what llama.cpp adds its mask to.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Default cap on the elements of one logit block (all heads of a batch together).
DEFAULT_MAX_BLOCK = 1 << 23


@dataclass(frozen=True)
class AttentionStats:
    """What one pass over ``softmax(scale * Q K^T + prior)`` yields.

    Attributes
    ----------
    shift : ndarray, float64, [H, n]
        Row maximum ``m_i`` of the logits (the shift used on both sides of the mass fit).
    mass : ndarray, float64, [H, n]
        ``sum_k exp(logit_ik - m_i)`` (>= 1): the shifted attention mass of each query.
    output : ndarray, float64, [H, n, d]
        The attention output ``softmax(logits) V``.
    score_rms, score_mean, score_max : ndarray, float64, [H, T]
        RMS, mean and max over queries of the softmax weights of each key.
    """

    shift: np.ndarray
    mass: np.ndarray
    output: np.ndarray
    score_rms: np.ndarray
    score_mean: np.ndarray
    score_max: np.ndarray


def chunk_rows(n_heads: int, n_keys: int, max_block: int = DEFAULT_MAX_BLOCK) -> int:
    """Rows of queries per chunk so that one [H, rows, T] block stays under ``max_block``."""
    return max(1, int(max_block) // max(1, n_heads * n_keys))


def logits(Q: np.ndarray, K: np.ndarray, scale: float, bias: np.ndarray | None) -> np.ndarray:
    """Post-scale logits ``scale * Q K^T + bias``.

    Parameters
    ----------
    Q : ndarray, [H, n, d]
    K : ndarray, [H, T, d]
    scale : float
    bias : ndarray or None, [H, T]

    Returns
    -------
    ndarray, [H, n, T], dtype of ``Q @ K``.
    """
    L = np.matmul(Q, K.transpose(0, 2, 1))
    L *= L.dtype.type(scale)
    if bias is not None:
        L += bias[:, None, :].astype(L.dtype, copy=False)
    return L


def attention_stats(
    K: np.ndarray,
    V: np.ndarray,
    Q: np.ndarray,
    scale: float,
    prior_bias: np.ndarray | None = None,
    *,
    max_block: int = DEFAULT_MAX_BLOCK,
) -> AttentionStats:
    """One chunked pass over the queries computing everything the fit needs.

    Parameters
    ----------
    K, V : ndarray, float32, [H, T, d]
    Q : ndarray, float32, [H, n, d]
    scale : float
        The layer's kq_scale.
    prior_bias : ndarray or None, [H, T]
        Bias already carried by the cells (``-inf`` marks a cell that takes no part).
    max_block : int
        Cap on the elements of one [H, rows, T] logit block.

    Returns
    -------
    AttentionStats
    """
    H, T, d = K.shape
    n = Q.shape[1]
    shift = np.empty((H, n))
    mass = np.empty((H, n))
    output = np.empty((H, n, V.shape[2]))
    sq = np.zeros((H, T))
    sm = np.zeros((H, T))
    mx = np.zeros((H, T))
    step = chunk_rows(H, T, max_block)
    for a in range(0, n, step):
        b = min(n, a + step)
        E = logits(Q[:, a:b], K, scale, prior_bias)  # [H, c, T]
        m = E.max(axis=2)
        E -= m[:, :, None]
        np.exp(E, out=E)
        z = E.sum(axis=2, dtype=np.float64)
        shift[:, a:b] = m
        mass[:, a:b] = z
        E /= z[:, :, None].astype(E.dtype)  # now the softmax weights A
        output[:, a:b] = np.matmul(E, V)
        sm += E.sum(axis=1, dtype=np.float64)
        np.maximum(mx, E.max(axis=1), out=mx)
        E *= E
        sq += E.sum(axis=1, dtype=np.float64)
    return AttentionStats(shift, mass, output, np.sqrt(sq / n), sm / n, mx)


def attend(
    K: np.ndarray,
    V: np.ndarray,
    Q: np.ndarray,
    scale: float,
    bias: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Reference attention in float64: output and log-mass.

    Parameters
    ----------
    K, V : ndarray, [H, T, d]
    Q : ndarray, [H, n, d]
    scale : float
    bias : ndarray or None, [H, T]
        ``-inf`` entries remove a cell.

    Returns
    -------
    output : ndarray, float64, [H, n, d]
    log_mass : ndarray, float64, [H, n]
        ``log sum_k exp(logit_ik)``.
    """
    L = logits(Q.astype(np.float64), K.astype(np.float64), scale, None if bias is None else bias)
    m = L.max(axis=2, keepdims=True)
    E = np.exp(L - m)
    z = E.sum(axis=2, keepdims=True)
    return np.matmul(E / z, V.astype(np.float64)), np.log(z[:, :, 0]) + m[:, :, 0]
