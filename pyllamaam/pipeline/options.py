"""The options of :func:`~pyllamaam.pipeline.compact` that are not kernel options, with their
defaults and the measurements behind them, and the pipeline's other constants."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
    # where the attention passes of the array stages run (pyllamaam.compact.arrays): "auto" (CuPy
    # when the model has layers on a GPU and CuPy sees one, else numpy), "numpy" or "cupy"
    "arrays": "auto",
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
    # continuation KL of AM against keep_last alone (docs/results/ACCEPTANCE.md in the git history). 0: keep_last only
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
    # the demo at 4x, which both others keep; "cache+repeat" reads half the text again.
    # "cache+surprisal": the cache's own scores ranked beside each token's surprisal (its
    # negative log-likelihood given the text before it: the text read again, a prefill's work),
    # the two ranks summed, so a unit the model could not predict (a code, a name) ranks high
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
SPAN_SCORES = ("cache+repeat", "cache", "cache+surprisal", "repeat")
#: The scores of whole units that need no reference queries (no repeat pass)
CACHE_SCORED = ("cache", "cache+surprisal")


#: Layer groups of ``on_policy=None``. 3: on the tuning contexts of the continuation grid (both models,
#: 1K and 2K tokens, 10x and 20x) it lowered answer NLL and ΔNLL against one group on both models,
#: for 2-3x the compaction time; the shipped budgets and the self-study mix on top of it did not
#: help consistently. 2 groups cost a third less but lost recall on Gemma and ΔNLL on SmolLM2.
ON_POLICY_GROUPS = 3


#: Where the shipped head budgets live: ``<name>.json`` per catalog model (``pyllamaam budgets compute``).
BUDGETS_DIR = Path(__file__).resolve().parents[2] / "models" / "budgets"


#: ``budgets=None`` (the default) means the model's shipped budgets when this is True, else uniform.
#: False: in the continuation grid (both models, 1K-4K tokens, 10x and 20x, 20 paired cells) the shipped
#: budgets matched uniform on continuation ΔNLL (-0.005 ± 0.007) and KL (-0.004 ± 0.005) and cost
#: recall (answer NLL +0.024 ± 0.011). ``budgets="shipped"`` asks for them.
SHIPPED_BUDGETS_BY_DEFAULT = False


#: The selection behind ``method="am"``: attn-rms, the keys the reference queries need on the
#: whole. With the exact recent window (option ``recent``) it matched the ``hybrid`` selection on
#: continuation KL at 4K tokens and 10x, and it keeps recall of a fact at the start through
#: iterative compaction, which ``hybrid`` lost (docs/results/ACCEPTANCE.md in the git history; docs/options.md).
AM_SELECTOR = "attn-rms"


#: Options passed to the query sources.
QUERY_OPTIONS = (
    "repeat_prompt", "repeat_max_tokens", "repeat_piece", "repeat_flash", "selfstudy_prompts", "selfstudy_tokens",
    "tail_tokens",
)

#: The kernel's own defaults serve the pipeline: 30 NNLS iterations gave the same KL and ΔNLL
#: as 100 and 300 on SmolLM2 caches (1K tokens, 10x and 20x, two texts; docs/results/options.md in the git history).
