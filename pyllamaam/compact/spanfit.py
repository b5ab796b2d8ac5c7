"""One layer's fit over a span: whole, in chunks, or next to exact cells kept per head.

Wraps :func:`~pyllamaam.compact.head.compact_layer` (one batched fit of every KV head of a layer)
for the pipeline's options: ``chunk_tokens`` (the span fitted in pieces: bounded memory), head
budgets with exact recent windows (``budget_cells="fill"``, option ``recent``) and exact cells
given per head (the chunks of option ``spans``). Arrays as in :mod:`pyllamaam.compact`:
K, V ``[H, T, d]``, Q ``[H, n, d]``, prior bias ``[H, T]``.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from .head import compact_layer
from .result import PAD, CompactedLayer


def fit_layer_windows(K, V, Q, budget, window, scale, prior, chunk_tokens, **kw) -> CompactedLayer:
    """One layer's fit where KV head h fits ``budget[h]`` keys on its span but the last
    ``window[h]`` cells, which it keeps exact (original keys and values, their bias): every head
    then fills ``budget[h] + window[h]`` slots (``window=None``: the plain fit, no window)."""
    if window is None or not np.any(window):
        return fit_layer(K, V, Q, budget, scale, prior, chunk_tokens, **kw)
    if "keep" in kw:
        raise ConfigError(
            "head budgets with recent windows cannot be combined with a shared keep mask"
        )
    H, T = K.shape[:2]
    b = np.broadcast_to(np.asarray(budget, dtype=np.int64), (H,))
    w = np.broadcast_to(np.asarray(window, dtype=np.int64), (H,))
    t = int((b + w).max())
    idx = np.full((H, t), PAD, np.int64)
    beta = np.full((H, t), -np.inf)
    vals = np.zeros((H, t, V.shape[2]), V.dtype)
    zeros = np.zeros(H, np.int64)
    fallback: list[int] = []
    timings: dict[str, float] = {}
    for wv in np.unique(w):  # heads with the same window share one batched fit
        hs = np.flatnonzero(w == wv)
        Tf = T - int(wv)
        pr = None if prior is None else np.ascontiguousarray(prior[hs, :Tf])
        sub = dict(kw, obs=None if kw.get("obs") is None else np.ascontiguousarray(kw["obs"][hs]))
        res = fit_layer(
            np.ascontiguousarray(K[hs, :Tf]),
            np.ascontiguousarray(V[hs, :Tf]),
            np.ascontiguousarray(Q[hs]),
            b[hs],
            scale,
            pr,
            chunk_tokens,
            **sub,
        )
        for j, h in enumerate(hs):
            keep = res.indices[j] != PAD
            n_fit = int(keep.sum())
            rec = np.arange(Tf, T)
            n = n_fit + len(rec)
            idx[h, :n] = np.concatenate([res.indices[j, keep], rec])
            beta[h, :n] = np.concatenate(
                [res.beta[j, keep], np.zeros(len(rec)) if prior is None else prior[h, Tf:]]
            )
            vals[h, :n] = np.concatenate([res.values[j, keep], V[h, Tf:]])
        zeros[hs] = res.zero_weights
        fallback += [int(hs[j]) for j in res.fallback_heads]
        for k, v in res.timings.items():
            timings[k] = timings.get(k, 0.0) + v
    return CompactedLayer(idx, beta, vals, zeros, tuple(sorted(fallback)), timings)


def fit_layer_exact(K, V, Q, budget, exact, scale, prior, chunk_tokens, **kw) -> CompactedLayer:
    """One layer's fit where each KV head keeps the span indices ``exact`` [H, e] exact (original
    keys, values and bias); ``budget`` keys are fitted on the rest of its span.

    The span's unnormalized attention sum is the exact keys' sum plus the rest's, so a fit that
    matches the rest matches the whole (as for chunks). Heads with the same exact keys share one
    batched fit; the others get one each.
    """
    if "keep" in kw:
        raise ConfigError(
            "exact keys chosen per head cannot be combined with a shared keep mask (method='keep')"
        )
    H, T = K.shape[:2]
    valid = np.ones((H, T), bool) if prior is None else np.isfinite(prior)
    exact = np.asarray(exact, np.int64)
    idx, beta, vals = [None] * H, [None] * H, [None] * H
    zeros, fallback, timings = np.zeros(H, np.int64), [], {}
    groups: dict[bytes, list[int]] = {}
    for h in range(H):
        groups.setdefault(exact[h].tobytes(), []).append(h)
    for hs in groups.values():
        rest = np.setdiff1d(np.arange(T), exact[hs[0]])
        pr = None if prior is None else np.ascontiguousarray(prior[hs][:, rest])
        res = fit_layer(
            np.ascontiguousarray(K[hs][:, rest]),
            np.ascontiguousarray(V[hs][:, rest]),
            np.ascontiguousarray(Q[hs]),
            budget,
            scale,
            pr,
            chunk_tokens,
            **kw,
        )
        for j, h in enumerate(hs):
            ex = exact[h][valid[h, exact[h]]]
            keep = res.indices[j] != PAD
            idx[h] = np.concatenate([rest[res.indices[j, keep]], ex])
            beta[h] = np.concatenate(
                [res.beta[j, keep], np.zeros(len(ex)) if prior is None else prior[h, ex]]
            )
            vals[h] = np.concatenate([res.values[j, keep], V[h, ex]])
            zeros[h] = int(res.zero_weights[j])
        fallback += [hs[j] for j in res.fallback_heads]
        for k, v in res.timings.items():
            timings[k] = timings.get(k, 0.0) + v
    fallback = sorted(fallback)
    t = max(len(i) for i in idx)
    slots, B = np.full((H, t), PAD, np.int64), np.full((H, t), -np.inf)
    C2 = np.zeros((H, t, V.shape[2]), V.dtype)
    for h in range(H):
        order = np.argsort(idx[h], kind="stable")  # slots in position order
        n = len(order)
        slots[h, :n], B[h, :n], C2[h, :n] = idx[h][order], beta[h][order], vals[h][order]
    return CompactedLayer(slots, B, C2, zeros, tuple(fallback), timings)


def fit_layer(K, V, Q, budget, scale, prior, chunk_tokens, **kw) -> CompactedLayer:
    """One layer's fit, whole or in spans of ``chunk_tokens`` cells.

    Chunked, each span is compacted against the same queries (which saw the whole context) with
    its share of the budget: the span's attention sums add up to the whole, so matching each
    one matches their total, and no score block is larger than n x chunk_tokens per head.
    """
    T = K.shape[1]
    if chunk_tokens is None or chunk_tokens >= T:
        return compact_layer(K, V, Q, budget, scale, prior_bias=prior, **kw)
    if not (isinstance(chunk_tokens, int) and chunk_tokens >= 16):
        raise ConfigError(f"chunk_tokens must be an integer >= 16, not {chunk_tokens!r}")
    if "keep" in kw:
        raise ConfigError("chunk_tokens cannot be combined with a shared keep mask (method='keep')")
    edges = np.linspace(0, T, -(-T // chunk_tokens) + 1).round().astype(int)
    b = np.broadcast_to(np.asarray(budget), (K.shape[0],))
    # each chunk's share of every head's budget, by largest remainders so the shares sum exactly
    share = b[:, None] * np.diff(edges)[None, :] / T
    parts = np.floor(share).astype(int)
    short = b - parts.sum(axis=1)
    order = np.argsort(-(share - parts), axis=1, kind="stable")
    for h in range(len(b)):
        parts[h, order[h, : short[h]]] += 1
    results, starts = [], []
    for c, (a, z) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        bc = np.minimum(np.maximum(parts[:, c], 1), z - a)
        pc = None if prior is None else np.ascontiguousarray(prior[:, a:z])
        results.append(compact_layer(K[:, a:z], V[:, a:z], Q, bc, scale, prior_bias=pc, **kw))
        starts.append(a)
    return concat_chunks(results, starts)


def concat_chunks(results: list[CompactedLayer], starts: list[int]) -> CompactedLayer:
    """Chunk results as one layer: kept slots in position order, padding at the end."""
    idx = np.concatenate(
        [np.where(r.kept, r.indices + a, PAD) for r, a in zip(results, starts, strict=True)], axis=1
    )
    beta = np.concatenate([r.beta for r in results], axis=1)
    vals = np.concatenate([r.values for r in results], axis=1)
    order = np.argsort(idx == PAD, axis=1, kind="stable")  # kept first, each in its order
    t = int((idx != PAD).sum(axis=1).max())
    take = order[:, :t]
    timings: dict[str, float] = {}
    for r in results:
        for k, v in r.timings.items():
            timings[k] = timings.get(k, 0.0) + v
    return CompactedLayer(
        np.take_along_axis(idx, take, 1),
        np.take_along_axis(beta, take, 1),
        np.take_along_axis(vals, take[:, :, None], 1),
        sum(r.zero_weights for r in results),
        tuple(sorted({h for r in results for h in r.fallback_heads})),
        timings,
    )
