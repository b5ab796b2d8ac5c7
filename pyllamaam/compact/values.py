"""Values: ridge least squares on the attention-output equation.

With the beta exactly as the runtime applies it (optionally rounded to float16 first,
as llama.cpp's flash-attention mask is)::

    X = softmax(scale * Q C1^T + beta)                [n, t]
    Y = softmax(scale * Q K^T + prior) V              [n, d]   (AttentionStats.output)
    C2 = argmin ||X C2 - Y||^2 + lam ||C2 - C0||^2,   lam = ridge * tr(X^T X) / t

``C0`` is 0 (plain ridge) or the original values of the kept keys (shrink toward them).
An unregularized solve of an ill-conditioned X returns huge values; the ridge caps them,
and :func:`fit_values` reports heads whose values are non-finite or out of range.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import CompactionError, ConfigError

RIDGE_TARGETS = ("zero", "original")
#: The value fit forms X^T X in float32 (from float32 Phi) for ridges at least this large.
F32_RIDGE = 1e-4


@dataclass(frozen=True)
class ValueFit:
    """Result of :func:`fit_values`.

    Attributes
    ----------
    values : ndarray, float32, [H, t, d]
        C2; 0 in padding slots.
    bad : ndarray, bool, [H]
        Heads whose C2 is non-finite or exceeds ``max_ratio`` times the largest
        original value magnitude.
    ridge_lambda : ndarray, float64, [H]
    """

    values: np.ndarray
    bad: np.ndarray
    ridge_lambda: np.ndarray


def round_beta(beta: np.ndarray, dtype: str) -> np.ndarray:
    """Beta as the runtime stores it: ``"float32"`` or ``"float16"`` (-inf kept)."""
    if dtype not in ("float32", "float16"):
        raise ConfigError(f"beta_dtype must be 'float32' or 'float16', got {dtype!r}")
    with np.errstate(over="ignore"):
        out = np.asarray(beta).astype(dtype).astype(np.float64)
    if np.isposinf(out).any():
        raise CompactionError(f"beta overflows {dtype}")
    return out


def fit_values(
    Phi: np.ndarray,
    beta: np.ndarray,
    Y: np.ndarray,
    V_kept: np.ndarray,
    *,
    ridge: float = 1e-2,
    target: str = "zero",
    max_ratio: float = 10.0,
    V_ref: np.ndarray | None = None,
) -> ValueFit:
    """Fit C2 for every head by (ridge) least squares.

    Parameters
    ----------
    Phi : ndarray, float64, [H, n, t]
        ``exp(scale * Q C1^T - shift)`` (any per-row shift: softmax removes it).
    beta : ndarray, float64, [H, t]
        Beta as applied; ``-inf`` marks padding slots.
    Y : ndarray, [H, n, d]
        Target attention output.
    V_kept : ndarray, [H, t, d]
        Original values of the kept keys (ridge target and magnitude reference).
    ridge : float
        Relative ridge; 0 means an unregularized minimum-norm least squares.
    target : {"zero", "original"}
    max_ratio : float
        A head is flagged bad when ``max|C2| > max_ratio * max|V_ref|``.
    V_ref : ndarray or None, [H, T, d]
        Values of the whole span for the magnitude reference (default ``V_kept``).

    Returns
    -------
    ValueFit
    """
    if target not in RIDGE_TARGETS:
        raise ConfigError(f"ridge_target must be one of {RIDGE_TARGETS}, got {target!r}")
    if not (ridge >= 0 and np.isfinite(ridge)):
        raise ConfigError(f"ridge must be finite and >= 0, got {ridge!r}")
    H, _, t = Phi.shape
    mask = np.isfinite(beta)
    # float32 products when the ridge dominates float32's rounding of X^T X; the
    # solve itself is float64.
    dt = np.float32 if ridge >= F32_RIDGE and Phi.dtype == np.float32 else np.float64
    bmax = np.where(mask, beta, -np.inf).max(axis=1, initial=-np.inf)
    bmax = np.where(np.isfinite(bmax), bmax, 0.0)
    with np.errstate(under="ignore"):
        e = np.exp(np.where(mask, beta - bmax[:, None], -np.inf))  # softmax: shift-free
        X = Phi.astype(dt, copy=True)
        X *= e.astype(dt)[:, None, :]
    z = X.sum(axis=2, keepdims=True)
    # A query that sees none of the kept keys (underflow) cannot inform the fit.
    X = np.divide(X, z, out=np.zeros_like(X), where=z > 0)
    Yd = np.where(z > 0, Y, 0.0).astype(dt)
    A = np.empty((H, t, t))
    for h in range(H):  # 2-D X.T @ X is a BLAS syrk: half the flops of the stacked product
        A[h] = X[h].T @ X[h]
    B = np.matmul(X.transpose(0, 2, 1), Yd).astype(np.float64)
    del X
    counts = np.maximum(mask.sum(axis=1), 1)
    lam = ridge * np.trace(A, axis1=1, axis2=2) / counts
    if ridge > 0:
        C0 = np.where(mask[:, :, None], V_kept, 0.0) if target == "original" else 0.0
        A += lam[:, None, None] * np.eye(t)
        B += lam[:, None, None] * C0
        A[~mask] = 0.0
        A[np.broadcast_to(~mask[:, :, None], A.shape) & np.eye(t, dtype=bool)] = 1.0
        B[~mask] = 0.0
        C2 = np.empty_like(B)
        for h in range(H):
            # LU, one head per call, though A + lam I is SPD: with one BLAS thread
            # Cholesky is 1.5x faster (14 ms a layer at t = 800), but on a 2-core machine
            # shared with other jobs OpenBLAS's threaded potrf stalled far worse than
            # getrf (values stage of 30 layers: 155 s against 8-15 s).
            try:
                C2[h] = np.linalg.solve(A[h], B[h])
            except np.linalg.LinAlgError as e:
                raise CompactionError(f"value solve failed in head {h}: {e}") from None
    else:
        Phi64 = Phi.astype(np.float64) * np.exp(np.where(mask, beta, -np.inf))[:, None, :]
        z64 = Phi64.sum(axis=2, keepdims=True)
        X64 = np.divide(Phi64, z64, out=np.zeros_like(Phi64), where=z64 > 0)
        Y64 = np.where(z64 > 0, Y, 0.0)
        C2 = np.zeros((H, t, Y.shape[2]))
        for h in range(H):
            cols = np.flatnonzero(mask[h])
            C2[h, cols] = np.linalg.lstsq(X64[h][:, cols], Y64[h], rcond=None)[0]
    C2[~mask] = 0.0
    ref = V_kept if V_ref is None else V_ref
    limit = max_ratio * np.abs(ref).reshape(H, -1).max(axis=1)
    finite = np.isfinite(C2).all(axis=(1, 2))
    with np.errstate(invalid="ignore"):
        big = np.abs(C2).reshape(H, -1).max(axis=1) > limit
    bad = ~finite | big
    return ValueFit(C2.astype(np.float32), bad, lam)
