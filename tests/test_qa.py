"""Answers survive compaction: the QA documents, the shared chunk selection, and a planted fact
answered by the real SmolLM2 after the default compaction and after question-aware compaction."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pyllamaam import demo
from pyllamaam.compact import chunks
from pyllamaam.evaluation import qa, qa_run, tasks

QUESTION = demo.prompt()  # "Question: ...? Answer: The locker code for the archivist is"


def test_documents_are_deterministic_and_hold_every_fact():
    a, b = qa.make_document(5, 5000), qa.make_document(5, 5000)
    assert a.text == b.text and [q.answer for q in a.questions] == [q.answer for q in b.questions]
    assert qa.make_document(6, 5000).text != a.text
    for q in a.questions:
        if q.kind == "choice":
            assert len(q.options) == 4 and q.answer in q.options and q.answer in a.text
        elif q.kind != "vartrack":  # a chain's value sits in its first assignment only
            assert q.answer in a.text
    kinds = {q.kind for q in a.questions}
    assert kinds == {"code", "choice", *tasks.KINDS}


def test_wilson_interval_contains_the_proportion_and_narrows():
    lo, hi = qa.wilson(45, 50)
    assert lo < 0.9 < hi
    lo2, hi2 = qa.wilson(450, 500)
    assert hi2 - lo2 < hi - lo
    assert qa.wilson(0, 10)[0] == 0.0 and qa.wilson(10, 10)[1] == 1.0


def test_chunk_select_keeps_whole_chunks_of_the_best_mean():
    s = np.zeros(40)
    s[17] = 5.0  # one sharp cell: its whole chunk [16, 24) goes first
    s[30:40] = 0.5  # a broad region
    got = chunks.chunk_select(s, 12, 8)
    assert len(got) == 12
    assert set(range(16, 24)) <= set(got.tolist())
    assert np.all(np.diff(got) > 0)
    assert len(chunks.chunk_select(s, 100, 8)) == 40


def test_chunk_select_below_the_mean_prefers_the_longer_unit():
    s = np.zeros(40)
    s[0:2] = 1.0  # a two-cell fragment with the best mean
    s[10:18] = 0.9  # a whole eight-cell unit just below it
    starts = np.array([0, 2, 10, 18])
    assert set(chunks.chunk_select(s, 2, starts).tolist()) == {0, 1}
    got = chunks.chunk_select(s, 8, starts, length_power=chunks.UNIT_POWER)
    assert got.tolist() == list(range(10, 18))  # 0.9 * 8 ** 0.3 = 1.68 > 1.0 * 2 ** 0.3 = 1.23
    assert len(chunks.chunk_select(s, 11, starts, length_power=chunks.UNIT_POWER)) == 11


def test_attention_max_is_the_largest_softmax_weight_per_group():
    rng = np.random.default_rng(0)
    K = rng.standard_normal((2, 10, 4)).astype(np.float32)
    Q = rng.standard_normal((4, 6, 4)).astype(np.float32)  # 2 query heads per KV head
    A = chunks.attention_max(K, Q, 0.5)
    for h in range(4):
        z = 0.5 * Q[h] @ K[h // 2].T
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        np.testing.assert_allclose(A[h // 2, :, h % 2], p.max(0), rtol=1e-5)


def test_global_budgets_give_uneven_heads_and_never_more_cells_than_t():
    rng = np.random.default_rng(1)
    s = [rng.random((2, 50)), rng.random((2, 50))]
    s[0][0] += 1.0  # one head whose cells all matter more
    got = chunks.global_budgets(s, 10)
    counts = np.array([(g >= 0).sum(axis=1) for g in got]).ravel()
    assert counts.max() <= 10 and counts[0] == 10
    assert counts.sum() <= 40 and counts.min() < 10


def test_cache_scores_rank_a_novel_key_and_a_large_value_first():
    rng = np.random.default_rng(2)
    T, H, d = 60, 2, 8
    base = rng.standard_normal(d)
    K = np.broadcast_to(base, (H, T, d)) + 0.05 * rng.standard_normal((H, T, d))
    V = rng.standard_normal((H, T, d))
    K[:, 11] = -base  # a key pointing away from every other key of its heads
    V[:, 11] *= 4.0  # and a value that stands out
    V[:, 40] *= 4.0  # a large value alone
    s = chunks.cache_scores([(K, V), (K, V)])
    assert s.shape == (T,) and int(np.argmax(s)) == 11
    assert s[40] > np.median(s)
    assert 0.0 <= s.min() and s.max() <= 2.0
    # padding of an earlier compaction (bias -inf in every head) scores lowest
    bias = np.zeros((H, T))
    bias[:, 11] = -np.inf
    s2 = chunks.cache_scores([(K, V)], [bias])
    assert s2[11] < s2.min(initial=np.inf, where=np.arange(T) != 11)


@pytest.fixture(scope="module")
def planted(smollm2):
    """~1K tokens of prose with one planted code (the demo's document), prefilled once; the blob
    to restore."""
    toks = smollm2.tokenize(demo.document(), add_bos=True)
    s = smollm2.session(n_ctx=2 * len(toks) + 256)
    s.prefill(toks)
    yield s, s.snapshot(), len(toks)
    s.close()


def _answer(s, model) -> str:
    assert model is s.model
    return demo.ask(s)  # greedy, 8 tokens after QUESTION; the session is left unchanged


def test_planted_code_is_answered_from_the_full_cache(planted, smollm2):
    s, _, _ = planted
    assert "67767" in _answer(s, smollm2)


@pytest.mark.parametrize(
    ("options", "most"),
    [({"ratio": 4}, 1 / 2), ({"ratio": 10, "task": QUESTION}, 1 / 4)],
    ids=["default-4x", "question-aware-10x"],
)
def test_planted_code_survives_compaction(planted, smollm2, options, most):
    s, blob, n = planted
    try:
        rep = s.compact(**options)
        assert not rep.fell_back, rep.reason
        assert s.n_cells < n * most
        assert "67767" in _answer(s, smollm2)
        # the report says where the code went: into a passage kept verbatim in every head
        assert any("67767" in t for t in s.kept_text(rep))
        flat = [p for r in rep.verbatim for p in r]
        assert flat == sorted(flat) and all(b + 1 < c for b, c in zip(flat[1::2], flat[2::2], strict=False))
        assert rep.verbatim[0] == [0, 3] and rep.verbatim[-1][1] == n - 1  # sinks and recent window
        assert rep.verbatim_cells <= rep.cells_after
        assert rep.to_dict()["verbatim_cells"] == rep.verbatim_cells
    finally:
        s.write_state(blob, n)


def test_a_pinned_sentence_is_kept_verbatim_and_answered(planted, smollm2):
    """Without the question, 10x loses the code; pinning its sentence by a pattern keeps it."""
    s, blob, n = planted
    try:
        rep = s.compact(ratio=10, pin=r"(?i)locker code")
        assert not rep.fell_back, rep.reason
        assert s.n_cells < n / 5
        assert any("67767" in t for t in s.kept_text(rep))
        assert "67767" in _answer(s, smollm2)
    finally:
        s.write_state(blob, n)


def test_cache_scores_cut_the_repeat_pass(planted, smollm2, monkeypatch):
    from pyllamaam.engine import Session

    s, blob, n = planted
    try:
        s._capture = None
        calls = []
        real = Session.capture_queries  # the pass runs on a flash-attention copy of the session
        monkeypatch.setattr(Session, "capture_queries", lambda self, toks: calls.append(len(toks)) or real(self, toks))
        rep = s.compact(ratio=4, spans=1.0, span_score="cache")
        assert not rep.fell_back, rep.reason
        assert calls == [] and rep.seconds["queries"] < 0.5 and rep.seconds["fit"] == 0.0
        s.write_state(blob, n)
        calls.clear()
        rep = s.compact(ratio=4, span_score="cache")  # the fit's repeat pass reads a quarter of the span
        assert not rep.fell_back, rep.reason
        assert 0 < sum(calls) <= 0.3 * n
        s.write_state(blob, n)
        calls.clear()
        rep = s.compact(ratio=4)  # the default: the repeat pass reads the best half by cache score
        assert not rep.fell_back, rep.reason
        assert 0.45 * n <= sum(calls) <= 0.55 * n
    finally:
        s.write_state(blob, n)


def test_the_default_ranks_sentences_by_length_and_a_question_by_the_mean(planted, smollm2, monkeypatch):
    """The query-agnostic default reads its candidate sentences (chosen by their mean cache score)
    again and keeps those with the most attention over length**UNIT_POWER; a question's
    attention (no candidates) ranks by the mean."""
    s, blob, n = planted
    real, powers = chunks.chunk_select, []

    def spy(scores, budget, units, length_power=1.0):
        powers.append(length_power)
        return real(scores, budget, units, length_power)

    monkeypatch.setattr(chunks, "chunk_select", spy)
    try:
        for options, want in (({"ratio": 4}, [1.0, chunks.UNIT_POWER]), ({"ratio": 4, "task": QUESTION}, [1.0])):
            powers.clear()
            rep = s.compact(**options)
            assert not rep.fell_back, rep.reason
            assert powers == want, options  # [the candidate mask,] the sentences kept verbatim
            s.write_state(blob, n)
    finally:
        s.write_state(blob, n)


def test_the_repeat_pass_runs_on_a_flash_copy_that_matches_the_session(planted, smollm2):
    """The default repeat pass runs on a flash-attention copy: the session is left byte-identical,
    the queries are the session's own up to float16 rounding, and a session with no free cells
    still compacts (the pass no longer needs room in the session)."""
    from pyllamaam.queries.repeat import repeat_queries

    s, blob, n = planted
    before = s.snapshot()
    span = (4, n - 33)
    own = repeat_queries(s, span, repeat_flash=False, repeat_max_tokens=256)
    twin = repeat_queries(s, span, repeat_max_tokens=256)
    assert s.snapshot() == before and s.n_cells == n
    assert own.keys() == twin.keys()
    for il in own:
        a, b = own[il], twin[il]
        assert a.shape == b.shape
        rel = np.linalg.norm(a - b, axis=-1) / np.linalg.norm(a, axis=-1)
        assert np.median(rel) < 0.05, (il, float(np.median(rel)))
    toks = s.tokens
    with smollm2.session(n_ctx=n + 2) as full:
        full.prefill(toks)
        rep = full.compact(ratio=4)
        assert not rep.fell_back, rep.reason
        assert full.n_cells < n / 2 and "67767" in _answer(full, smollm2)


@pytest.mark.parametrize("bad", [{"span_score": "bogus"}, {"span_candidates": 0}, {"span_candidates": 1.5},
                                 {"fit_repeat": 0}, {"pin": "(code"}, {"pin": ""}, {"pin": 5},
                                 {"pin": "code", "method": "kvzip"}, {"pin": "code", "spans": 0}])
def test_bad_span_options_are_refused_and_change_nothing(planted, bad):
    from pyllamaam.errors import ConfigError

    s, blob, n = planted
    before = s.snapshot()
    with pytest.raises(ConfigError):
        s.compact(ratio=4, **bad)
    assert s.n_cells == n and s.snapshot() == before


@pytest.mark.parametrize("method", ["chunkkv", "kvzip"])
def test_shared_evictions_keep_the_budget_and_original_cells(planted, method):
    s, blob, n = planted
    try:
        kv0 = s.get_kv()
        rep = s.compact(ratio=5, method=method, verify=False)
        assert not rep.fell_back, rep.reason
        kv = s.get_kv()
        span = n - 4 - 32
        assert kv.n_cells == 4 + 32 + round(span / 5)
        il = min(kv.keys)
        # every kept key is an original key (eviction changes nothing it keeps)
        orig = {k.tobytes() for k in kv0.keys[il][:, 0]}
        kept = kv.keys[il][np.isfinite(kv.bias[il][:, 0]), 0]
        assert all(k.tobytes() in orig for k in kept)
        if method == "kvzip":  # cells chosen per head: only the first and last cells are whole
            assert rep.verbatim == [[0, 3], [n - 32, n - 1]]
        else:  # the same whole sentences in every head: every cell is verbatim
            assert rep.verbatim_cells == rep.cells_after
    finally:
        s.write_state(blob, n)


def test_qa_suite_quick_run_writes_table_summary_and_plot(tmp_path):
    from pyllamaam.evaluation.cli import eval_main

    assert eval_main(["--suite", "qa", "--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    rows = json.loads((tmp_path / "qa_summary.json").read_text())
    assert {r["method"] for r in rows} == {"full", "default", "chunkkv"}
    assert all(0 <= r["accuracy"] <= 1 and r["questions"] > 0 for r in rows)
    assert "| model | tokens | method |" in (tmp_path / "qa_results.md").read_text()
    assert (tmp_path / "qa_smollm2-135m.png").stat().st_size > 0
    cells = qa_run.load(tmp_path / "qa_cells.jsonl")
    # each compacted cell marks whether an answer's tokens were kept verbatim
    assert all("kept" in q for c in cells if c["method"] != "full" for q in c["questions"] if q["kind"] != "vartrack")
    assert all(r["answers_kept"] is not None for r in rows if r["method"] != "full")
    assert eval_main(["--suite", "qa", "--quick", "--out", str(tmp_path), "--no-progress"]) == 0  # resumes
    assert len(qa_run.load(tmp_path / "qa_cells.jsonl")) == len(cells)


def test_an_iswa_session_repeats_on_a_flash_copy_with_its_window(gemma3_270m):
    """Gemma-3's iSWA cache gets a flash-attention copy for the repeat pass too: both caches go
    across (the sliding-window one in flash attention's V layout), the session is left
    byte-identical, and the queries are the session's own up to float16 rounding."""
    from pyllamaam.pipeline import mean_kl
    from pyllamaam.queries._scratch import flash_twin
    from pyllamaam.queries.repeat import repeat_queries

    toks = gemma3_270m.tokenize(demo.document(), add_bos=True)
    with gemma3_270m.session(n_ctx=len(toks) + 64, flash_attn=False) as s:
        s.prefill(toks)
        assert s.memory_layout == "iswa" and len(toks) > 600  # past the 512-token window
        before, n = s.snapshot(), s.n_cells
        with flash_twin(s, 16) as twin:
            assert twin is not None and twin.flash_attn and twin.n_cells == n
            probe = toks[-4:]
            kl = mean_kl(s.eval_logits(probe), twin.eval_logits(probe))
            # the same cache, both sections, read through flash attention: prefilling with flash
            # attention differs from the session by 0.01 nats too; a broken move gives 10 or more
            assert kl < 0.05, kl
        span = (4, n - 33)
        own = repeat_queries(s, span, repeat_flash=False, repeat_max_tokens=96)
        twin_q = repeat_queries(s, span, repeat_max_tokens=96)
        assert s.snapshot() == before and s.n_cells == n
        assert own.keys() == twin_q.keys() and own
        for il in own:
            rel = np.linalg.norm(own[il] - twin_q[il], axis=-1) / np.linalg.norm(own[il], axis=-1)
            assert np.median(rel) < 0.05, (il, float(np.median(rel)))


def test_cells_by_bytes_budget_a_cache_without_bias_in_k_and_v_only(tmp_path):
    """The QA suite's byte budget is the one compact(memory=) gives: an eviction baseline fits no
    bias, so its cells are counted in K and V only and fill the budget with more cells than the
    default, whose fit stores a bias per cell and KV head."""
    spec = qa_run.QASpec(models=["smollm2-135m"], n_tokens=[512], seeds=[1], methods=["snapkv", "default"],
                         caches=["q8_0/q4_0"], memories=[8.0], n_threads=2)
    cells = {c["method"]: c for c in qa_run.load(qa_run.run_qa(spec, tmp_path, progress=False))}
    snap, fit = cells["snapkv"], cells["default"]
    assert snap["bias_storage"] is False and fit["bias_storage"] is True
    assert not snap["fell_back"] and not fit["fell_back"]
    f16 = snap["kv_bytes"] * snap["bytes_ratio"]
    assert fit["kv_bytes"] * fit["bytes_ratio"] == pytest.approx(f16)
    assert snap["bytes_ratio"] >= 8.0 and fit["bytes_ratio"] >= 8.0
    per_cell = snap["kv_bytes"] / snap["cells"]  # K and V of one cell in q8_0-K/q4_0-V
    assert (snap["cells"] + 1) * per_cell > f16 / 8  # the budget is full
    assert snap["cells"] > fit["cells"]
    assert fit["kv_bytes"] / fit["cells"] > per_cell  # the default's cells carry their bias
