"""compact(): extract KV -> reference queries -> fit per layer -> write back -> verify/rollback.

The math lives in :mod:`pyllamaam.compact`, the query sources in :mod:`pyllamaam.queries`, the
split of the cache into sinks, span and recent window in :mod:`pyllamaam.kvsplit`; this module
only wires them to a :class:`~pyllamaam.engine.Session` (DESIGN.md section 2).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import kvsplit
from . import queries as qsources
from .compact import (
    allocate_budgets,
    attention_errors,
    available_methods,
    chunks,
    keep_mask_topk,
    load_head_budgets,
    proportions_array,
    spanfit,
    task_position_scores,
)
from .compact.parallel import map_layers
from .compact.result import PAD, CompactedLayer
from .compact.select import SELECTORS
from .errors import CompactionError, ConfigError, UnsupportedLayout
from .guards import VARIANTS, guard_layer
from .kv import KVState
from .progress import Progress, ProgressCallback
from .queries import rows
from .queries.repeat import REPEAT_PROMPT
from .queries.tail import tail_logits
from .report import CompactionReport

if TYPE_CHECKING:
    from .engine import Session

log = logging.getLogger(__name__)

#: Options of :func:`compact` that are not kernel options, with their defaults.
PIPELINE_DEFAULTS: dict[str, Any] = {
    # mean KL(before || after) on the recall probe, nats: a catastrophe gate (AM at 10x on
    # SmolLM2 reads ~1.2 on this probe, window eviction ~2.2)
    "max_kl": 3.0,
    # mean held-out relative output error over layers; None: 0.9 for fitted methods, no gate for
    # eviction baselines (their span-only error often exceeds 1 without harm: see the report)
    "max_attention_error": None,
    "probe_tokens": 24,  # span tokens re-read after the repeat prompt for the KL probe
    # the continuation probe: the context's last this-many tokens (after the span: kept exact)
    # read again before and after, their next-token KL reported as tail_kl. 0: off
    "tail_probe": 32,
    # mean KL on the continuation probe, nats: a catastrophe gate like max_kl (None: report only)
    "max_tail_kl": 3.0,
    # fitted query rows per KV head (evenly subsampled by token). 8192 (every token of a 2K repeat
    # pass on Gemma-3, whose 4 query heads share a KV head) lowered Gemma's answer NLL by 0.31 at
    # 10x on 25 continuation contexts but raised its ΔNLL by 0.02
    "max_queries": 2048,
    "heldout": 0.2,  # fraction of query tokens held out for the guards and the attention-error gate
    "max_heldout": 1024,  # held-out query rows per KV head (half choose the guards, half verify)
    "guard": True,  # per-head guards on fitted methods: shrink or fall back where the fit is worse
    "chunk_tokens": None,  # compact the span in pieces of this many cells (bounded memory)
    # layer groups fitted in order, queries re-captured after each group; None (the default):
    # ON_POLICY_GROUPS groups for fitted methods whose queries come from a forward pass run by
    # this call, else 1 (queries captured in advance or during prefill cannot be re-captured)
    "on_policy": None,
    # layers worked on at once by the array stages (select scores, fit, guards, verify errors),
    # each with a single-threaded BLAS; None: the session's n_threads
    "fit_threads": None,
    "budget_cap": 2.0,  # with budgets: largest head budget, in multiples of the uniform t
    # with budgets, what a head's budget is and how the cells stay shared by every head:
    # "fill" (fitted methods): budgets share uniform's total of fitted keys, and each head fills
    # the rest of the compacted cells with an exact window of its most recent span keys, so every
    # head keeps a key in every cell and the cells shrink by the ratio; "ratio": budgets scaled
    # down until the largest fits the cells (fewer keys in total than uniform); "keys":
    # uniform's total of keys, cells up to budget_cap * t
    "budget_cells": "fill",
    # fitted methods: the share of the compacted budget (compacted span + keep_last) that is an
    # exact recent window; the fit then compacts only the older part. Fitted values on the
    # cells the next tokens read most hurt them: at 4K tokens and 10x on SmolLM2, 0.5 halved the
    # continuation KL of AM against keep_last alone (docs/results/ACCEPTANCE.md). 0: keep_last only
    "recent": 0.5,
    # fitted methods: the share of the compacted budget (span cells kept, not keep_last) held by
    # whole units of consecutive cells (option ``chunk``), the same units in every layer and head,
    # chosen by option ``span_score``; the fit compacts the rest of the span. A fact is a few
    # consecutive tokens read through every head at once: per-head selection and the fit split
    # it and lose it (DESIGN.md section 9). 0.75: on the QA tuning documents (seeds 1-3, 1K
    # tokens, 4x and 10x) it tied 0.9 and 1.0 on answers; the fit of the other quarter kept the
    # continuation ΔNLL of 0.9 (1.0, nothing fitted: +0.13 on SmolLM2 and on Qwen2.5-0.5B at
    # 4x). 0: off (option ``recent`` then holds the exact share)
    "spans": 0.75,
    # the unit of ``spans`` and of method "chunkkv": "sentence" (text up to a sentence or line end,
    # at most 32 tokens: a fact's cue words and its value together) or a number of cells
    "chunk": "sentence",
    # how option ``spans`` scores the units: "cache+repeat" (the cache's own scores pick the
    # candidate units, ``span_candidates`` of the span; the repeat pass reads only those and the
    # largest attention each cell gets from it ranks them), "cache" (the cache alone, no forward
    # pass: key novelty plus value norm, :func:`pyllamaam.compact.chunks.cache_scores`) or
    # "repeat" (the whole span repeated, ranked by its attention). Share of the answers of the QA
    # tuning documents (seeds 1-8, 1K tokens, 72 per cell) whose sentences were kept at 4x / 10x:
    # SmolLM2 0.53 / 0.39 ("cache+repeat"), 0.54 / 0.31 ("cache"), 0.50 / 0.39 ("repeat");
    # Qwen2.5-0.5B 0.63 / 0.43, 0.74 / 0.51, 0.56 / 0.38. "cache" alone lost the planted code of
    # the demo at 4x, which both others keep; "cache+repeat" reads half the text again
    "span_score": "cache+repeat",
    # with span_score "cache+repeat": the share of the span's cells, best units by cache score
    # first, that the repeat pass reads (0.3 lost the demo's planted code, 0.5 kept it)
    "span_candidates": 0.5,
    # with span_score "cache": the share of the span the repeat pass reads for the fit's queries
    # (evenly spread pieces; ``repeat_max_tokens`` given overrides it). The fit covers the tenth of
    # the budget that is not whole sentences
    "fit_repeat": 0.25,
    # a regular expression: the units (sentences) whose text it matches are kept verbatim in every
    # head and layer before any other, with whole-unit selection (``spans`` > 0, "chunkkv", a
    # question); for a user who knows what must survive but not the question
    "pin": None,
}
#: Eviction baselines selected once for the whole model, not per head: "chunkkv" keeps whole
#: chunks of consecutive cells, the same in every head and layer (ChunkKV); "kvzip" ranks every
#: (layer, head, cell) score at once, so heads keep uneven numbers of cells (KVzip). Both score a
#: cell by the largest attention it gets from the reference queries.
SHARED_EVICTIONS = ("chunkkv", "kvzip")
#: The values of option ``span_score``.
SPAN_SCORES = ("cache+repeat", "cache", "repeat")
#: Layer groups of ``on_policy=None``. 3: on the tuning contexts of the continuation grid (both models,
#: 1K and 2K tokens, 10x and 20x) it lowered answer NLL and ΔNLL against one group on both models,
#: for 2-3x the compaction time; the shipped budgets and the self-study mix on top of it did not
#: help consistently. 2 groups cost a third less but lost recall on Gemma and ΔNLL on SmolLM2.
ON_POLICY_GROUPS = 3
#: Where the shipped head budgets live: ``<name>.json`` per catalog model (``pyllamaam budgets compute``).
BUDGETS_DIR = Path(__file__).resolve().parent.parent / "models" / "budgets"
#: ``budgets=None`` (the default) means the model's shipped budgets when this is True, else uniform.
#: False: in the continuation grid (both models, 1K-4K tokens, 10x and 20x, 20 paired cells) the shipped
#: budgets matched uniform on continuation ΔNLL (-0.005 ± 0.007) and KL (-0.004 ± 0.005) and cost
#: recall (answer NLL +0.024 ± 0.011). ``budgets="shipped"`` asks for them.
SHIPPED_BUDGETS_BY_DEFAULT = False


def default_queries(session: Session, fits: bool, keep_last: int) -> str:
    """The query source of ``queries=None``: ``"repeat"`` for fitted methods; for the eviction
    baselines, which fit nothing, the context's last tokens read again (``"tail"``: SnapKV's
    observation window, a pass of ``keep_last`` tokens instead of the whole text), or
    ``"repeat"`` where they cannot be read again (a recurrent state, ``keep_last < 2``)."""
    if fits or session.memory_layout not in ("kv", "iswa") or keep_last < 2:
        return "repeat"
    return "tail"


def shipped_budgets(session: Session) -> Path | None:
    """The budgets file shipped for ``session``'s model, if it is a catalog model that has one."""
    from .catalog import name_of

    name = name_of(session.model.path)
    path = BUDGETS_DIR / f"{name}.json" if name else None
    return path if path is not None and path.is_file() else None


