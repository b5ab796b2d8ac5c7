"""Input validation of the kernel: shapes, dtypes, finiteness, budgets."""

from __future__ import annotations

import math

import numpy as np

from ..errors import CompactionError, ConfigError


def check_inputs(K, V, Q, t, scale, prior_bias):
    """Validate and convert the inputs of :func:`~pyllamaam.compact.compact_layer`.

    Returns
    -------
    K, V, Q : ndarray, float32, [H, T, d], [H, T, dv], [H, n, d]
    prior : ndarray or None, float32, [H, T]
    valid : ndarray, bool, [H, T]
        Cells that may be kept (prior bias > -inf).
    t_eff : ndarray, int64, [H]
        Keys to keep per head, capped at the number of valid cells.

    Raises
    ------
    ConfigError
        Bad shapes, dtypes, ``t`` or ``scale``.
    CompactionError
        Non-finite K, V, Q, or a prior bias that is NaN or +inf, or a head without
        any valid cell.
    """
    K, V, Q = (_float32(name, a) for name, a in (("K", K), ("V", V), ("Q", Q)))
    if K.ndim != 3 or V.ndim != 3 or Q.ndim != 3:
        raise ConfigError("K, V, Q must be 3-D: [kv_head, token, head_dim]")
    H, T, d = K.shape
    if T == 0 or Q.shape[1] == 0 or d == 0:
        raise ConfigError(f"empty input: K {K.shape}, Q {Q.shape}")
    if V.shape[:2] != (H, T) or Q.shape[0] != H or Q.shape[2] != d:
        raise ConfigError(f"shapes do not fit: K {K.shape}, V {V.shape}, Q {Q.shape}")
    for name, a in (("K", K), ("V", V), ("Q", Q)):
        if not np.isfinite(a).all():
            raise CompactionError(f"{name} holds non-finite numbers")
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating)):
        raise ConfigError(f"scale must be a number, got {scale!r}")
    if not (math.isfinite(scale) and scale > 0):
        raise ConfigError(f"scale must be finite and > 0, got {scale!r}")
    prior, valid = None, np.ones((H, T), dtype=bool)
    if prior_bias is not None:
        prior = _float32("prior_bias", prior_bias)
        if prior.shape != (H, T):
            raise ConfigError(f"prior_bias must have shape {(H, T)}, got {prior.shape}")
        if np.isnan(prior).any() or np.isposinf(prior).any():
            raise CompactionError("prior_bias holds NaN or +inf")
        valid = prior > -np.inf
        if not valid.any(axis=1).all():
            raise CompactionError("a head has no valid cell (prior_bias all -inf)")
    return K, V, Q, prior, valid, np.minimum(_budgets(t, H, T), valid.sum(axis=1))


def _float32(name: str, a) -> np.ndarray:
    a = np.asarray(a)
    if not np.issubdtype(a.dtype, np.floating):
        raise ConfigError(f"{name} must be a floating-point array, got {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.float32)


def _budgets(t, H: int, T: int) -> np.ndarray:
    arr = np.asarray(t)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise ConfigError(f"t must be an integer or integers, got {t!r}")
    arr = np.broadcast_to(arr, (H,)) if arr.ndim == 0 else arr
    if arr.shape != (H,):
        raise ConfigError(f"t must be one integer or one per head ({H}), got shape {arr.shape}")
    if (arr < 0).any() or (arr > T).any() or arr.max() < 1:
        raise ConfigError(f"t must lie in [0, T={T}] with at least one > 0, got {arr.tolist()}")
    return arr.astype(np.int64)
