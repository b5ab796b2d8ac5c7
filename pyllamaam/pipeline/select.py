"""Stage 3, select: the cells chosen once for every head and layer: whole units (sentences) by
option ``spans`` and the shared evictions ("chunkkv", "kvzip"), scored by the cache itself or by
the attention the reference queries give them. Per-head selection happens inside the fit."""

from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING

import numpy as np

from .. import kvsplit
from ..compact import chunks
from ..compact.parallel import map_layers
from ..compact.result import PAD, CompactedLayer
from ..errors import ConfigError, PyllamaamError
from ..kv import KVState
from ..report import CompactionReport
from .options import CACHE_SCORED
from .plan import Plan, workers
from .state import Compaction, Cut

if TYPE_CHECKING:
    from ..host import Host

log = logging.getLogger("pyllamaam.pipeline")


def run(c: Compaction) -> None:
    if c.plan.shared or c.plan.pipe["spans"]:
        c.tell("select", 0, 1)
        c.cut = shared_cut(c.session, c.kv, c.plan, c.cut, c.Q, c.rep, c.candidates)
        c.tell("select", 1, 1)
    c.rep.verbatim = verbatim(c.kv, c.plan, c.cut)


def shared_cut(session: Host, kv: KVState, plan: Plan, cut: Cut, Q, rep: CompactionReport,
                candidates: np.ndarray | None = None) -> Cut:
    """The cells chosen once for every head and layer (option ``spans``, methods "chunkkv" and
    "kvzip"), from the attention the reference queries ``Q`` give the user's span.

    ``spans`` < 1 returns a cut whose exact cells are the chosen chunks, the fit compacting the
    rest; a selection that fits nothing comes back in ``evict`` (original keys, values, bias)."""
    clock = time.perf_counter()
    user, t = cut.user, cut.t
    power = 1.0
    if not plan.shared and plan.pipe["span_score"] in CACHE_SCORED:
        total, power = cache_scores(kv, user, plan.layers), chunks.UNIT_POWER
        if plan.pipe["span_score"] == "cache+surprisal":
            total = chunks.with_surprisal(total, surprisal(session, kv, user))
    else:
        scores = span_scores(session, kv, user, Q, plan.layers, plan.pipe)
        if plan.shared == "kvzip":
            rep.seconds["select"] = time.perf_counter() - clock
            per_head = chunks.global_budgets([scores[il].max(axis=2) for il in plan.layers], t)
            return Cut(user, user, t, 0, None, kept(kv, user, dict(zip(plan.layers, per_head, strict=True))))
        total = sum(scores[il].sum(axis=(0, 2)) for il in plan.layers)
        if candidates is not None:  # only the candidates were read again: they go first
            total = np.where(candidates, total, -1.0)
            if plan.task is None:  # query-agnostic: a question's attention picks its sentence by the mean
                power = chunks.UNIT_POWER
    n_exact = t if plan.shared else int(round(plan.pipe["spans"] * t))
    pin = plan.pipe["pin"]
    pieces = span_pieces(session, kv, user) if plan.pipe["chunk"] == "sentence" or pin is not None else None
    units = unit_starts(pieces, plan.pipe["chunk"])
    if pin is not None:
        if pieces is None:
            raise ConfigError("pin= needs the text of the whole cache: this session's tokens do not cover it")
        pinned = pinned_units(pieces, units, pin)
        if pinned.sum() > n_exact:
            log.warning("pin: the matching sentences hold %d cells, more than the %d kept verbatim; "
                        "the best of them are kept", int(pinned.sum()), n_exact)
        # pinned units first, whatever their length: the offset outweighs any unit's length factor
        total = np.where(pinned, total + (1.0 + np.abs(total).max()) * (1.0 + 2.0 * len(total)), total)
    exact = chunks.chunk_select(total, n_exact, units, power)
    rep.seconds["select"] = time.perf_counter() - clock
    if plan.shared or n_exact >= t:  # nothing left to fit: the chunks as they are
        H = {il: kv.keys[il].shape[1] for il in plan.layers}
        idx = {il: np.broadcast_to(exact, (H[il], len(exact))) for il in plan.layers}
        return Cut(user, user, t, 0, exact, kept(kv, user, idx))
    return Cut(user, user, t, len(exact), exact)


def cache_scores(kv: KVState, split: kvsplit.Split, layers) -> np.ndarray:
    """:func:`~pyllamaam.compact.chunks.cache_scores` of the span of ``split``."""
    return chunks.cache_scores(
        (kvsplit.span_arrays(kv, il, split) for il in layers), (kv.bias[il][split.span].T for il in layers)
    )


def surprisal(session: Host, kv: KVState, split: kvsplit.Split) -> np.ndarray:
    """Per span cell, its token's negative log-likelihood given the text before it
    (:meth:`~pyllamaam.engine.Session.token_nll`: as recorded while reading, else the text read
    again)."""
    pos = kv.positions[split.span]
    n = int(pos.max()) + 1
    # not a ConfigError: the compaction falls back (and compact(memory=) to the default)
    if len(session.tokens) < n:
        raise PyllamaamError("span_score='cache+surprisal' needs each token's surprisal: the session's tokens "
                             "do not cover the text")
    try:
        return session.token_nll(n)[pos].astype(np.float64)
    except ConfigError as err:  # not recorded, and too long to read again
        raise PyllamaamError(f"span_score='cache+surprisal' reads the text again: {err}") from err