#: The selection behind ``method="am"``: attn-rms, the keys the reference queries need on the
#: whole. With the exact recent window (option ``recent``) it matched the ``hybrid`` selection on
#: continuation KL at 4K tokens and 10x, and it keeps recall of a fact at the start through
#: iterative compaction, which ``hybrid`` lost (docs/results/ACCEPTANCE.md).
AM_SELECTOR = "attn-rms"
#: Options passed to the query sources.
QUERY_OPTIONS = (
    "repeat_prompt", "repeat_max_tokens", "repeat_piece", "repeat_flash", "selfstudy_prompts", "selfstudy_tokens",
    "tail_tokens",
)
#: The kernel's own defaults serve the pipeline: 30 NNLS iterations gave the same KL and ΔNLL
#: as 100 and 300 on SmolLM2 caches (1K tokens, 10x and 20x, two texts; docs/results/options.md).


@dataclass(frozen=True)
class ReferenceQueries:
    """Reference queries captured once and reusable by several :func:`compact` calls.

    Made by :func:`reference_queries` (``Session.reference_queries``) for one state of the
    cache and one compactable span; ``compact(queries=ref)`` checks that the cache still has
    the same cells and span (e.g. after ``Session.restore``) and skips the capture pass.
    """

    spec: str
    span: tuple[int, int]  # first and last position of the compactable span
    n_cells: int
    queries: dict[int, np.ndarray]  # {layer: [n_tokens, n_head, head_dim]}
    seconds: float  # what the capture cost


class _GateFailed(Exception):
    """A verification gate failed (internal: always turned into a fallback)."""


