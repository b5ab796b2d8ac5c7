"""Stage 4, fit: per layer and KV head, the keys kept, their biases (NNLS) and values (least
squares) on the reference queries (:mod:`pyllamaam.compact`), in ``on_policy`` layer groups,
then the per-head guards on held-out queries."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import kvsplit
from .. import queries as qsources
from ..compact import (
    allocate_budgets,
    keep_mask_topk,
    load_head_budgets,
    proportions_array,
    spanfit,
    task_position_scores,
)
from ..compact.parallel import map_layers
from ..compact.result import CompactedLayer
from ..errors import ConfigError
from ..guards import VARIANTS, guard_layer
from ..kv import KVState
from ..queries import rows
from .plan import uniform, workers
from .state import Compaction

if TYPE_CHECKING:
    pass


def run(c: Compaction) -> None:
    if c.cut.evict is not None:  # a selection kept as it is: nothing to fit
        c.fitted, c.held_q = c.cut.evict, {}
    else:
        c.fitted, c.held_q = fit_layers(c.session, c.kv, c.plan, c.cut, c.span, c.Q, c.rep, c.tell)


def fit_layers(session, kv, plan, cut, span, Q, rep, tell) -> tuple[dict[int, CompactedLayer], dict[int, np.ndarray]]:
    """Every layer fitted, in ``on_policy`` groups (each later group's queries re-captured on the
    cache with the groups before it written); returns the fits and the held-out queries left for
    verify."""
    pipe, layers, selector, split, t, extra = plan.pipe, plan.layers, plan.selector, cut.split, cut.t, cut.extra
    clock = time.perf_counter()
    tell("fit", 0, len(layers))
    fit_q, held_q = rows.split_queries(Q, pipe["heldout"], pipe["max_queries"], session, pipe["max_heldout"])
    rep.n_queries = int(sum(len(q) for q in next(iter(fit_q.values()))))
    T = len(cut.user.span)
    if plan.fill:
        per_head = head_budgets(plan.budgets, layers, kv, T, t - extra, t / max(1, t - extra), "keys")
        window = {il: t - np.asarray(b) for il, b in per_head.items()}
    else:
        cells = "ratio" if pipe["budget_cells"] == "fill" else pipe["budget_cells"]  # eviction: no window to fill
        per_head = head_budgets(plan.budgets, layers, kv, len(split.span), t - extra, pipe["budget_cap"], cells)
        window = dict.fromkeys(layers)
    if selector == "keep" and "keep" not in plan.options:
        plan.options["keep"] = briefing_mask(session, kv, split, fit_q, layers, t)
    fitted: dict[int, CompactedLayer] = {}
    recapture = 0.0
    for g, group in enumerate(layer_groups(layers, pipe["on_policy"], plan.given, plan.qspec)):
        if g > 0:  # on-policy: the next layers' queries see the layers fitted so far
            tick = time.perf_counter()
            session.set_kv(kvsplit.partial(kv, split, fitted))
            Q = qsources.collect(session, plan.qspec, span, task=plan.task, **plan.qopts)
            fq, hq = rows.split_queries(Q, pipe["heldout"], pipe["max_queries"], session, pipe["max_heldout"])
            for il in group:
                fit_q[il], held_q[il] = fq[il], hq[il]
            recapture += time.perf_counter() - tick

        def fit(il: int) -> CompactedLayer:
            return fit_one(session, kv, plan, cut, il, fit_q[il], per_head[il], window[il])

        counted = tell.counting("fit", fit, len(layers))
        fitted.update(zip(group, map_layers(counted, group, workers(session, pipe)), strict=True))
    if pipe["guard"] and plan.fits:
        held_q = apply_guards(kv, split, fitted, held_q, session, rep, workers(session, pipe))
    rep.seconds["fit"] = time.perf_counter() - clock - recapture
    rep.seconds["queries"] += recapture
    return fitted, held_q


def fit_one(session, kv, plan, cut, il, q, budget, window) -> CompactedLayer:
    """Layer ``il``'s fit on its queries ``q``: next to the exact chunks of option ``spans``, or
    with each head's exact recent window (head budgets with ``budget_cells="fill"``; None: the
    plain fit)."""
    K, V = kvsplit.span_arrays(kv, il, cut.split)
    scale, prior, chunks = session.kq_scale(il), kvsplit.span_prior(kv, il, cut.split), plan.pipe["chunk_tokens"]
    kw = dict(plan.options, method=plan.selector)
    if cut.exact is not None:
        exact = np.broadcast_to(cut.exact, (K.shape[0], len(cut.exact)))
        return spanfit.fit_layer_exact(K, V, q, cut.t - cut.extra, exact, scale, prior, chunks, **kw)
    return spanfit.fit_layer_windows(K, V, q, budget, window, scale, prior, chunks, **kw)


def head_budgets(budgets, layers, kv: KVState, T: int, t: int, cap: float, cells: str = "ratio") -> dict[int, Any]:
    if cells not in ("fill", "ratio", "keys"):
        raise ConfigError(f"budget_cells must be 'fill', 'ratio' or 'keys', not {cells!r}")
    if uniform(budgets):
        return {il: t for il in layers}
    props = load_head_budgets(budgets) if isinstance(budgets, (str, Path)) else dict(budgets)
    H = {kv.keys[il].shape[1] for il in layers}
    if len(H) != 1:
        raise ConfigError("head budgets need the same number of KV heads in every compacted layer")
    n_layer = 1 + max(max(layers), *(int(k[1:].split("H")[0]) for k in props))
    p = proportions_array(props, n_layer, H.pop())[layers]
    plan = allocate_budgets(p / p.sum(), T, T / t, cap=min(T, max(t, round(cap * t))))
    b = plan.budgets
    if cells == "ratio" and b.max() > t:  # the largest head gets t: the cells shrink by the ratio
        b = np.maximum(1, np.floor(b * (t / b.max()))).astype(np.int64)
    return {il: b[i] for i, il in enumerate(layers)}


def layer_groups(layers: list[int], n_groups, given, qspec: str) -> list[list[int]]:
    if not (isinstance(n_groups, int) and 1 <= n_groups <= len(layers)):
        raise ConfigError(f"on_policy must be an integer in [1, {len(layers)}] (layer groups), not {n_groups!r}")
    if n_groups > 1 and (given is not None or qspec == "context"):
        raise ConfigError("on_policy > 1 re-captures queries: it needs a forward-pass source, not "
                          "'context' or queries captured in advance")
    return [list(g) for g in np.array_split(np.asarray(layers), n_groups)]


def briefing_mask(session, kv, split, fit_q, layers, t) -> np.ndarray:
    """Latent Briefing: one keep mask for every head, top-t by task-query attention."""
    per_layer = ((kvsplit.span_arrays(kv, il, split)[0], fit_q[il], session.kq_scale(il)) for il in layers)
    return keep_mask_topk(task_position_scores(per_layer), t)


def apply_guards(kv, split, fitted, held_q, session, rep, workers=None) -> dict[int, np.ndarray]:
    """Guard every fitted head on half of the held-out tokens; returns the other half (verify)."""
    counts = dict.fromkeys(VARIANTS, 0)
    choose = {}
    for il in fitted:
        r = session.layers[il]["n_head"] // session.layers[il]["n_head_kv"]
        choose[il] = (np.arange(held_q[il].shape[1]) // r) % 2 == 0  # rows are token-major, r per token

    def one(il: int):
        K, V = kvsplit.span_arrays(kv, il, split)
        q = held_q[il][:, choose[il]]
        return guard_layer(K, V, q, session.kq_scale(il), fitted[il], kvsplit.span_prior(kv, il, split))

    layers = list(fitted)
    for il, g in zip(layers, map_layers(one, layers, workers), strict=True):  # heads are independent
        fitted[il] = g.layer
        for c in g.choice:
            counts[VARIANTS[c]] += 1
    verify_q = {il: held_q[il][:, ~choose[il]] for il in fitted}
    rep.guards = {
        **counts,
        "zero_weight_keys": int(sum(int(np.sum(r.zero_weights)) for r in fitted.values())),
        "rejected_value_heads": int(sum(len(r.fallback_heads) for r in fitted.values())),
    }
    return verify_q

