"""Iterative (automatic) compaction past n_ctx keeps a fact stated at the start retrievable.

SmolLM2-135M, n_ctx=256: a fact, then ~340 tokens of public-domain filler (the Python standard
library's ``pydoc_data.topics``), prefilled with ``auto_compact`` on, so the cache is compacted
at least twice and the session runs past n_ctx. With Attention Matching the fact, which lives in
the compacted span and not in the verbatim sinks, stays likely: its tokens' NLL after the question
is low and its first token ranks near the top; the control (the same run with window eviction,
which drops the start of the span) must lose it, so the test can fail. The check is on scores:
the greedy text itself flipped between two CPU builds on a near tie.
"""

from __future__ import annotations

import pydoc_data.topics as T

import numpy as np
import pytest

pytestmark = [pytest.mark.native, pytest.mark.slow]

N_CTX = 256
THRESHOLD = 0.75  # compact when 192 cells are in use
RATIO = 4
KEEP_FIRST = 2  # BOS and "Notes": the fact starts after the verbatim sinks
KEEP_LAST = 32
N_FILL = 340
N_THREADS = 2

WORD = "PELICAN"
INTRO = f"Notes.\nThe secret code word is {WORD}. Remember it.\n\n"
QUESTION = "\n\nQuestion: What is the secret code word?\nAnswer: The secret code word is"


def _filler(model) -> list[int]:
    text = "\n\n".join(T.topics[k] for k in sorted(T.topics))
    return model.tokenize(text[: N_FILL * 8])[:N_FILL]


def _run(model, method: str) -> dict:
    """``method``: "am" (the per-head fit, spans=0), "window" (eviction, the control),
    "default" (auto_compact's defaults) or "memory=8" (auto_compact(memory=8): the table's pick,
    in bytes)."""
    extra = {"method": method, "queries": "repeat"} if method not in ("default", "memory=8") else {}
    if method == "am":
        extra["spans"] = 0.0
    if method == "memory=8":
        extra["memory"] = 8
    with model.session(n_ctx=N_CTX, n_threads=N_THREADS) as s:
        s.auto_compact(threshold=THRESHOLD, ratio=RATIO, keep_first=KEEP_FIRST, keep_last=KEEP_LAST, **extra)
        s.prefill(INTRO)
        intro_tokens = list(s._tokens)
        s.prefill(_filler(model))
        reports = list(s.auto_reports)
        n_cells, n_past = s.n_cells, s.n_past
        s.prefill(QUESTION)
        logits = s.logits().astype(np.float64)
        word_nll = s.score(" " + WORD)  # mean NLL per token of the whole word; state unchanged
        answer = s.generate("", max_tokens=6)
    word_tok = model.tokenize(" " + WORD)[0]
    logp = logits[word_tok] - (logits.max() + np.log(np.exp(logits - logits.max()).sum()))
    return {
        "reports": reports,
        "n_cells": n_cells,
        "n_past": n_past,
        "answer": answer,
        "logp": float(logp),
        "word_nll": float(word_nll),
        "word_rank": int((logits > logits[word_tok]).sum()),
        "intro_tokens": intro_tokens,
        "word_tok": word_tok,
    }


def _fact_positions(model, intro_tokens: list[int]) -> list[int]:
    """Positions of the tokens of the code word in the session (BOS is position 0)."""
    word = model.tokenize(" " + WORD)
    for i in range(len(intro_tokens) - len(word) + 1):
        if intro_tokens[i : i + len(word)] == word:
            return list(range(i, i + len(word)))
    raise AssertionError(f"{WORD!r} not found in the intro tokens")


def _check_run(model, run: dict) -> None:
    reps = run["reports"]
    assert len(reps) >= 2, f"only {len(reps)} automatic compactions"
    assert not any(r.fell_back for r in reps), [r.reason for r in reps]
    assert all(r.cells_before <= N_CTX and r.cells_after <= N_CTX for r in reps)
    assert run["n_cells"] <= N_CTX < run["n_past"]
    # the fact lies in the compacted span of the first compaction (cells 0..n-1 hold positions
    # 0..n-1 then): after the verbatim sinks, before the recent window
    pos = _fact_positions(model, run["intro_tokens"])
    first = reps[0]
    assert first.span_before == first.cells_before - KEEP_FIRST - KEEP_LAST
    assert KEEP_FIRST <= min(pos) and max(pos) < first.cells_before - KEEP_LAST


def test_am_keeps_fact_through_iterative_compaction(smollm2):
    am = _run(smollm2, "am")
    window = _run(smollm2, "window")
    for run in (am, window):
        _check_run(smollm2, run)
    for name, run in (("am", am), ("window", window)):
        print(f"{name}: {run['answer']!r} (first word token: log p {run['logp']:.2f}, rank {run['word_rank']}; "
              f"word NLL {run['word_nll']:.2f} nats/token)")
    # scored, not only decoded: greedy text flips between builds (CPU kernels) on a near tie, the
    # likelihood of the fact does not. Measured: am 1.06 nats/token, first token rank 1
    # (after a quote mark); window 5.32, rank 504.
    assert am["word_nll"] < 2.0 and am["word_rank"] <= 2, (am["word_nll"], am["word_rank"], am["answer"])
    # the control: window eviction drops the fact, so the test can fail
    assert WORD not in window["answer"], f"window answered {window['answer']!r}"
    assert window["word_nll"] > am["word_nll"] + 3.0, (am["word_nll"], window["word_nll"])
    assert am["logp"] > window["logp"] + 3.0, (am["logp"], window["logp"])


def test_the_default_keeps_the_fact_at_least_as_well_as_per_head_am(smollm2):
    """auto_compact's defaults (whole sentences scored by the cache itself, pipeline.AUTO_SPAN_SCORE)
    against the per-head fit. Measured: default 0.18 nats/token, per-head AM 0.81; with the
    one-shot default's scoring ("cache+repeat") the word was lost (4.81)."""
    default, am = _run(smollm2, "default"), _run(smollm2, "am")
    _check_run(smollm2, default)
    assert all(r.method == "am" for r in default["reports"])
    assert default["word_nll"] <= am["word_nll"], (default["word_nll"], am["word_nll"])


def test_auto_compaction_by_memory_keeps_the_fact_at_least_as_well_as_per_head_am(smollm2):
    """The server's ``--compact-memory 8`` path: each compaction runs the table's pick for 8x fewer
    bytes (SmolLM2: sentences ranked with the surprisal recorded while reading). Measured: 0.20
    nats/token, per-head AM 0.81."""
    mem, am = _run(smollm2, "memory=8"), _run(smollm2, "am")
    reps = mem["reports"]
    assert len(reps) >= 2 and not any(r.fell_back or "instead_of" in r.memory for r in reps), [r.memory for r in reps]
    assert mem["n_cells"] <= N_CTX < mem["n_past"]
    assert mem["word_nll"] <= am["word_nll"], (mem["word_nll"], am["word_nll"])