@dataclass
class _Plan:
    """One :func:`compact` call's arguments, resolved and checked before the cache is touched."""

    layers: list[int]
    selector: str
    fits: bool
    qspec: str
    given: ReferenceQueries | None
    task: str | None
    budgets: Any
    pipe: dict[str, Any]  # PIPELINE_DEFAULTS, as given
    qopts: dict[str, Any]  # options of the query sources
    options: dict[str, Any]  # kernel options
    fill: bool  # head budgets whose heads fill the cells with exact recent windows
    shared: str | None = None  # one of SHARED_EVICTIONS


@dataclass
class _Cut:
    """Where the cells go: the user's split, the split fitted, the cells kept (``t``, without
    sinks and ``keep_last``), how many of them are kept exact (``extra``), and which: the user's
    span indices kept exact in every head (``exact``: the chunks chosen by option ``spans``;
    None: the plain recent window)."""

    user: kvsplit.Split
    split: kvsplit.Split
    t: int
    extra: int
    exact: np.ndarray | None
    evict: dict[int, CompactedLayer] | None = None  # a selection kept as it is (nothing to fit)


def compact(
    session: Session,
    ratio: float | None = None,
    target_cells: int | None = None,
    method: str = "am",
    queries: str | ReferenceQueries | None = None,
    keep_first: int = 4,
    keep_last: int = 32,
    budgets: Mapping[str, float] | str | Path | None = None,
    task: str | None = None,
    verify: bool = True,
    progress: ProgressCallback | None = None,
    **options: Any,
) -> CompactionReport:
    """Compact ``session``'s cache in place; see :meth:`Session.compact` and :mod:`pyllamaam.progress`."""
    tell = Progress(progress)
    plan = _plan(session, ratio, target_cells, method, queries, keep_first, keep_last, budgets, task, options)
    rep = CompactionReport(
        method=plan.shared or method, queries=plan.qspec, layers=plan.layers, cells_before=session.n_cells
    )
    rep.on_policy = plan.pipe["on_policy"]
    rep.budgets = "uniform" if _uniform(plan.budgets) else (
        str(plan.budgets) if isinstance(plan.budgets, (str, Path)) else "given"
    )
    rep.bytes_before, rep.bytes_f16 = session.kv_bytes(), session.kv_bytes_f16()

    clock = time.perf_counter()
    tell("extract", 0, 1)
    # one read of the state: the rollback copy, parsed into the arrays, and the scratch passes'
    # and the flash-attention copy's starting state (each read copies the whole cache)
    blob, n_cells0 = session._snapshot(), session.n_cells
    kv = session._kv_of(blob)
    cut = _cut(kv, plan, (keep_first, keep_last, ratio, target_cells))
    rep.seconds["extract"] = time.perf_counter() - clock
    tell("extract", 1, 1)
    tell("queries", 0, 1)
    span_pos = kv.positions[cut.split.span]
    probes, probe_seconds = _read_probes(session, kv, cut, plan, verify, blob)
    try:
        clock = time.perf_counter()
        span = (int(span_pos[0]), int(span_pos[-1]))
        candidates, qopts = _candidates(session, kv, plan, cut)
        if not _needs_queries(plan):
            Q = {}
        elif plan.given is None:
            Q = qsources.collect(session, plan.qspec, span, task=plan.task, snapshot=blob, kv=kv, **qopts)
        else:
            _check_given(plan.given, span, kvsplit.span_of(kv, cut.user), n_cells0)
            Q = plan.given.queries
        rep.seconds["queries"] = time.perf_counter() - clock
        tell("queries", 1, 1)

        if plan.shared or plan.pipe["spans"]:
            tell("select", 0, 1)
            cut = _shared_cut(session, kv, plan, cut, Q, rep, candidates)
            tell("select", 1, 1)
        rep.verbatim = _verbatim(kv, plan, cut)
        if cut.evict is not None:
            fitted, held_q = cut.evict, {}
        else:
            fitted, held_q = _fit(session, kv, plan, cut, span, Q, rep, tell)

        clock = time.perf_counter()
        tell("write", 0, 1)
        written = _write(session, kv, plan, cut, fitted, rep, blob)
        rep.seconds["write"] = time.perf_counter() - clock
        tell("write", 1, 1)

        clock = time.perf_counter()
        tell("verify", 0, 1)
        probe, before, tail = probes
        _verify(session, kv, cut.split, fitted, held_q, probe, before, plan.pipe, rep, verify, (*tail, written))
        rep.seconds["verify"] = time.perf_counter() - clock + probe_seconds
        tell("verify", 1, 1)
    except ConfigError:
        session._write_blob(blob, n_cells0)
        raise
    except BaseException as err:  # crash-safe: whatever happened, the original cache returns
        session._write_blob(blob, n_cells0)
        if not isinstance(err, Exception):
            raise
        rep.fell_back, rep.cells_after, rep.verbatim = True, n_cells0, []
        rep.reason = str(err) if isinstance(err, _GateFailed) else f"{type(err).__name__}: {err}"
        log.warning("compaction fell back, cache restored: %s", rep.reason)
    rep.bytes_after = session.kv_bytes()
    return rep


