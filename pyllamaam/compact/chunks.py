"""Shared, span-preserving selection: which cells every head and layer keeps exactly.

A fact lives in a few consecutive tokens (its cue words and its value) and a question reads it
through every layer and head at once. Per-head top-k selection and least-squares fits split
such a span across heads and layers and lose it, even at 2x. Here cells are scored once for the
whole model and kept in contiguous chunks, the same chunks in every head and layer (ChunkKV's
unit of selection, KVzip's repeat-pass scores):

- :func:`attention_max` — per (KV head, cell), the largest attention the cell receives from any
  reference query of the head's query group, normalized over every cell of the cache;
- :func:`chunk_select` — cells grouped in chunks of ``c`` consecutive span cells, a chunk
  scored by the mean of its cells' scores (summed over layers and heads; or their sum over a
  power of its length below 1), the best chunks kept;
- :func:`cache_scores` — a query-free score from the cache itself: how far a cell's key points
  from its head's mean key direction (KeyDiff's novelty) and how large its value is, ranked;
- :func:`global_budgets` — KVzip's per-head budgets: one ranking of every (layer, head, cell)
  score, each head keeping its own top cells (uneven budgets), capped so the cells still shrink.

Arrays: K ``[H, N, d]`` (all cells of the layer, position order), Q ``[n_head, n, d]`` with query
head ``h`` reading KV head ``h // r`` (contiguous groups), prior bias ``[H, N]``.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ._attention import attention_stats


def attention_max(K: np.ndarray, Q: np.ndarray, scale: float, prior: np.ndarray | None = None) -> np.ndarray:
    """Per (KV head, cell, query head of its group) the largest softmax attention over the queries.

    Parameters
    ----------
    K : [H, N, d] keys of every cell (post-RoPE, as stored).
    Q : [n_head, n, d] reference queries; n_head must be a multiple of H.
    scale : the layer's kq_scale (logits are ``scale * q.k + prior``).
    prior : [H, N] bias already on the cells (a compacted cache), or None.

    Returns
    -------
    [H, N, r]: the maximum over queries, per query head of the group (sum or max them).
    """
    H, N, _ = K.shape
    n_head = Q.shape[0]
    if n_head % H:
        raise ConfigError(f"{n_head} query heads do not group onto {H} KV heads")
    r = n_head // H
    # every query head on its own KV head's keys: the kernel's chunked pass, key scores only
    Kq = np.repeat(K, r, axis=0)
    pq = None if prior is None else np.repeat(prior, r, axis=0)
    mx = attention_stats(Kq, None, Q, scale, pq, scores=("max",), output=False).score_max  # [n_head, N]
    return mx.reshape(H, r, N).transpose(0, 2, 1)


#: ``length_power`` of :func:`chunk_select` for the sentences a query-agnostic compaction keeps
#: whole: ranked by :func:`cache_scores` (``span_score="cache"``) or by the repeat pass's attention
#: (``"cache+repeat"``, the default; its candidate mask still ranks by the mean, and a question's
#: attention ranks by the mean), a unit scores its cells' sum over ``len ** 0.7``. The mean (1.0)
#: of a few cells is the noisiest, and fragments (a blank line, ``(P``) outranked whole planted
#: facts. Share of the QA tuning documents' answers (seeds 1-9, 81 per cell, 1K tokens) whose
#: sentence the cache's own scores kept at 3.2x / 4.5x / 6.4x fewer cells: Qwen2.5-0.5B 0.85 /
#: 0.78 / 0.70 with the mean, 0.91 / 0.83 / 0.75 with 0.7; SmolLM2-135M 0.62 / 0.58 / 0.48, 0.69
#: / 0.59 / 0.52 (0.6 and 0.8 within two answers of 0.7; shrinking the mean towards the span's
#: mean gained less). On seeds 10-29 (180 answers, not used to choose it): Qwen2.5 0.85 / 0.75 /
#: 0.62 -> 0.91 / 0.85 / 0.74, SmolLM2 0.58 / 0.49 / 0.39 -> 0.64 / 0.56 / 0.48. The default's
#: repeat ranking, answers it kept verbatim at 3.4x / 6.8x fewer cells on seeds 1-9: SmolLM2
#: 46 -> 50 / 34 -> 37 of 81, Qwen2.5 48 -> 53 / 37 -> 41 of 72 (0.7 on the candidate mask too
#: gained nothing more)
UNIT_POWER = 0.7


def chunk_select(scores: np.ndarray, n_keep: int, chunk: int | np.ndarray, length_power: float = 1.0) -> np.ndarray:
    """Span indices (sorted) of the best units of consecutive cells, ``n_keep`` cells in all.

    ``scores`` [T] are per-cell scores of the span. The units are chunks of ``chunk`` cells, or,
    with an array, the units starting at those span indices (e.g. :func:`sentence_starts`). A
    unit scores the sum of its cells over its length to the ``length_power`` (1: the mean; less
    favours longer units); units are taken best first and the last one taken is trimmed to its
    best cells, so exactly ``min(n_keep, T)`` cells are kept.
    """
    scores = np.asarray(scores, np.float64)
    T = len(scores)
    if isinstance(chunk, (int, np.integer)) and not isinstance(chunk, bool):
        if chunk < 1:
            raise ConfigError(f"chunk must be an integer >= 1 (cells), not {chunk!r}")
        starts = np.arange(0, T, int(chunk))
    else:
        starts = np.asarray(chunk, np.int64)
        if len(starts) == 0 or starts[0] != 0 or np.any(np.diff(starts) <= 0) or starts[-1] >= T:
            raise ConfigError("unit starts must begin at 0 and increase inside the span")
    n_keep = int(min(max(n_keep, 0), T))
    ends = np.append(starts[1:], T)
    value = np.add.reduceat(scores, starts) / (ends - starts) ** float(length_power)
    kept: list[np.ndarray] = []
    left = n_keep
    for c in np.argsort(-value, kind="stable"):
        if left <= 0:
            break
        cells = np.arange(starts[c], ends[c])
        if len(cells) > left:  # the last unit: its best cells
            cells = np.sort(cells[np.argsort(-scores[cells], kind="stable")[:left]])
        kept.append(cells)
        left -= len(cells)
    return np.sort(np.concatenate(kept)) if kept else np.zeros(0, np.int64)


def cache_scores(layers, bias=None) -> np.ndarray:
    """Per span cell, a score read from the cache alone (no forward pass): the rank of its key
    novelty plus the rank of its value norm, each summed over layers and KV heads.

    Key novelty is ``1 - cos(k, a)`` with ``a`` the head's mean unit key over the span (KeyDiff):
    most text shares a few key directions, and a cell whose key stands apart holds content the
    rest does not. A planted fact (a name, a code) also writes larger values.

    Parameters
    ----------
    layers : iterable of (K ``[H, T, d]``, V ``[H, T, dv]``) span arrays, one pair per layer.
    bias : optional iterable of ``[H, T]`` biases of the same layers; cells whose bias is -inf in
        every head of a layer (padding of an earlier compaction) score lowest.

    Returns
    -------
    [T] float64 in [0, 2].
    """
    novelty = norms = None
    dead = None
    bias = iter(bias) if bias is not None else None
    for K, V in layers:
        K = np.asarray(K, np.float64)
        live = np.ones(K.shape[1], bool)
        b = next(bias, None) if bias is not None else None
        if b is not None:
            live = ~np.all(np.isneginf(b), axis=0)
        unit = K / np.maximum(np.linalg.norm(K, axis=2, keepdims=True), 1e-30)
        anchor = unit[:, live].mean(axis=1) if live.any() else unit.mean(axis=1)
        anchor /= np.maximum(np.linalg.norm(anchor, axis=1, keepdims=True), 1e-30)
        nov = (1.0 - np.einsum("htd,hd->ht", unit, anchor)).sum(axis=0)
        vn = np.linalg.norm(np.asarray(V, np.float64), axis=2).sum(axis=0)
        novelty = nov if novelty is None else novelty + nov
        norms = vn if norms is None else norms + vn
        dead = ~live if dead is None else dead | ~live
    if novelty is None:
        raise ConfigError("cache_scores needs at least one layer")
    score = _rank(novelty) + _rank(norms)
    score[dead] = -1.0
    return score


def with_surprisal(cache: np.ndarray, nll: np.ndarray) -> np.ndarray:
    """Per span cell, the rank of its :func:`cache_scores` plus the rank of its token's surprisal
    ``nll`` (negative log-likelihood given the text before it), in [0, 2]; padding cells (cache
    score below 0) stay lowest. Text the model cannot predict (a code, a name, a number) holds
    what a later question asks for; the cache's scores alone missed it on the smaller model.
    Answer-sentence recall on the QA tuning documents (seeds 1-9, 81 answers, 1K tokens) at
    3.2x / 4.5x / 6.4x / 12.8x fewer cells, sentences by sum over ``len ** UNIT_POWER``:
    SmolLM2-135M 54 / 50 / 42 / 33 (cache scores) -> 69 / 63 / 55 / 41, Qwen2.5-0.5B 74 / 67 /
    62 / 38 -> 78 / 70 / 62 / 37 (surprisal alone: SmolLM2 70 / 66 / 57 / 38, Qwen2.5 67 / 65 /
    60 / 39). On seeds 10-18, not used to choose it: SmolLM2 51 / 47 / 42 / 35 -> 73 / 63 / 50 /
    41, Qwen2.5 74 / 70 / 61 / 34 -> 77 / 72 / 63 / 38."""
    cache = np.asarray(cache, np.float64)
    score = _rank(cache) + _rank(np.asarray(nll, np.float64))
    score[cache < 0] = -1.0
    return score


def _rank(x: np.ndarray) -> np.ndarray:
    """Ranks of ``x`` scaled to [0, 1] (ties broken by position)."""
    r = np.empty(len(x))
    r[np.argsort(x, kind="stable")] = np.arange(len(x))
    return r / max(1, len(x) - 1)


def sentence_starts(pieces: list[str], max_len: int = 32) -> np.ndarray:
    """Starts of sentence units over tokens whose texts are ``pieces``: a unit ends after a
    token that ends a sentence or a line (``.``, ``?``, ``!``, ``;``, a newline), so a fact's cue
    words and its value stay together; longer units are cut in even pieces of <= ``max_len``."""
    ends = [i + 1 for i, p in enumerate(pieces) if "\n" in p or p.rstrip().endswith((".", "?", "!", ";"))]
    bounds = sorted({0, *(e for e in ends if e < len(pieces)), len(pieces)})
    starts: list[int] = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        k = -(-(b - a) // max_len)
        starts += np.linspace(a, b, k + 1).round().astype(int)[:-1].tolist()
    return np.asarray(starts, np.int64)


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
