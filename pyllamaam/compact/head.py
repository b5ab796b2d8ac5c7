"""The kernel: select -> beta -> values for every KV head of one layer at once.

:func:`compact_layer` batches the heads of a layer (same T) through every stage with
stacked numpy calls; :func:`compact_head` is the same kernel for one head.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from ..errors import CompactionError, ConfigError
from ._attention import attention_stats
from ._checks import check_inputs
from .beta import (
    F32_GRAM_TOL,
    NormalEquations,
    fit_weights,
    phi_matrix,
    solve_pgd,
    weights_to_beta,
)
from .options import FitOptions
from .result import PAD, CompactedHead, CompactedLayer
from .select import SelectionInput, make_selector, selector_params
from .values import fit_values, round_beta

log = logging.getLogger(__name__)


def compact_layer(
    K: np.ndarray,
    V: np.ndarray,
    Q: np.ndarray,
    t: int | np.ndarray,
    scale: float,
    *,
    method: str = "attn-rms",
    prior_bias: np.ndarray | None = None,
    obs: np.ndarray | None = None,
    **options: object,
) -> CompactedLayer:
    """Compact every KV head of one layer.

    Parameters
    ----------
    K : ndarray, [H, T, d]
        Keys of the compactable span, post-RoPE, as stored in the cache.
    V : ndarray, [H, T, dv]
    Q : ndarray, [H, n, d]
        Reference queries; row block h holds the queries of every query head in the
        group of KV head h (in the basis of the stored keys).
    t : int or array-like of int, [H]
        Keys to keep per head (at most T). Heads with fewer valid keys, or whose
        zero-weight keys are dropped, are padded to ``max(t)`` slots.
    scale : float
        The layer's kq_scale (beta is in post-scale logit units).
    method : str
        A registered selection method, see :func:`available_methods`.
    prior_bias : ndarray or None, [H, T]
        Bias the input cells already carry (re-compaction); ``-inf`` marks padding.
    obs : ndarray or None, [H, m, d]
        Observation queries (what the next tokens read) for ``snapkv`` selection; the fit uses
        ``Q`` only.
    **options
        :class:`FitOptions` fields and the selector's own parameters.

    Returns
    -------
    CompactedLayer
        ``indices`` [H, t], ``beta`` [H, t], ``values`` [H, t, dv], ``t = max(t)``.

    Raises
    ------
    ConfigError
        Unknown method or option, bad option value, bad shapes or ``t``.
    CompactionError
        Non-finite inputs, or fitted values out of range with ``on_bad_values="raise"``.
    """
    own = selector_params(method)
    unknown = set(options) - own - FitOptions.names()
    if unknown:
        raise ConfigError(f"unknown option(s) {sorted(unknown)} for method {method!r}")
    selector = make_selector(method, **{k: v for k, v in options.items() if k in own})
    opts = FitOptions(**{k: v for k, v in options.items() if k not in own})
    K, V, Q, prior, valid, t_eff = check_inputs(K, V, Q, t, scale, prior_bias)
    if obs is not None:
        obs = np.asarray(obs, dtype=np.float32)
        if obs.ndim != 3 or obs.shape[0] != K.shape[0] or obs.shape[2] != K.shape[2] or obs.shape[1] < 1:
            raise ConfigError(f"obs must have shape [H={K.shape[0]}, m>=1, d={K.shape[2]}], got {obs.shape}")
        if not np.isfinite(obs).all():
            raise CompactionError("obs queries are not finite")
    timings = dict.fromkeys(("scores", "select", "beta", "values"), 0.0)

    clock = time.perf_counter()
    stats = attention_stats(
        K, V, Q, scale, prior, max_block=opts.max_block, scores=selector.scores
    )
    timings["scores"], clock = time.perf_counter() - clock, time.perf_counter()
    inp = SelectionInput(K, Q, float(scale), prior, valid, stats, t_eff, opts.seed, obs)
    ranking = selector.rank(inp)
    timings["select"], clock = time.perf_counter() - clock, time.perf_counter()
    idx, mask = _take(ranking, t_eff)
    zeros = np.zeros(K.shape[0], dtype=int)
    fallback: tuple[int, ...] = ()
    if selector.fits if opts.fit is None else opts.fit:
        idx, mask, w, Phi, zeros = _fit_beta(K, Q, scale, stats, ranking, idx, mask, valid, opts)
        beta = round_beta(weights_to_beta(w, mask), opts.beta_dtype)
        timings["beta"], clock = time.perf_counter() - clock, time.perf_counter()
        V_kept = _gather(V, idx, mask)
        vf = fit_values(
            Phi,
            beta,
            stats.output,
            V_kept,
            ridge=opts.ridge,
            target=opts.ridge_target,
            max_ratio=opts.max_value_ratio,
            V_ref=np.where(valid[:, :, None], V, 0),
        )
        values, fallback = _handle_bad(vf.values, vf.bad, V_kept, opts.on_bad_values)
        timings["values"] = time.perf_counter() - clock
    else:
        beta = np.where(mask, 0.0 if prior is None else _gather(prior, idx, mask), -np.inf)
        values = _gather(V, idx, mask)
    # Slots in position order, padding last.
    order = np.argsort(np.where(mask, idx, K.shape[1]), axis=1, kind="stable")
    idx, beta = np.take_along_axis(idx, order, 1), np.take_along_axis(beta, order, 1)
    values = np.take_along_axis(values, order[:, :, None], 1).astype(np.float32)
    return CompactedLayer(idx, beta, values, zeros, fallback, timings)


def compact_head(
    K: np.ndarray,
    V: np.ndarray,
    Q: np.ndarray,
    t: int,
    scale: float,
    *,
    method: str = "attn-rms",
    prior_bias: np.ndarray | None = None,
    **options: object,
) -> CompactedHead:
    """Compact one (layer, KV head): the single-head form of :func:`compact_layer`.

    Parameters
    ----------
    K : ndarray, [T, d]
    V : ndarray, [T, dv]
    Q : ndarray, [n, d]
        Reference queries of every query head in the KV head's group.
    t : int
    scale : float
    method : str
    prior_bias : ndarray or None, [T]
    **options
        As for :func:`compact_layer`.

    Returns
    -------
    CompactedHead
        ``indices`` [t], ``beta`` [t], ``values`` [t, dv].
    """
    K, V, Q = (np.asarray(a)[None] for a in (K, V, Q))
    if prior_bias is not None:
        prior_bias = np.asarray(prior_bias)[None]
    if options.get("obs") is not None:
        options["obs"] = np.asarray(options["obs"])[None]
    layer = compact_layer(K, V, Q, t, scale, method=method, prior_bias=prior_bias, **options)
    return layer.head(0)


def _take(ranking: np.ndarray, t_eff: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t_max = int(t_eff.max(initial=0))
    mask = np.arange(t_max)[None, :] < t_eff[:, None]
    return np.where(mask, ranking[:, :t_max], PAD), mask


def _gather(a: np.ndarray, idx: np.ndarray, mask: np.ndarray) -> np.ndarray:
    safe = np.where(mask, idx, 0)
    if a.ndim == 2:
        return np.where(mask, np.take_along_axis(a, safe, 1), 0)
    return np.where(mask[:, :, None], np.take_along_axis(a, safe[:, :, None], 1), 0)


def _fit_beta(K, Q, scale, stats, ranking, idx, mask, valid, opts: FitOptions):
    """NNLS weights with the zero-weight policy; returns idx, mask, w, Phi, zero counts.

    ``Phi`` (float32 unless ``nnls_tol`` is below float32's resolution) is returned
    with an arbitrary per-row scale (the value fit's softmax removes it). A refill
    round recomputes only the replaced columns of the normal equations.
    """
    idx, mask = idx.copy(), mask.copy()
    n_valid = valid.sum(axis=1)
    ptr = mask.sum(axis=1)  # next unused position in each ranking
    # Relative weighting divides both sides of query i's equation by its mass y_i.
    relative = opts.mass_weighting == "relative"
    # float32 throughout unless the tolerance asks for more.
    dt = np.float32 if opts.nnls_tol >= F32_GRAM_TOL else np.float64
    row = (1.0 / stats.mass if relative else np.ones_like(stats.mass)).astype(dt)
    y = np.ones_like(stats.mass) if relative else stats.mass
    Phi = phi_matrix(Q, _gather(K, idx, mask), scale, stats.shift, dtype=dt)
    ne = NormalEquations.build(Phi * row[:, :, None], y, mask, dt)
    del Phi
    w = _solve(ne, mask, opts)
    for round_ in range(opts.refill_rounds + 1):
        zero = mask & (w <= 1e-9 * w.max(axis=1, keepdims=True, initial=0.0))
        if opts.zero_weights != "refill" or round_ == opts.refill_rounds or not zero.any():
            break
        changed = False
        for h in np.flatnonzero(zero.any(axis=1)):
            slots = np.flatnonzero(zero[h])[: max(0, n_valid[h] - ptr[h])]
            if slots.size == 0:
                continue
            idx[h, slots] = ranking[h, ptr[h] : ptr[h] + slots.size]
            ptr[h] += slots.size
            changed = True
            L = (Q[h] @ K[h, idx[h, slots]].T).astype(dt)
            L *= dt(scale)
            L -= stats.shift[h][:, None].astype(dt)
            ne.replace(h, slots, np.exp(L, out=L) * row[h][:, None])
        if not changed:
            break
        # A cold start, not the previous weights: every round gets the same iteration
        # budget. Warm-started, the early-stopped refit compounds iterations and zeroes
        # more keys than it refilled (measured: fewer keys kept than "drop").
        w = _solve(ne, mask, opts)
    if zero.any():
        log.debug("NNLS left %d zero-weight keys (policy %s)", zero.sum(), opts.zero_weights)
    if opts.zero_weights == "floor":
        w = np.where(zero, np.exp(opts.beta_floor), w)
    else:
        mask &= ~zero
        idx = np.where(mask, idx, PAD)
    Phi = ne.P * ne.D[:, None, :].astype(ne.P.dtype)  # rows scaled by 1/y: harmless
    return idx, mask, w, Phi, zero.sum(axis=1)


def _solve(ne: NormalEquations, mask: np.ndarray, opts: FitOptions) -> np.ndarray:
    bounds = opts.beta_bounds
    if opts.nnls_solver == "active-set":
        Phi = ne.P.astype(np.float64) * ne.D[:, None, :]
        return fit_weights(Phi, ne.y, mask, bounds=bounds, solver="active-set").w
    return solve_pgd(ne, bounds=bounds, max_iter=opts.nnls_max_iter, tol=opts.nnls_tol).w


def _handle_bad(values, bad, V_kept, policy):
    if not bad.any():
        return values, ()
    heads = tuple(int(h) for h in np.flatnonzero(bad))
    if policy == "raise":
        raise CompactionError(f"fitted values non-finite or out of range in heads {heads}")
    log.warning("fitted values rejected in heads %s; using original values", heads)
    return np.where(bad[:, None, None], V_kept, values), heads