def _plan(session, ratio, target_cells, method, queries, keep_first, keep_last, budgets, task, options) -> _Plan:
    layers = _check_gate(session)
    if task and method == "am" and queries is None and not options.get("fit"):
        # a known question: whole sentences chosen by its own queries, kept exactly (a fit on a few
        # question queries cannot serve the rest of the text). On the QA tuning documents it kept
        # the answers at 10x (above the full cache's accuracy) for a quarter of a prefill's time
        method = "chunkkv"
    shared = method if method in SHARED_EVICTIONS else None
    if shared and options.get("fit"):
        raise ConfigError(f"method {method!r} is an eviction: it fits nothing (use method='am' with spans=)")
    selector = "window" if shared else _selector(method)
    if task and queries is None:  # a known question: its own queries choose what to keep
        queries = "task"
    if queries is None:
        queries = "repeat" if shared == "kvzip" else default_queries(
            session, options.get("fit", SELECTORS[selector].fits), keep_last
        )
    given = queries if isinstance(queries, ReferenceQueries) else None
    qspec = given.spec if given else "+".join(qsources.parse_spec(queries))
    spans_given, tail_given = "spans" in options, "max_tail_kl" in options
    pipe = {k: options.pop(k, v) for k, v in PIPELINE_DEFAULTS.items()}
    if task and not tail_given:
        # a compaction for one question serves that question (the max_kl probe reads it), not the
        # text's continuation: at 13x on Qwen2.5 the continuation probe read 3.05-3.10 nats and
        # rolled back 8 of one document's 9 compactions whose question probe read 0.3-0.6
        pipe["max_tail_kl"] = None
    qopts = {k: options.pop(k) for k in QUERY_OPTIONS if k in options}
    _check_args(ratio, target_cells, keep_first, keep_last)
    fits = options.get("fit", SELECTORS[selector].fits)
    if isinstance(budgets, str) and budgets == "shipped":
        budgets = shipped_budgets(session)
        if budgets is None:
            raise ConfigError(
                f"no head budgets are shipped for {session.model.path.name} (only for the catalog models "
                f"with a file in {BUDGETS_DIR}); make them with `pyllamaam budgets compute MODEL`"
            )
    elif budgets is None:  # fitted methods: the model's shipped budgets; eviction keeps every head alike
        budgets = (shipped_budgets(session) if SHIPPED_BUDGETS_BY_DEFAULT and fits else None) or "uniform"
    if pipe["max_attention_error"] is None:
        pipe["max_attention_error"] = 0.9 if fits else float("inf")
    fill = fits and pipe["budget_cells"] == "fill" and not _uniform(budgets)
    if not (isinstance(pipe["spans"], (int, float)) and 0 <= pipe["spans"] <= 1):
        raise ConfigError(f"spans must be a number in [0, 1], not {pipe['spans']!r}")
    if pipe["chunk"] != "sentence" and not (isinstance(pipe["chunk"], int) and pipe["chunk"] >= 1):
        raise ConfigError(f"chunk must be 'sentence' or an integer >= 1 (cells), not {pipe['chunk']!r}")
    keep_mask = selector == "keep" or "keep" in options
    if pipe["spans"] and (shared or not fits or fill or keep_mask or not _uniform(budgets)):
        if spans_given:
            raise ConfigError("spans= serves fitted methods with uniform budgets and no keep mask")
        pipe["spans"] = 0.0  # the default serves the plain fit only
    if pipe["pin"] is not None:
        if not isinstance(pipe["pin"], str) or not pipe["pin"]:
            raise ConfigError(f"pin must be a non-empty regular expression, not {pipe['pin']!r}")
        try:
            pipe["pin"] = re.compile(pipe["pin"])
        except re.error as err:
            raise ConfigError(f"pin is not a valid regular expression: {err}") from None
        if not (pipe["spans"] or shared == "chunkkv"):
            raise ConfigError("pin= needs whole-sentence selection: method 'am' with spans > 0, 'chunkkv' "
                              "or a question (not per-head cells)")
    if pipe["span_score"] not in SPAN_SCORES:
        raise ConfigError(f"span_score must be one of {', '.join(SPAN_SCORES)}, not {pipe['span_score']!r}")
    for name in ("span_candidates", "fit_repeat"):
        if not (isinstance(pipe[name], (int, float)) and 0 < pipe[name] <= 1):
            raise ConfigError(f"{name} must be a number in (0, 1], not {pipe[name]!r}")
    if pipe["spans"] and pipe["span_score"] == "cache" and "repeat" in qspec.split("+") and given is None:
        if pipe["fit_repeat"] < 1:
            qopts.setdefault("repeat_max_tokens", pipe["fit_repeat"])
    if shared or (pipe["spans"] and pipe["on_policy"] is None):
        pipe["on_policy"] = 1  # the cells are chosen once, on the queries of the whole cache
    if pipe["on_policy"] is None:  # re-capture needs a forward-pass source run by this call
        forward = fits and given is None and qspec != "context"
        pipe["on_policy"] = min(ON_POLICY_GROUPS, len(layers)) if forward else 1
    return _Plan(layers, selector, fits, qspec, given, task, budgets, pipe, qopts, options, fill, shared)


def _cut(kv: KVState, plan: _Plan, sizes: tuple) -> _Cut:
    """The split of ``kv``'s cells (the exact chunks of option ``spans`` come later)."""
    keep_first, keep_last, ratio, target_cells = sizes
    pipe = plan.pipe
    user, split, t, extra = kvsplit.splits(kv, keep_first, keep_last, ratio, target_cells, plan.fits, pipe["recent"])
    if plan.fill or plan.shared or pipe["spans"]:
        # the queries and the fit cover the user's span
        split = user
    return _Cut(user, split, t, extra, None)


def _candidates(session: Session, kv: KVState, plan: _Plan, cut: _Cut) -> tuple[np.ndarray | None, dict]:
    """With ``span_score="cache+repeat"``: the span cells of the best units by cache score,
    ``span_candidates`` of the span (a mask), and the query options that repeat only them."""
    pipe = plan.pipe
    if plan.shared or not pipe["spans"] or pipe["span_score"] != "cache+repeat":
        return None, plan.qopts
    mask = _candidate_mask(session, kv, cut.user, plan.layers, pipe["chunk"], pipe["span_candidates"])
    if plan.given is not None:
        return mask, plan.qopts
    return mask, _repeat_only(kv, cut.user, mask, plan.qspec, plan.qopts)


