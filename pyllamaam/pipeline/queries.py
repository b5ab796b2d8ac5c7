"""Stage 2, queries: the reference queries the selection and the fit read (a repeat pass, the
question, the context's tail, ...: :mod:`pyllamaam.queries`), or those captured in advance
(:func:`reference_queries`)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import kvsplit
from .. import queries as qsources
from ..compact.select import SELECTORS
from ..errors import ConfigError
from ..kv import KVState
from .options import CACHE_SCORED, PIPELINE_DEFAULTS, QUERY_OPTIONS, SHARED_EVICTIONS
from .plan import Plan, check_args, check_gate, selector_of
from .refs import ReferenceQueries
from .select import candidate_mask
from .state import Compaction, Cut

if TYPE_CHECKING:
    from ..host import Host


def run(c: Compaction) -> None:
    c.tell("queries", 0, 1)
    clock = time.perf_counter()
    kv, plan = c.kv, c.plan
    span_pos = kv.positions[c.cut.split.span]
    c.span = (int(span_pos[0]), int(span_pos[-1]))
    c.candidates, qopts = candidates(c.session, kv, plan, c.cut)
    if not needs_queries(plan):
        c.Q = {}
    elif plan.given is None:
        c.Q = qsources.collect(c.session, plan.qspec, c.span, task=plan.task, snapshot=c.blob, kv=kv, **qopts)
    else:
        check_given(plan.given, c.span, kvsplit.span_of(kv, c.cut.user), c.n_cells0)
        c.Q = plan.given.queries
    c.rep.seconds["queries"] = time.perf_counter() - clock
    c.tell("queries", 1, 1)


def candidates(session: Host, kv: KVState, plan: Plan, cut: Cut) -> tuple[np.ndarray | None, dict]:
    """With ``span_score="cache+repeat"``: the span cells of the best units by cache score,
    ``span_candidates`` of the span (a mask), and the query options that repeat only them."""
    pipe = plan.pipe
    if plan.shared or not pipe["spans"] or pipe["span_score"] != "cache+repeat":
        return None, plan.qopts
    mask = candidate_mask(session, kv, cut.user, plan.layers, pipe["chunk"], pipe["span_candidates"])
    if plan.given is not None:
        return mask, plan.qopts
    return mask, repeat_only(kv, cut.user, mask, plan.qspec, plan.qopts)


def repeat_only(kv: KVState, split: kvsplit.Split, mask: np.ndarray, spec: str, qopts: dict) -> dict:
    """``qopts`` with the repeat pass restricted to the span cells of ``mask``, where ``spec``
    repeats the span in full (no ``repeat_max_tokens`` given)."""
    if "repeat" not in spec.split("+") or "repeat_max_tokens" in qopts:
        return qopts
    return {**qopts, "repeat_positions": kv.positions[split.span][mask]}


def needs_queries(plan: Plan) -> bool:
    """False where nothing reads the reference queries: whole units scored from the cache fill
    the whole budget (``spans=1``), so there is nothing to fit and no pass to run."""
    pipe = plan.pipe
    return bool(plan.shared or not pipe["spans"] or pipe["span_score"] not in CACHE_SCORED or pipe["spans"] < 1)


def reference_queries(
    session: Host,
    queries: str = "repeat",
    keep_first: int = 4,
    keep_last: int = 32,
    task: str | None = None,
    ratio: float | None = None,
    target_cells: int | None = None,
    method: str = "am",
    recent: float = PIPELINE_DEFAULTS["recent"],
    spans: float = PIPELINE_DEFAULTS["spans"],
    span_score: str = PIPELINE_DEFAULTS["span_score"],
    span_candidates: float = PIPELINE_DEFAULTS["span_candidates"],
    chunk: Any = PIPELINE_DEFAULTS["chunk"],
    **options: Any,
) -> ReferenceQueries:
    """Capture the reference queries :func:`compact` would use, once, for several compactions
    of the same cache (different ratios or methods); the session is unchanged.

    Without ``ratio``/``target_cells`` they cover the whole span between ``keep_first`` and
    ``keep_last`` and serve any compaction; with them, the span that this one compaction fits
    (fitted methods with ``spans=0`` move part of the budget to an exact recent window, option
    ``recent``; with ``span_score="cache+repeat"`` the repeat pass reads the candidate
    sentences only), as ``compact`` would capture them itself."""
    layers = check_gate(session)
    spec = "+".join(qsources.parse_spec(queries))
    bad = set(options) - set(QUERY_OPTIONS)
    if bad:
        raise ConfigError(f"unknown query option(s) {sorted(bad)}; known: {', '.join(QUERY_OPTIONS)}")
    kv = session.get_kv()
    if ratio is None and target_cells is None:
        check_args(2.0, None, keep_first, keep_last)
        span = kvsplit.span_of(kv, kvsplit.split_cells(kv, keep_first, keep_last))
    else:
        check_args(ratio, target_cells, keep_first, keep_last)
        # with spans (the default) and the shared evictions the fit covers the user's whole span
        fitted = method not in SHARED_EVICTIONS and SELECTORS[selector_of(method)].fits
        split = kvsplit.splits(kv, keep_first, keep_last, ratio, target_cells, fitted and not spans, recent)[1]
        span = kvsplit.span_of(kv, split)
        if fitted and spans and span_score == "cache+repeat":
            mask = candidate_mask(session, kv, split, layers, chunk, span_candidates)
            options = repeat_only(kv, split, mask, spec, options)
    clock = time.perf_counter()
    Q = qsources.collect(session, spec, span, task=task, **options)
    return ReferenceQueries(spec, span, session.n_cells, Q, time.perf_counter() - clock)


def check_given(given: ReferenceQueries, span: tuple[int, int], whole: tuple[int, int], n_cells: int) -> None:
    """Queries captured for the span fitted, or for the whole span (which serve any ratio)."""
    if given.span not in (span, whole) or given.n_cells != n_cells:
        raise ConfigError(
            f"these reference queries were captured for span {given.span} of {given.n_cells} cells; "
            f"the cache now has span {span} of {n_cells} cells (capture them again, with the same "
            "keep_first/keep_last)"
        )