def candidate_mask(session: Host, kv: KVState, user: kvsplit.Split, layers, chunk, share: float) -> np.ndarray:
    """Over the span: the cells of the best units by cache score, ``share`` of the span."""
    T = len(user.span)
    units = units_of(session, kv, user, chunk)
    keep = chunks.chunk_select(cache_scores(kv, user, layers), int(np.ceil(share * T)), units)
    mask = np.zeros(T, bool)
    mask[keep] = True
    return mask


def units_of(session: Host, kv: KVState, split: kvsplit.Split, chunk):
    """The selection units of option ``chunk`` over the span (:func:`unit_starts`)."""
    return unit_starts(span_pieces(session, kv, split) if chunk == "sentence" else None, chunk)


def unit_starts(pieces: list[str] | None, chunk):
    """The selection units of option ``chunk`` over a span whose tokens read ``pieces``: a chunk
    size, or sentence starts (a fixed chunk of 8 where the text is unknown: ``pieces`` None)."""
    if chunk != "sentence":
        return chunk
    return 8 if pieces is None else chunks.sentence_starts(pieces)


def span_pieces(session: Host, kv: KVState, split: kvsplit.Split) -> list[str] | None:
    """The text of each span token, or None where the session's tokens do not cover the cache."""
    pos = kv.positions[split.span]
    tokens = session.tokens
    if len(tokens) <= int(pos[-1]):
        return None
    return [session.model.detokenize([tokens[p]]) for p in pos]


def span_scores(session, kv, split, Q, layers, pipe) -> dict[int, np.ndarray]:
    """Per layer ``[H, T, r]``: the largest attention each span cell gets from the reference
    queries of each query head, normalized over every cell (sinks, span and recent window)."""
    order = np.concatenate([split.sinks, split.span, split.recent])
    a, b = len(split.sinks), len(split.sinks) + len(split.span)

    def one(il: int) -> np.ndarray:
        q = Q[il]
        if len(q) > pipe["max_queries"]:  # evenly spread rows bound the cost
            q = q[np.linspace(0, len(q) - 1, pipe["max_queries"]).round().astype(int)]
        K = np.ascontiguousarray(kv.keys[il][order].transpose(1, 0, 2))
        prior = kv.bias[il][order].T
        prior = np.ascontiguousarray(prior) if np.any(prior != 0) else None
        A = chunks.attention_max(K, np.ascontiguousarray(q.transpose(1, 0, 2)), session.kq_scale(il), prior)
        return A[:, a:b]

    return dict(zip(layers, map_layers(one, layers, workers(session, pipe)), strict=True))


def kept(kv: KVState, split: kvsplit.Split, idx: dict[int, np.ndarray]) -> dict[int, CompactedLayer]:
    """Span cells kept as they are (original keys, values and bias), per layer ``[H, t]`` span
    indices padded with PAD (bias -inf there)."""
    out = {}
    for il, ix in idx.items():
        ix = np.asarray(ix, np.int64)
        H, t = ix.shape
        _, V = kvsplit.span_arrays(kv, il, split)
        prior = kvsplit.span_prior(kv, il, split)
        pad = ix == PAD
        safe = np.where(pad, 0, ix)
        beta = np.zeros((H, t)) if prior is None else np.take_along_axis(prior, safe, 1).astype(np.float64)
        beta[pad] = -np.inf
        vals = np.take_along_axis(V, safe[:, :, None], 1)
        vals[pad] = 0
        out[il] = CompactedLayer(ix, beta, vals, np.zeros(H, np.int64), (), {})
    return out


def verbatim(kv: KVState, plan: Plan, cut: Cut) -> list[list[int]]:
    """Position ranges ``[first, last]`` kept as they are in every layer and head: the sinks,
    the recent window (with the plain fit's exact window, the same in every head) and the
    chunks chosen for every head (``cut.exact``)."""
    split = cut.user if plan.fill else cut.split
    parts = [split.sinks, split.recent]
    if cut.exact is not None:
        parts.append(cut.user.span[cut.exact])
    pos = np.unique(kv.positions[np.concatenate(parts)])
    if not len(pos):
        return []
    breaks = np.flatnonzero(np.diff(pos) != 1)
    starts, ends = np.append(pos[0], pos[breaks + 1]), np.append(pos[breaks], pos[-1])
    return [[int(a), int(b)] for a, b in zip(starts, ends, strict=True)]


def pinned_units(pieces: list[str], units, pattern: re.Pattern) -> np.ndarray:
    """Over the span (its tokens' ``pieces``): the cells of the units (:func:`unit_starts`) whose
    text ``pattern`` matches."""
    T = len(pieces)
    starts = np.arange(0, T, units) if isinstance(units, int) else units
    mask = np.zeros(T, bool)
    for a, b in zip(starts, np.append(starts[1:], T), strict=True):
        if pattern.search("".join(pieces[a:b])):
            mask[a:b] = True
    return mask