def _repeat_only(kv: KVState, split: kvsplit.Split, mask: np.ndarray, spec: str, qopts: dict) -> dict:
    """``qopts`` with the repeat pass restricted to the span cells of ``mask``, where ``spec``
    repeats the span in full (no ``repeat_max_tokens`` given)."""
    if "repeat" not in spec.split("+") or "repeat_max_tokens" in qopts:
        return qopts
    return {**qopts, "repeat_positions": kv.positions[split.span][mask]}


def _cache_scores(kv: KVState, split: kvsplit.Split, layers) -> np.ndarray:
    """:func:`~pyllamaam.compact.chunks.cache_scores` of the span of ``split``."""
    return chunks.cache_scores(
        (kvsplit.span_arrays(kv, il, split) for il in layers), (kv.bias[il][split.span].T for il in layers)
    )


def _candidate_mask(session: Session, kv: KVState, user: kvsplit.Split, layers, chunk, share: float) -> np.ndarray:
    """Over the span: the cells of the best units by cache score, ``share`` of the span."""
    T = len(user.span)
    units = _units(session, kv, user, chunk)
    keep = chunks.chunk_select(_cache_scores(kv, user, layers), int(np.ceil(share * T)), units)
    mask = np.zeros(T, bool)
    mask[keep] = True
    return mask


def _shared_cut(session: Session, kv: KVState, plan: _Plan, cut: _Cut, Q, rep: CompactionReport,
                candidates: np.ndarray | None = None) -> _Cut:
    """The cells chosen once for every head and layer (option ``spans``, methods "chunkkv" and
    "kvzip"), from the attention the reference queries ``Q`` give the user's span.

    ``spans`` < 1 returns a cut whose exact cells are the chosen chunks, the fit compacting the
    rest; a selection that fits nothing comes back in ``evict`` (original keys, values, bias)."""
    clock = time.perf_counter()
    user, t = cut.user, cut.t
    if not plan.shared and plan.pipe["span_score"] == "cache":
        total = _cache_scores(kv, user, plan.layers)
    else:
        scores = _span_scores(session, kv, user, Q, plan.layers, plan.pipe)
        if plan.shared == "kvzip":
            rep.seconds["select"] = time.perf_counter() - clock
            per_head = chunks.global_budgets([scores[il].max(axis=2) for il in plan.layers], t)
            return _Cut(user, user, t, 0, None, _kept(kv, user, dict(zip(plan.layers, per_head, strict=True))))
        total = sum(scores[il].sum(axis=(0, 2)) for il in plan.layers)
        if candidates is not None:  # only the candidates were read again: they go first
            total = np.where(candidates, total, -1.0)
    n_exact = t if plan.shared else int(round(plan.pipe["spans"] * t))
    pin = plan.pipe["pin"]
    pieces = _span_pieces(session, kv, user) if plan.pipe["chunk"] == "sentence" or pin is not None else None
    units = _unit_starts(pieces, plan.pipe["chunk"])
    if pin is not None:
        if pieces is None:
            raise ConfigError("pin= needs the text of the whole cache: this session's tokens do not cover it")
        pinned = _pinned(pieces, units, pin)
        if pinned.sum() > n_exact:
            log.warning("pin: the matching sentences hold %d cells, more than the %d kept verbatim; "
                        "the best of them are kept", int(pinned.sum()), n_exact)
        total = np.where(pinned, total + 2.0 * (1.0 + np.abs(total).max()), total)  # pinned units first
    exact = chunks.chunk_select(total, n_exact, units)
    rep.seconds["select"] = time.perf_counter() - clock
    if plan.shared or n_exact >= t:  # nothing left to fit: the chunks as they are
        H = {il: kv.keys[il].shape[1] for il in plan.layers}
        idx = {il: np.broadcast_to(exact, (H[il], len(exact))) for il in plan.layers}
        return _Cut(user, user, t, 0, exact, _kept(kv, user, idx))
    return _Cut(user, user, t, len(exact), exact)


def _verbatim(kv: KVState, plan: _Plan, cut: _Cut) -> list[list[int]]:
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


def _pinned(pieces: list[str], units, pattern: re.Pattern) -> np.ndarray:
    """Over the span (its tokens' ``pieces``): the cells of the units (:func:`_unit_starts`) whose
    text ``pattern`` matches."""
    T = len(pieces)
    starts = np.arange(0, T, units) if isinstance(units, int) else units
    mask = np.zeros(T, bool)
    for a, b in zip(starts, np.append(starts[1:], T), strict=True):
        if pattern.search("".join(pieces[a:b])):
            mask[a:b] = True
    return mask


def _needs_queries(plan: _Plan) -> bool:
    """False where nothing reads the reference queries: whole units scored from the cache fill
    the whole budget (``spans=1``), so there is nothing to fit and no pass to run."""
    pipe = plan.pipe
    return bool(plan.shared or not pipe["spans"] or pipe["span_score"] != "cache" or pipe["spans"] < 1)


def _units(session: Session, kv: KVState, split: kvsplit.Split, chunk):
    """The selection units of option ``chunk`` over the span (:func:`_unit_starts`)."""
    return _unit_starts(_span_pieces(session, kv, split) if chunk == "sentence" else None, chunk)


def _unit_starts(pieces: list[str] | None, chunk):
    """The selection units of option ``chunk`` over a span whose tokens read ``pieces``: a chunk
    size, or sentence starts (a fixed chunk of 8 where the text is unknown: ``pieces`` None)."""
    if chunk != "sentence":
        return chunk
    return 8 if pieces is None else chunks.sentence_starts(pieces)


