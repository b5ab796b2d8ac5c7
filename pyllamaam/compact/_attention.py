"""Chunked attention statistics over the full span: the one pass every method needs.

On the module of :func:`pyllamaam.compact.arrays.current` (numpy, or CuPy on a GPU); inputs and
results are numpy. Shapes follow the package convention (see ``pyllamaam.compact``): H KV heads, T keys,
n reference queries, d head dim. Logits are in post-scale units,
``logit = scale * q . k + bias``, exactly what llama.cpp adds its mask to.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .arrays import module_of, run, to_host

#: Default cap on the elements of one logit block (all heads of a batch together).
DEFAULT_MAX_BLOCK = 1 << 23
#: The key scores :func:`attention_stats` can compute.
SCORES = ("rms", "mean", "max")


@dataclass(frozen=True)
class AttentionStats:
    """What one pass over ``softmax(scale * Q K^T + prior)`` yields.

    Attributes
    ----------
    shift : ndarray, float64, [H, n]
        Row maximum ``m_i`` of the logits (the shift used on both sides of the mass fit).
    mass : ndarray, float64, [H, n]
        ``sum_k exp(logit_ik - m_i)`` (>= 1): the shifted attention mass of each query.
    output : ndarray, float64, [H, n, d], or None
        The attention output ``softmax(logits) V`` (None when not asked for).
    score_rms, score_mean, score_max : ndarray, float64, [H, T], or None
        RMS, mean and max over queries of the softmax weights of each key (None when
        not asked for).
    """

    shift: np.ndarray
    mass: np.ndarray
    output: np.ndarray | None
    score_rms: np.ndarray | None
    score_mean: np.ndarray | None
    score_max: np.ndarray | None


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
    ndarray, [H, n, T], dtype of ``Q @ K``; on the array module of ``Q`` (numpy or cupy).
    """
    xp = module_of(Q)
    L = xp.matmul(Q, K.transpose(0, 2, 1))
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
    scores: frozenset[str] | tuple[str, ...] = SCORES,
    output: bool = True,
) -> AttentionStats:
    """One chunked pass over the queries computing everything the fit needs.

    Everything is float32 over the [H, rows, T] block (one exp per logit, reused for
    the mass, the output and the key scores); the per-query and per-key sums are
    accumulated in float64.

    Parameters
    ----------
    K, V : ndarray, float32, [H, T, d] (V may be None without ``output``)
    Q : ndarray, float32, [H, n, d]
    scale : float
        The layer's kq_scale.
    prior_bias : ndarray or None, [H, T]
        Bias already carried by the cells (``-inf`` marks a cell that takes no part).
    max_block : int
        Cap on the elements of one [H, rows, T] logit block.
    scores : subset of ``("rms", "mean", "max")``
        Key scores to compute (the others are None); a selector names what it reads.
    output : bool
        Compute the attention output (a key score alone needs no values).

    Returns
    -------
    AttentionStats
    """
    unknown = set(scores) - set(SCORES)
    if unknown:
        raise ValueError(f"unknown score(s) {sorted(unknown)}")
    return run(_attention_stats, K, V, Q, scale, prior_bias, max_block, scores, output)


