"""Shared, span-preserving selection: which cells every head and layer keeps exactly.

A fact lives in a few consecutive tokens (its cue words and its value) and a question reads it
through every layer and head at once. Per-head top-k selection and least-squares fits split
such a span across heads and layers and lose it, even at 2x. Here cells are scored once for the
whole model and kept in contiguous chunks, the same chunks in every head and layer (ChunkKV's
unit of selection, KVzip's repeat-pass scores):

- :func:`attention_max` — per (KV head, cell), the largest attention the cell receives from any
  reference query of the head's query group, normalized over every cell of the cache;
- :func:`chunk_select` — cells grouped in chunks of ``c`` consecutive span cells, a chunk
  scored by the mean of its cells' scores (summed over layers and heads), the best chunks kept;
- :func:`global_budgets` — KVzip's per-head budgets: one ranking of every (layer, head, cell)
  score, each head keeping its own top cells (uneven budgets), capped so the cells still shrink.

Arrays: K ``[H, N, d]`` (all cells of the layer, position order), Q ``[n_head, n, d]`` with query
head ``h`` reading KV head ``h // r`` (contiguous groups), prior bias ``[H, N]``.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError

#: Query rows per block of the score pass (bounds memory at rows * r * N floats per head).
_BLOCK = 256


def attention_max(K: np.ndarray, Q: np.ndarray, scale: float, prior: np.ndarray | None = None) -> np.ndarray:
    """Per (KV head, cell) the largest softmax attention over the queries of its group, ``[H, N]``.

    Parameters
    ----------
    K : [H, N, d] keys of every cell (post-RoPE, as stored).
    Q : [n_head, n, d] reference queries; n_head must be a multiple of H.
    scale : the layer's kq_scale (logits are ``scale * q.k + prior``).
    prior : [H, N] bias already on the cells (a compacted cache), or None.

    Returns
    -------
    [H, N, r] float32: the maximum over queries, per query head of the group (sum or max them).
    """
    H, N, _ = K.shape
    n_head, n, _ = Q.shape
    if n_head % H:
        raise ConfigError(f"{n_head} query heads do not group onto {H} KV heads")
    r = n_head // H
    out = np.zeros((H, N, r), np.float32)
    for h in range(H):
        Kh = K[h].astype(np.float32)
        for a in range(0, n, _BLOCK):
            q = Q[h * r : (h + 1) * r, a : a + _BLOCK].astype(np.float32)  # [r, b, d]
            z = scale * (q @ Kh.T)  # [r, b, N]
            if prior is not None:
                z += prior[h][None, None, :]
            z -= z.max(axis=2, keepdims=True)
            np.exp(z, out=z)
            z /= z.sum(axis=2, keepdims=True)
            np.maximum(out[h], z.max(axis=1).T, out=out[h])
    return out


def chunk_select(scores: np.ndarray, n_keep: int, chunk: int) -> np.ndarray:
    """Span indices (sorted) of the best chunks of ``chunk`` consecutive cells, ``n_keep`` in all.

    ``scores`` [T] are per-cell scores of the span; a chunk scores the mean of its cells (a
    short last chunk included). Chunks are taken best first; the last one taken is trimmed to
    its best cells so exactly ``min(n_keep, T)`` cells are kept.
    """
    if not (isinstance(chunk, int) and chunk >= 1):
        raise ConfigError(f"chunk must be an integer >= 1 (cells), not {chunk!r}")
    scores = np.asarray(scores, np.float64)
    T = len(scores)
    n_keep = int(min(max(n_keep, 0), T))
    starts = np.arange(0, T, chunk)
    means = np.add.reduceat(scores, starts) / np.diff(np.append(starts, T))
    kept: list[np.ndarray] = []
    left = n_keep
    for c in np.argsort(-means, kind="stable"):
        if left <= 0:
            break
        cells = np.arange(starts[c], min(starts[c] + chunk, T))
        if len(cells) > left:  # the last chunk: its best cells
            cells = np.sort(cells[np.argsort(-scores[cells], kind="stable")[:left]])
        kept.append(cells)
        left -= len(cells)
    return np.sort(np.concatenate(kept)) if kept else np.zeros(0, np.int64)


def global_budgets(scores: list[np.ndarray], t: int) -> list[np.ndarray]:
    """KVzip's selection: one ranking of every (layer, head, cell) score.

    ``scores[l]`` is ``[H_l, T]`` (per head and span cell). A score is kept when it is among the
    best ``t * sum(H_l)`` of all heads (uniform's total of keys), so heads whose cells matter
    more keep more of them; a cell holds every head, so a head keeps at most its best ``t`` and
    the cells shrink by the ratio (heads over the cap give their surplus up: fewer keys in all
    than uniform). Returns per layer ``[H_l, t]`` span indices, sorted, padded with -1.
    """
    flat = np.concatenate([s.ravel() for s in scores])
    n_keep = min(len(flat), t * sum(s.shape[0] for s in scores))
    theta = np.partition(flat, len(flat) - n_keep)[len(flat) - n_keep]
    out = []
    for s in scores:
        idx = np.full((s.shape[0], t), -1, np.int64)
        for h, row in enumerate(s):
            cand = np.flatnonzero(row >= theta)
            if len(cand) > t:
                cand = np.sort(cand[np.argsort(-row[cand], kind="stable")[:t]])
            idx[h, : len(cand)] = cand
        out.append(idx)
    return out