def _span_pieces(session: Session, kv: KVState, split: kvsplit.Split) -> list[str] | None:
    """The text of each span token, or None where the session's tokens do not cover the cache."""
    pos = kv.positions[split.span]
    if len(session._tokens) <= int(pos[-1]):
        return None
    return [session.model.detokenize([session._tokens[p]]) for p in pos]


def _span_scores(session, kv, split, Q, layers, pipe) -> dict[int, np.ndarray]:
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

    return dict(zip(layers, map_layers(one, layers, _workers(session, pipe)), strict=True))


def _kept(kv: KVState, split: kvsplit.Split, idx: dict[int, np.ndarray]) -> dict[int, CompactedLayer]:
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


def _read_probes(session: Session, kv: KVState, cut: _Cut, plan: _Plan, verify: bool,
                 snapshot: bytes) -> tuple[tuple, float]:
    """The full cache's logits on the recall probe and on the continuation probe (for verify);
    ``snapshot``: the session's current state."""
    pipe = plan.pipe
    clock, tail_before = time.perf_counter(), None
    first = int(kv.positions[cut.split.span][0])
    probe = _probe_tokens(session, first, pipe["probe_tokens"], plan.qopts, plan.task) if verify else []
    before = session.eval_logits(probe) if probe else None
    tail_end = int(kv.positions[cut.user.span][-1]) if len(cut.user.span) else session.n_past - 1
    if verify and pipe["tail_probe"]:
        tail_before = tail_logits(session, _tail_tokens(pipe["tail_probe"], "tail_probe"), tail_end, snapshot)
    # counted with verify, as is reading them again after
    return (probe, before, (tail_before, tail_end)), time.perf_counter() - clock


def _fit(session, kv, plan, cut, span, Q, rep, tell) -> tuple[dict[int, CompactedLayer], dict[int, np.ndarray]]:
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
        per_head = _head_budgets(plan.budgets, layers, kv, T, t - extra, t / max(1, t - extra), "keys")
        window = {il: t - np.asarray(b) for il, b in per_head.items()}
    else:
        cells = "ratio" if pipe["budget_cells"] == "fill" else pipe["budget_cells"]  # eviction: no window to fill
        per_head = _head_budgets(plan.budgets, layers, kv, len(split.span), t - extra, pipe["budget_cap"], cells)
        window = dict.fromkeys(layers)
    if selector == "keep" and "keep" not in plan.options:
        plan.options["keep"] = _briefing_mask(session, kv, split, fit_q, layers, t)
    fitted: dict[int, CompactedLayer] = {}
    recapture = 0.0
    for g, group in enumerate(_layer_groups(layers, pipe["on_policy"], plan.given, plan.qspec)):
        if g > 0:  # on-policy: the next layers' queries see the layers fitted so far
            tick = time.perf_counter()
            session.set_kv(kvsplit.partial(kv, split, fitted))
            Q = qsources.collect(session, plan.qspec, span, task=plan.task, **plan.qopts)
            fq, hq = rows.split_queries(Q, pipe["heldout"], pipe["max_queries"], session, pipe["max_heldout"])
            for il in group:
                fit_q[il], held_q[il] = fq[il], hq[il]
            recapture += time.perf_counter() - tick

        def fit(il: int) -> CompactedLayer:
            return _fit_one(session, kv, plan, cut, il, fit_q[il], per_head[il], window[il])

        counted = tell.counting("fit", fit, len(layers))
        fitted.update(zip(group, map_layers(counted, group, _workers(session, pipe)), strict=True))
    if pipe["guard"] and plan.fits:
        held_q = _apply_guards(kv, split, fitted, held_q, session, rep, _workers(session, pipe))
    rep.seconds["fit"] = time.perf_counter() - clock - recapture
    rep.seconds["queries"] += recapture
    return fitted, held_q


def _fit_one(session, kv, plan, cut, il, q, budget, window) -> CompactedLayer:
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


def _write(session, kv, plan, cut, fitted, rep, snapshot: bytes) -> bytes | None:
    """Write the compacted cells back and report what they hold; returns the state written where
    it was read back (else None). ``snapshot``: the state to restore if the write is refused (the
    cache before compaction: :func:`compact` restores it on any failure anyway)."""
    new = kvsplit.assemble(kv, cut.split, fitted)
    session._check_kv(new)
    session._write_kv(new, old=snapshot)
    written = _as_written(session, new, fitted, len(cut.split.sinks))
    T = len(cut.user.span)
    rep.span_before, rep.span_after = T, new.n_cells - len(cut.user.sinks) - len(cut.user.recent)
    rep.ratio = T / max(1, rep.span_after)
    # the exact recent window moved out of the fit is part of the user's span: its keys count
    moved = 0 if plan.fill or cut.exact is not None else cut.extra * sum(
        r.indices.shape[0] for r in fitted.values()
    )
    rep.keys_kept = int(sum(int(r.keys_kept.sum()) for r in fitted.values())) + moved
    rep.cells_after = session.n_cells
    return written


def _as_written(session: Session, new: KVState, fitted: dict[int, CompactedLayer], n_sinks: int) -> bytes | None:
    """Each fit's values replaced by what the cache holds, so that verify measures the cache as
    written: f16, bf16 and the quantized types round the fitted float32 values (kept keys are
    copies of cached ones and the bias is stored as F32: both are written exactly). Returns the
    state read back (None where nothing was read)."""
    if session.kv_type_v == "f32":
        return None
    blob = session._snapshot()
    got = session._kv_of(blob)
    at = {int(p): i for i, p in enumerate(got.positions)}
    for il, res in fitted.items():
        rows = [at[int(p)] for p in new.positions[n_sinks : n_sinks + res.indices.shape[1]]]
        fitted[il] = replace(res, values=got.values[il][rows].transpose(1, 0, 2).astype(res.values.dtype))
    return blob