def _attention_stats(xp, K, V, Q, scale, prior_bias, max_block, scores, output) -> AttentionStats:
    """:func:`attention_stats` on the array module ``xp`` (numpy or cupy: the same operations)."""
    H, T, d = K.shape
    n = Q.shape[1]
    f32 = np.float32
    Qs = (xp.asarray(Q) * f32(scale)).astype(f32, copy=False)
    Kt = xp.ascontiguousarray(xp.asarray(K).transpose(0, 2, 1), dtype=f32)  # [H, d, T]
    Vf = xp.asarray(V).astype(f32, copy=False) if output else None
    bias = None if prior_bias is None else xp.asarray(prior_bias).astype(f32, copy=False)[:, None, :]
    shift = xp.empty((H, n))
    mass = xp.empty((H, n))
    out = xp.empty((H, n, V.shape[2])) if output else None
    sq = xp.zeros((H, T)) if "rms" in scores else None
    sm = xp.zeros((H, T)) if "mean" in scores else None
    mx = xp.zeros((H, T)) if "max" in scores else None
    # At most half the queries per block: with the O((n + T) d) arrays alongside, the
    # pass then stays under one full n x T float32 block per head whatever max_block.
    step = min(chunk_rows(H, T, max_block), max(1, (n + 1) // 2))
    for a in range(0, n, step):
        b = min(n, a + step)
        E = xp.matmul(Qs[:, a:b], Kt)  # [H, c, T] post-scale logits
        if bias is not None:
            E += bias
        m = E.max(axis=2)
        E -= m[:, :, None]
        xp.exp(E, out=E)
        z = E.sum(axis=2)  # float32 pairwise sum; >= 1
        shift[:, a:b] = m
        mass[:, a:b] = z
        rz = (1.0 / z)[:, None, :]  # [H, 1, c]
        if out is not None:
            out[:, a:b] = xp.matmul(E, Vf) * rz.transpose(0, 2, 1)
        # Column sums of the softmax weights A = E / z as products with 1/z: one read
        # of E each instead of normalizing the block first.
        if sm is not None:
            sm += xp.matmul(rz, E)[:, 0]
        if mx is not None:
            # in place where nothing reads E after (the same products, no block-sized temporary)
            A = xp.multiply(E, rz.transpose(0, 2, 1), out=E if sq is None else None)
            xp.maximum(mx, A.max(axis=1), out=mx)
            del A
        if sq is not None:
            xp.square(E, out=E)
            sq += xp.matmul(rz * rz, E)[:, 0]
        del E  # before the next block is allocated: one block alive at a time
    return AttentionStats(
        to_host(shift),
        to_host(mass),
        to_host(out),
        None if sq is None else to_host(xp.sqrt(sq / n)),
        None if sm is None else to_host(sm / n),
        to_host(mx),
    )


def attend(
    K: np.ndarray,
    V: np.ndarray,
    Q: np.ndarray,
    scale: float,
    bias: np.ndarray | None = None,
    dtype: type = np.float64,
) -> tuple[np.ndarray, np.ndarray]:
    """Reference attention, computed in ``dtype`` (float64 by default): output and log-mass.

    Parameters
    ----------
    K, V : ndarray, [H, T, d]
    Q : ndarray, [H, n, d]
    scale : float
    bias : ndarray or None, [H, T]
        ``-inf`` entries remove a cell.
    dtype : float64 or float32
        float32 halves the time and memory of the held-out error measures (guards, the
        attention-error gate), whose relative errors of 1e-3 and up float32 resolves.

    Returns
    -------
    output : ndarray, float64, [H, n, d]
    log_mass : ndarray, float64, [H, n]
        ``log sum_k exp(logit_ik)``.
    """
    return run(_attend, K, V, Q, scale, bias, dtype)


def _attend(xp, K, V, Q, scale, bias, dtype) -> tuple[np.ndarray, np.ndarray]:
    """:func:`attend` on the array module ``xp``."""
    if bias is not None:
        bias = xp.asarray(bias)
    L = logits(xp.asarray(Q).astype(dtype, copy=False), xp.asarray(K).astype(dtype, copy=False), scale, bias)
    m = L.max(axis=2, keepdims=True)
    L -= m
    E = xp.exp(L, out=L)
    z = E.sum(axis=2, keepdims=True, dtype=np.float64)
    E /= z.astype(dtype)
    out = xp.matmul(E, xp.asarray(V).astype(dtype, copy=False))
    return to_host(out.astype(np.float64, copy=False)), to_host(xp.log(z[:, :, 0]) + m[:, :, 0].astype(np.float64))