def reference_queries(
    session: Session,
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
    layers = _check_gate(session)
    spec = "+".join(qsources.parse_spec(queries))
    bad = set(options) - set(QUERY_OPTIONS)
    if bad:
        raise ConfigError(f"unknown query option(s) {sorted(bad)}; known: {', '.join(QUERY_OPTIONS)}")
    kv = session.get_kv()
    if ratio is None and target_cells is None:
        _check_args(2.0, None, keep_first, keep_last)
        span = kvsplit.span_of(kv, kvsplit.split_cells(kv, keep_first, keep_last))
    else:
        _check_args(ratio, target_cells, keep_first, keep_last)
        # with spans (the default) and the shared evictions the fit covers the user's whole span
        fitted = method not in SHARED_EVICTIONS and SELECTORS[_selector(method)].fits
        split = kvsplit.splits(kv, keep_first, keep_last, ratio, target_cells, fitted and not spans, recent)[1]
        span = kvsplit.span_of(kv, split)
        if fitted and spans and span_score == "cache+repeat":
            mask = _candidate_mask(session, kv, split, layers, chunk, span_candidates)
            options = _repeat_only(kv, split, mask, spec, options)
    clock = time.perf_counter()
    Q = qsources.collect(session, spec, span, task=task, **options)
    return ReferenceQueries(spec, span, session.n_cells, Q, time.perf_counter() - clock)


def _check_given(given: ReferenceQueries, span: tuple[int, int], whole: tuple[int, int], n_cells: int) -> None:
    """Queries captured for the span fitted, or for the whole span (which serve any ratio)."""
    if given.span not in (span, whole) or given.n_cells != n_cells:
        raise ConfigError(
            f"these reference queries were captured for span {given.span} of {given.n_cells} cells; "
            f"the cache now has span {span} of {n_cells} cells (capture them again, with the same "
            "keep_first/keep_last)"
        )


# --- checks and sizes ---
def _check_gate(session: Session) -> list[int]:
    if not session.can_compact:
        raise UnsupportedLayout(f"cannot compact a {session.memory_layout!r} memory: {session.gate_reason}")
    layers = session.compact_layers()
    if not layers:
        raise UnsupportedLayout(f"the {session.memory_layout!r} memory has no compactable attention layers")
    return layers


def _selector(method: str) -> str:
    sel = AM_SELECTOR if method == "am" else method
    if sel not in available_methods():
        raise ConfigError(f"unknown method {method!r}; known: am, {', '.join(available_methods())}")
    return sel


def _check_args(ratio, target_cells, keep_first, keep_last) -> None:
    if (ratio is None) == (target_cells is None):
        raise ConfigError("give exactly one of ratio= and target_cells=")
    if ratio is not None and not (isinstance(ratio, (int, float)) and ratio > 1):
        raise ConfigError(f"ratio must be a number > 1, not {ratio!r}")
    if keep_first < 0 or keep_last < 1:
        raise ConfigError("keep_first must be >= 0 and keep_last >= 1 (the last cell must stay)")


# --- queries ---
def _probe_tokens(session: Session, first_pos: int, n: int, qopts: dict, task: str | None = None) -> list[int]:
    """The probe of the ``max_kl`` gate: with a question (``task``), the question itself, what the
    compaction was made to serve; else the repeat prompt and the span's first tokens, a recall
    probe of compacted content. (A question-aware compaction keeps what its question reads and
    need not recall the text's start: at 13x on Qwen2.5-0.5B that probe read 3+ nats and rolled
    back 6 of a document's 9 question-aware compactions.)"""
    if task:
        toks = session.model.tokenize(task)
    else:
        toks = session.model.tokenize(qopts.get("repeat_prompt", REPEAT_PROMPT))
        toks += session._tokens[first_pos : first_pos + n]
    return toks[: max(0, session.n_ctx - session.n_cells)]


def _tail_tokens(n, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError(f"{name} must be an integer >= 0 (tokens), not {n!r}")
    return n


# --- fit ---
def _workers(session: Session, pipe: dict[str, Any]) -> int:
    """Threads of the array stages: option ``fit_threads``, else the session's n_threads (the
    threads its forward passes use, so ``n_threads`` sets the cost of the whole compaction)."""
    n = pipe["fit_threads"]
    return max(1, int(session.n_threads if n is None else n))


def _uniform(budgets) -> bool:
    return budgets is None or (isinstance(budgets, str) and budgets == "uniform")


def _head_budgets(budgets, layers, kv: KVState, T: int, t: int, cap: float, cells: str = "ratio") -> dict[int, Any]:
    if cells not in ("fill", "ratio", "keys"):
        raise ConfigError(f"budget_cells must be 'fill', 'ratio' or 'keys', not {cells!r}")
    if _uniform(budgets):
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


def _layer_groups(layers: list[int], n_groups, given, qspec: str) -> list[list[int]]:
    if not (isinstance(n_groups, int) and 1 <= n_groups <= len(layers)):
        raise ConfigError(f"on_policy must be an integer in [1, {len(layers)}] (layer groups), not {n_groups!r}")
    if n_groups > 1 and (given is not None or qspec == "context"):
        raise ConfigError("on_policy > 1 re-captures queries: it needs a forward-pass source, not "
                          "'context' or queries captured in advance")
    return [list(g) for g in np.array_split(np.asarray(layers), n_groups)]


def _briefing_mask(session, kv, split, fit_q, layers, t) -> np.ndarray:
    """Latent Briefing: one keep mask for every head, top-t by task-query attention."""
    per_layer = ((kvsplit.span_arrays(kv, il, split)[0], fit_q[il], session.kq_scale(il)) for il in layers)
    return keep_mask_topk(task_position_scores(per_layer), t)


def _apply_guards(kv, split, fitted, held_q, session, rep, workers=None) -> dict[int, np.ndarray]:
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


# --- write back ---
# --- verify ---
def _verify(session, kv, split, fitted, held_q, probe, before, pipe, rep, verify, tail=(None, 0, None)) -> None:
    """The gates on the written cache; ``tail``: the continuation probe's logits before, the span's
    last position, and the session's current state where it was read (else None)."""
    def one(il: int) -> float:
        K, V = kvsplit.span_arrays(kv, il, split)
        e = attention_errors(
            K, V, held_q[il], session.kq_scale(il), fitted[il], kvsplit.span_prior(kv, il, split), np.float32
        )
        return float(np.mean(e.output))

    layers = [il for il in fitted if il in held_q and held_q[il].shape[1] > 0]
    errs = map_layers(one, layers, _workers(session, pipe))
    if errs:
        rep.attention_error, rep.attention_error_worst = float(np.mean(errs)), float(np.max(errs))
    if not verify:
        return
    if errs and not rep.attention_error <= pipe["max_attention_error"]:
        raise _GateFailed(
            f"held-out attention error {rep.attention_error:.3f} > gate {pipe['max_attention_error']}"
        )
    if before is not None:
        after = session.eval_logits(probe)
        if not np.isfinite(after).all():
            raise _GateFailed("non-finite logits after write-back")
        rep.kl = mean_kl(before, after)
        if not rep.kl <= pipe["max_kl"]:
            raise _GateFailed(f"probe KL {rep.kl:.4f} nats > gate {pipe['max_kl']}")
    tail_before, tail_end, snapshot = tail
    if tail_before is not None:
        tail_after = tail_logits(session, len(tail_before), tail_end, snapshot)
        if tail_after is None or not np.isfinite(tail_after).all():
            raise _GateFailed("the continuation probe could not be read again after write-back")
        rep.tail_kl = mean_kl(tail_before, tail_after)
        if pipe["max_tail_kl"] is not None and not rep.tail_kl <= pipe["max_tail_kl"]:
            raise _GateFailed(f"continuation probe KL {rep.tail_kl:.4f} nats > gate {pipe['max_tail_kl']}")


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    """Rows of log softmax in float64, shifted by each row's maximum (no overflow); one exp pass,
    where ``np.logaddexp.reduce`` took seconds on a 262K-token vocabulary (Gemma-3)."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    z -= np.log(np.exp(z).sum(axis=1, keepdims=True))
    return z


def mean_kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    """Mean over rows of KL(softmax(p) || softmax(q)), nats."""
    lp, lq = _log_softmax(p_logits), _log_softmax(q_logits)
    return float((np.exp(lp) * (lp - lq)).sum(axis=1).mean())


# --- automatic compaction ---
#: ``span_score`` of automatic compactions unless given: a running session compacts a cache that
#: already holds compacted cells, again and again, and there the cache's own scores keep a fact
#: stated once at the start where the repeat pass's ranking loses it. tests/test_iterative.py's
#: setting, four code words and filler offsets (SmolLM2, n_ctx=256, two compactions): the word's
#: mean NLL 0.38 ("cache"), 1.04 (per-head AM, spans=0), 2.77 ("cache+repeat", the one-shot
#: default, which keeps the demo's planted code where "cache" loses it)
AUTO_SPAN_SCORE = "cache"


def set_auto(session: Session, threshold: float | None, ratio: float, options: dict[str, Any]) -> None:
    """Turn automatic compaction on (or off with ``threshold=None``)."""
    if threshold is None:
        session._auto = None
        return
    if not 0 < threshold <= 1:
        raise ConfigError(f"threshold must be in (0, 1], not {threshold!r}")
    _check_gate(session)
    _check_args(ratio, None, options.get("keep_first", 4), options.get("keep_last", 32))
    if options.get("memory") is not None:
        from . import memory

        memory.check_auto(session, options["memory"], "task" in options)
    options = dict(options)
    if options.get("method", "am") == "am" and options.get("spans", 1) and not {"task", "span_score"} & set(options):
        options["span_score"] = AUTO_SPAN_SCORE
    session._auto = {"limit": int(threshold * session.n_ctx), "ratio": ratio, "options": options}
    session.auto_reports = []


def auto_prefill(session: Session, toks: list[int]) -> int:
    """Prefill ``toks`` in pieces, compacting whenever the cells reach the limit."""
    auto = session._auto
    limit = auto["limit"]
    session._auto = None  # inner prefills and compactions run in the plain mode
    try:
        done = 0
        while done < len(toks):
            if session.n_cells >= limit:
                if auto["options"].get("memory") is not None:  # bytes relative to the cells found
                    from . import memory

                    opts = {k: v for k, v in auto["options"].items() if k != "memory"}
                    rep = memory.compact_to(session, auto["options"]["memory"], of_cells=True, **opts)
                else:
                    rep = compact(session, ratio=auto["ratio"], **auto["options"])
                session.auto_reports.append(rep)
                if rep.fell_back:
                    raise CompactionError(f"automatic compaction fell back: {rep.reason}")
                if session.n_cells >= limit:
                    raise CompactionError(f"automatic compaction left {session.n_cells} cells (limit {limit})")
            n = min(len(toks) - done, limit - session.n_cells)
            session.prefill(toks[done : done + n])
            done += n
    finally:
        session._auto = auto
    return len(toks)
