"""End-to-end compaction through Session.compact: gating, fallback, methods, queries, quality."""

from __future__ import annotations

import json
from pydoc_data.topics import topics

import numpy as np
import pytest
from conftest import max_rel

from pyllamaam import kvsplit, pipeline
from pyllamaam.compact import available_methods, spanfit
from pyllamaam.errors import ConfigError, UnsupportedLayout
from pyllamaam.evaluation.baselines import interleave  # also registers the evaluation's baselines
from pyllamaam.pipeline import mean_kl
from pyllamaam.queries import rows

pytestmark = pytest.mark.native

TEXT = topics["attribute-access"]  # public-domain-licensed Python docs, offline, deterministic
LENIENT = {"max_kl": float("inf"), "max_attention_error": float("inf")}


def _ids(n: int, seed: int = 0) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(10, 500, n)]


@pytest.fixture
def llama(tiny_models):
    s = tiny_models["llama"].session(n_ctx=512)
    s.capture_context_queries(512)
    s.prefill(_ids(200))
    yield s
    s.close()


@pytest.fixture(scope="module")
def smol(smollm2):
    """SmolLM2 holding 400 tokens of TEXT; tests restore it (state blob) when they change it."""
    toks = smollm2.tokenize(TEXT, add_bos=True)[:400]
    s = smollm2.session(n_ctx=1024)
    s.capture_context_queries(1024)
    s.prefill(toks)
    yield s
    s.close()


def _state(s):
    return s.snapshot(), s.n_cells, s.n_past


def _restore(s, st):
    s.write_state(st[0], st[1])


# --- the basic contract ---
def test_compaction_shrinks_cells_and_decoding_continues_at_the_same_position(llama):
    n_past, cells = llama.n_past, llama.n_cells
    rep = llama.compact(ratio=5, queries="repeat", **LENIENT)
    assert not rep.fell_back, rep.reason
    assert llama.n_past == n_past
    assert rep.span_before == cells - 4 - 32
    assert rep.span_after == round(rep.span_before / 5)
    assert llama.n_cells == rep.cells_after == 4 + rep.span_after + 32
    assert rep.ratio == pytest.approx(5, rel=0.05)
    assert np.isfinite(llama.eval_logits(_ids(3, 1))).all()
    llama.generate(max_tokens=4)
    assert llama.n_past == n_past + 4
    assert set(rep.seconds) == {"queries", "extract", "select", "fit", "write", "verify"}
    assert json.loads(rep.to_json())["cells_after"] == rep.cells_after
    assert "5.0x" in str(rep)


def test_compaction_at_5x_on_smollm2_keeps_next_position_and_close_logits(smol):
    st = _state(smol)
    probe = smol.model.tokenize(" The method")
    before = smol.eval_logits(probe)
    try:
        # the per-head fit (spans=0): the default keeps whole sentences chosen for answers, which
        # reads the start of the text back less closely (recall-probe KL 1.46 here)
        rep = smol.compact(ratio=5, queries="context", max_queries=512, spans=0.0)
        assert not rep.fell_back, rep.reason
        assert smol.n_past == st[2] and smol.n_cells < st[1] / 3
        assert rep.kl is not None and rep.kl < 1.0
        assert mean_kl(before, smol.eval_logits(probe)) < 1.0
    finally:
        _restore(smol, st)


# --- crash safety ---
def _assert_unchanged(s, st, logits_before, probe):
    assert s.snapshot() == st[0]
    assert (s.n_cells, s.n_past) == st[1:]
    np.testing.assert_array_equal(s.eval_logits(probe), logits_before)


def test_failed_kl_gate_restores_the_cache_exactly(llama):
    st, probe = _state(llama), _ids(4, 2)
    logits = llama.eval_logits(probe)
    rep = llama.compact(ratio=5, queries="context", max_kl=-1.0)
    assert rep.fell_back and "KL" in rep.reason and rep.cells_after == st[1] and rep.verbatim == []
    _assert_unchanged(llama, st, logits, probe)


def _boom(*a, **k):
    raise RuntimeError("injected")


@pytest.mark.parametrize(
    "module, target, fake",
    [
        (spanfit, "compact_layer", _boom),  # fit
        (spanfit, "compact_layer", "nan"),  # NaN values
        (kvsplit, "assemble", _boom),  # before write-back
        (pipeline.verify, "check", _boom),  # after write-back
    ],
)
def test_fault_at_any_stage_restores_the_cache_exactly(llama, monkeypatch, module, target, fake):
    st, probe = _state(llama), _ids(4, 3)
    logits = llama.eval_logits(probe)
    if fake == "nan":
        real = spanfit.compact_layer

        def fake(*a, **k):
            res = real(*a, **k)
            res.values[...] = np.nan
            return res

    monkeypatch.setattr(module, target, fake)
    rep = llama.compact(ratio=4, queries="context")
    assert rep.fell_back and rep.reason
    _assert_unchanged(llama, st, logits, probe)


def test_a_refused_write_back_restores_the_cache(llama, monkeypatch):
    st, probe = _state(llama), _ids(4, 4)
    logits = llama.eval_logits(probe)

    def bad_assemble(kv, split, fitted):
        out = pipeline_assemble(kv, split, fitted)
        out.positions = out.positions[:-1]  # drops the last cell: set_kv must refuse it
        for d in (out.keys, out.values, out.bias):
            for il in d:
                d[il] = d[il][:-1]
        return out

    pipeline_assemble = kvsplit.assemble
    monkeypatch.setattr(kvsplit, "assemble", bad_assemble)
    rep = llama.compact(ratio=4, queries="context")
    assert rep.fell_back and "StateError" in rep.reason
    _assert_unchanged(llama, st, logits, probe)


def test_bad_arguments_raise_and_leave_the_cache(llama):
    st = _state(llama)
    with pytest.raises(ConfigError):
        llama.compact(ratio=5, target_cells=50)
    with pytest.raises(ConfigError):
        llama.compact(ratio=5, method="nope")
    with pytest.raises(ConfigError):
        llama.compact(ratio=5, queries="nope")
    with pytest.raises(ConfigError):
        llama.compact(target_cells=500)
    with pytest.raises(ConfigError):
        llama.compact(ratio=5, queries="task")  # task= missing
    assert _state(llama) == st


# --- every method and every query source ---
@pytest.mark.parametrize("method", ["am", *available_methods()])
def test_every_method_runs(llama, method):
    extra = {"queries": "task", "task": "a short task prompt"} if method == "keep" else {}
    extra.setdefault("queries", "context")
    rep = llama.compact(ratio=4, method=method, **extra, **LENIENT)
    assert not rep.fell_back, rep.reason
    assert rep.span_after <= round(rep.span_before / 4)
    assert rep.keys_kept > 0
    assert np.isfinite(llama.eval_logits(_ids(2, 5))).all()


@pytest.mark.parametrize("queries", ["context", "repeat", "self-study", "task", "tail", "repeat+context"])
def test_every_query_source_runs_and_leaves_no_trace(llama, queries):
    tokens, last = llama.tokens, llama.logits()
    rep = llama.compact(
        ratio=4, queries=queries, task="What did the text say?", selfstudy_tokens=8, **LENIENT
    )
    assert not rep.fell_back, rep.reason
    assert rep.n_queries > 0
    assert llama.tokens == tokens and llama.n_past == len(tokens)
    np.testing.assert_array_equal(llama.logits(), last)


# --- layouts ---
def test_iswa_compacts_global_layers_only_and_keeps_the_swa_section(tiny_models):
    with tiny_models["gemma3"].session(n_ctx=512) as s:
        s.prefill(_ids(200, 6))
        kv0 = s.get_kv()
        assert s.memory_layout == "iswa" and kv0.layers == s.compact_layers() == [1, 3]
        rep = s.compact(ratio=4, queries="repeat", **LENIENT)
        assert not rep.fell_back, rep.reason
        kv1 = s.get_kv()
        assert rep.layers == [1, 3] and kv1.n_cells == rep.cells_after < kv0.n_cells
        assert kv1.tail == kv0.tail  # sliding-window section byte for byte
        assert rep.tail_kl is not None and np.isfinite(rep.tail_kl)  # an iSWA cache drops its last cells
        assert np.isfinite(s.eval_logits(_ids(3, 7))).all()


def test_hybrid_compacts_attention_layers_and_keeps_the_recurrent_state(tiny_models):
    with tiny_models["hybrid"].session(n_ctx=512) as s:
        s.prefill(_ids(200, 8))
        kv0 = s.get_kv()
        rep = s.compact(ratio=4, queries="repeat", **LENIENT)
        assert not rep.fell_back, rep.reason
        assert rep.layers == s.compact_layers() == [1, 3]
        assert s.get_kv().tail == kv0.tail
        assert s.n_past == 200
        assert rep.tail_kl is None  # a recurrent state cannot read its last tokens again: no continuation probe


def test_recurrent_memory_is_refused_with_the_reason(tiny_models):
    with tiny_models["recurrent"].session(n_ctx=256) as s:
        s.prefill(_ids(50, 9))
        blob = s.snapshot()
        with pytest.raises(UnsupportedLayout) as e:
            s.compact(ratio=4)
        assert "recurrent" in str(e.value) and e.value.reason
        assert s.snapshot() == blob
        with pytest.raises(UnsupportedLayout):
            s.auto_compact()


# --- iterative and automatic ---
def test_compacting_twice_includes_the_existing_bias(llama, monkeypatch):
    # the per-head fit (spans=0) sees the prior of every span cell it fits
    rep1 = llama.compact(ratio=3, queries="context", spans=0.0, **LENIENT)
    assert not rep1.fell_back
    llama.prefill(_ids(100, 10))
    seen = []
    real = spanfit.compact_layer

    def spy(*a, **k):
        seen.append(k["prior_bias"])
        return real(*a, **k)

    monkeypatch.setattr(spanfit, "compact_layer", spy)
    rep2 = llama.compact(ratio=3, queries="context", spans=0.0, **LENIENT)
    assert not rep2.fell_back, rep2.reason
    assert all(p is not None and np.isinf(p).any() | (p != 0).any() for p in seen)
    assert llama.n_past == 300 and llama.n_cells == rep2.cells_after < rep1.cells_after + 100


def test_eviction_baseline_keeps_the_prior_bias_of_kept_cells(llama):
    llama.compact(ratio=3, queries="context", **LENIENT)
    kv1 = llama.get_kv()
    rep = llama.compact(ratio=2, method="random", queries="context", **LENIENT)
    assert not rep.fell_back
    kv2 = llama.get_kv()
    # every (layer, head, kept key) of the second pass carries a bias the first pass produced
    for il in kv2.layers:
        old = {(round(float(k), 3), float(b)) for k, b in zip(kv1.keys[il][:, 0, 0], kv1.bias[il][:, 0], strict=True)}
        new = [(round(float(k), 3), float(b)) for k, b in zip(kv2.keys[il][:, 0, 0], kv2.bias[il][:, 0], strict=True)]
        assert all(pair in old for pair in new if np.isfinite(pair[1]))


def test_auto_compact_runs_past_n_ctx(tiny_models):
    with tiny_models["llama"].session(n_ctx=256) as s:
        s.auto_compact(threshold=0.8, ratio=4, queries="repeat", max_kl=float("inf"))
        s.prefill(_ids(600, 11))
        assert s.n_past == 600 > s.n_ctx
        assert s.auto_reports and not any(r.fell_back for r in s.auto_reports)
        out = s.generate(max_tokens=40)
        assert s.n_past == 600 + len(s.model.tokenize(out)) or s.n_past > 600
        assert s.n_cells <= 0.8 * s.n_ctx
        s.auto_compact(None)
        assert s._auto is None


# --- kv types ---
def test_q8_0_cache_compacts_and_continues(smollm2):
    toks = smollm2.tokenize(TEXT, add_bos=True)[:200]
    with smollm2.session(n_ctx=512, flash_attn=True, kv_type="q8_0") as s:
        s.capture_context_queries(256)
        s.prefill(toks)
        probe = smollm2.tokenize(" The method")
        before = s.eval_logits(probe)
        rep = s.compact(ratio=4, queries="context")
        assert not rep.fell_back, rep.reason
        assert mean_kl(before, s.eval_logits(probe)) < 1.0
        assert s.get_kv().k_types[0] == 8


# --- quality (SmolLM2, real text) ---
def _kl_and_dnll(ref: np.ndarray, got: np.ndarray, cont: list[int]) -> tuple[float, float]:
    """Mean KL over rows and the increase in NLL of cont[1:] (rows predict the next token)."""

    def nll(lg):
        lg = lg[:-1].astype(np.float64)
        lse = np.logaddexp.reduce(lg, axis=1)
        return float(np.mean(lse - lg[np.arange(len(lg)), cont[1:]]))

    return mean_kl(ref, got), nll(got) - nll(ref)


def test_am_with_repeat_queries_beats_the_window_baseline_on_recall(smol):
    """A recall continuation (quote the text's beginning, now compacted) after 5x compaction."""
    st = _state(smol)
    cont = smol.model.tokenize("\n\nQuote the text above from its start:\n\n") + smol.tokens[4:52]
    ref = smol.eval_logits(cont)
    got = {}
    for method, queries in (("am", "repeat"), ("window", "context")):
        rep = smol.compact(ratio=5, method=method, queries=queries, verify=False)
        assert not rep.fell_back, rep.reason
        got[method] = _kl_and_dnll(ref, smol.eval_logits(cont), cont)
        _restore(smol, st)
    print(got)
    assert got["am"][0] < 0.8 * got["window"][0], got
    assert got["am"][1] < got["window"][1], got


# --- reference queries captured once, reused ---
def test_reference_queries_reused_give_the_same_compaction_as_capturing_again(llama):
    st = _state(llama)
    ref = llama.reference_queries("repeat")
    assert _state(llama)[1:] == st[1:] and llama.snapshot() == st[0]  # capture changes nothing
    assert ref.spec == "repeat" and ref.n_cells == st[1] and ref.seconds > 0
    # one layer group: queries captured in advance are never re-captured (on_policy=None gives 1)
    llama.compact(ratio=4, queries="repeat", on_policy=1, **LENIENT)
    after_fresh = llama.snapshot()
    for ratio in (4, 8):  # the whole-span capture serves several compactions of the restored cache
        _restore(llama, st)
        rep = llama.compact(ratio=ratio, queries=ref, **LENIENT)
        assert not rep.fell_back and rep.queries == "repeat"
        assert rep.n_queries > 0
    _restore(llama, st)
    ref4 = llama.reference_queries("repeat", ratio=4)  # the span this compaction fits
    assert ref4.span == ref.span  # am with spans (the default) fits the user's whole span
    llama.compact(ratio=4, queries=ref4, **LENIENT)
    assert llama.snapshot() == after_fresh  # bit-identical to capturing them again
    _restore(llama, st)
    ref4 = llama.reference_queries("repeat", ratio=4, spans=0.0)
    assert ref4.span[0] == ref.span[0] and ref4.span[1] < ref.span[1]  # per-head am: exact recent window


def test_reference_queries_for_another_cache_are_refused_and_nothing_changes(llama):
    ref = llama.reference_queries("repeat", keep_first=4, keep_last=32)
    st = _state(llama)
    with pytest.raises(ConfigError, match="captured for span"):
        llama.compact(ratio=4, queries=ref, keep_last=16, **LENIENT)
    assert llama.snapshot() == st[0] and llama.n_cells == st[1]
    llama.prefill(_ids(5, 3))
    with pytest.raises(ConfigError, match="captured for span"):
        llama.compact(ratio=4, queries=ref, **LENIENT)
    with pytest.raises(ConfigError, match="unknown query option"):
        llama.reference_queries("repeat", nnls_tol=1e-3)


# --- chunked compaction ---
def test_chunked_fit_keeps_the_budget_and_matches_the_whole_span_closely():
    from pyllamaam.compact import attention_errors
    from pyllamaam.compact.synthetic import synthetic_layer

    L = synthetic_layer(H=3, T=1024, n=384, d=32, seed=5)
    whole = spanfit.fit_layer(L.K, L.V, L.Q_fit, 128, L.scale, None, None)
    chunked = spanfit.fit_layer(L.K, L.V, L.Q_fit, 128, L.scale, None, 300)
    assert chunked.keys_kept.max() <= 128 and chunked.keys_kept.min() >= 100
    for h in range(3):
        kept = chunked.indices[h][chunked.kept[h]]
        assert (np.diff(kept) > 0).all() and kept.max() < 1024  # distinct, in order, in range
    e_whole = attention_errors(L.K, L.V, L.Q_test, L.scale, whole).output
    e_chunk = attention_errors(L.K, L.V, L.Q_test, L.scale, chunked).output
    assert (e_chunk < 1.5 * e_whole + 0.02).all(), (e_chunk, e_whole)
    with pytest.raises(ConfigError, match="chunk_tokens"):
        spanfit.fit_layer(L.K, L.V, L.Q_fit, 128, L.scale, None, 3)


def test_chunked_compaction_end_to_end_gives_the_same_cells(llama):
    st = _state(llama)
    whole = llama.compact(ratio=4, queries="repeat", **LENIENT)
    _restore(llama, st)
    rep = llama.compact(ratio=4, queries="repeat", chunk_tokens=48, **LENIENT)
    assert not rep.fell_back, rep.reason
    assert rep.cells_after == whole.cells_after
    slots = sum(llama.layers[il]["n_head_kv"] for il in rep.layers) * rep.span_after
    assert 0.8 * slots <= rep.keys_kept <= slots  # a few zero-weight keys may be dropped
    assert np.isfinite(llama.eval_logits(_ids(3, 2))).all()


# --- on-policy refit ---
def test_on_policy_groups_recapture_queries_and_compact_every_layer(llama):
    st = _state(llama)
    rep = llama.compact(ratio=4, queries="repeat", on_policy=2, **LENIENT)
    assert not rep.fell_back, rep.reason
    assert rep.cells_after == 4 + round(rep.span_before / 4) + 32
    assert np.isfinite(llama.eval_logits(_ids(3, 4))).all()
    _restore(llama, st)
    for bad in ({"queries": "context", "on_policy": 2}, {"queries": "repeat", "on_policy": 0}):
        with pytest.raises(ConfigError, match="on_policy"):
            llama.compact(ratio=4, **bad, **LENIENT)
        assert llama.snapshot() == st[0]


def test_on_policy_none_picks_groups_only_where_queries_can_be_recaptured(llama):
    from pyllamaam import pipeline

    st = _state(llama)
    rep = llama.compact(ratio=4, queries="repeat", on_policy=None, spans=0.0, **LENIENT)
    assert not rep.fell_back, rep.reason
    assert rep.on_policy == min(pipeline.ON_POLICY_GROUPS, len(rep.layers)) > 1
    assert "on-policy in" in str(rep)
    _restore(llama, st)
    ref = llama.reference_queries("repeat")  # captured in advance: nothing to re-capture
    assert llama.compact(ratio=4, queries=ref, on_policy=None, **LENIENT).on_policy == 1
    _restore(llama, st)
    assert llama.compact(ratio=4, method="window", queries="repeat", on_policy=None).on_policy == 1
    _restore(llama, st)


def test_mixed_queries_are_sampled_by_their_tokens_and_no_held_out_token_is_fitted():
    from types import SimpleNamespace

    from pyllamaam.queries import Queries

    n_a, n_b, d = 900, 60, 4  # a long source and a short one, 2 query heads on 1 KV head
    tok = np.arange(n_a + n_b, dtype=np.float32)
    q = np.repeat(tok[:, None, None], 2, axis=1) * np.ones((1, 1, d), np.float32)
    Q = Queries({0: q}, [n_a, n_b])
    sess = SimpleNamespace(layers={0: {"n_head_kv": 1}})
    fit, held = rows.split_queries(Q, 0.2, 400, sess, 100)

    def ids(x):  # token ids of the fitted rows (one per token per query head)
        return x[0][0, ::2, 0]

    assert fit[0].shape == (1, 400, d) and held[0].shape == (1, 100, d)
    assert 0 < (ids(fit) >= n_a).sum() < 40  # the short source gets its token share
    fitted, held_ids = set(ids(fit).tolist()), set(ids(held).tolist())
    assert not fitted & held_ids  # no held-out token is fitted
    assert any(t >= n_a for t in held_ids) and any(t < n_a for t in held_ids)


def test_mixed_queries_record_each_source_and_compact(llama):
    st = _state(llama)
    ref = llama.reference_queries("repeat+self-study")
    n = len(next(iter(ref.queries.values())))
    assert len(ref.queries.parts) == 2 and sum(ref.queries.parts) == n and min(ref.queries.parts) > 0
    rep = llama.compact(ratio=4, queries=ref, **LENIENT)
    assert not rep.fell_back, rep.reason
    assert np.isfinite(llama.eval_logits(_ids(3, 4))).all()
    _restore(llama, st)


def test_partial_state_hides_the_unused_slots_of_fitted_layers(llama):
    kv = llama.get_kv()
    split = kvsplit.split_cells(kv, 4, 32)
    il = llama.compact_layers()[0]
    K, V = kvsplit.span_arrays(kv, il, split)
    res = spanfit.fit_layer(K, V, K[:, ::3], 10, llama.kq_scale(il), None, None)
    out = kvsplit.partial(kv, split, {il: res})
    t = res.indices.shape[1]
    assert np.isneginf(out.bias[il][split.span[t:]]).all()
    assert np.array_equal(out.bias[il][split.span[:t]], res.beta.T.astype(np.float32))
    other = llama.compact_layers()[1]
    assert np.array_equal(out.keys[other], kv.keys[other]) and (out.bias[other] == kv.bias[other]).all()


def test_repeat_pieces_are_evenly_spread_contiguous_and_within_budget():
    from pyllamaam.queries.repeat import spread_pieces

    toks = list(range(1000))
    got = spread_pieces(toks, 300, 100)
    assert len(got) == 300
    pieces = [got[i : i + 100] for i in range(0, 300, 100)]
    assert all(p == list(range(p[0], p[0] + 100)) for p in pieces)  # contiguous
    assert pieces[0][0] == 0 and pieces[-1][-1] == 999  # head and tail both covered
    assert spread_pieces(toks, 2000, 100) == toks
    with pytest.raises(ConfigError):
        spread_pieces(toks, 0, 100)


def test_am_keeps_an_exact_recent_window_of_half_the_budget_and_the_same_cells(llama):
    kv0 = llama.get_kv()
    st = _state(llama)
    rep = llama.compact(ratio=4, queries="context", spans=0.0, **LENIENT)  # recent=0.5 by default
    assert not rep.fell_back, rep.reason
    kv1 = llama.get_kv()
    t = round((kv0.n_cells - 4 - 32) / 4)
    assert kv1.n_cells == rep.cells_after == 4 + t + 32  # same cells as without the window
    w = round(0.5 * (t + 32))  # the exact recent window
    o0, o1 = np.argsort(kv0.positions), np.argsort(kv1.positions)
    assert (kv1.positions[o1[-w:]] == kv0.positions[o0[-w:]]).all()
    for il in kv0.layers:  # keys, values and bias of the window: untouched
        assert np.array_equal(kv1.keys[il][o1[-w:]], kv0.keys[il][o0[-w:]])
        assert np.array_equal(kv1.values[il][o1[-w:]], kv0.values[il][o0[-w:]])
        assert np.array_equal(kv1.bias[il][o1[-w:]], kv0.bias[il][o0[-w:]])
    _restore(llama, st)
    rep0 = llama.compact(ratio=4, queries="context", recent=0.0, spans=0.0, **LENIENT)
    assert rep0.cells_after == rep.cells_after
    full = t * sum(kv0.keys[il].shape[1] for il in kv0.layers)  # keys of the span: the window counts
    assert 0.8 * full <= rep0.keys_kept <= full and 0.8 * full <= rep.keys_kept <= full
    _restore(llama, st)
    with pytest.raises(ConfigError):
        llama.compact(ratio=4, queries="context", recent=1.0, spans=0.0, **LENIENT)
    assert llama.n_cells == st[1]


def test_hybrid_ranking_interleaves_both_rankings_and_keeps_invalid_keys_last():
    rng = np.random.default_rng(0)
    a = np.stack([rng.permutation(50) for _ in range(3)])
    b = np.stack([rng.permutation(50) for _ in range(3)])
    got = interleave(a, b)
    for h in range(3):
        assert sorted(got[h]) == list(range(50))
        for k in (1, 5, 20):  # the top 2k of the merge hold the top k of each ranking
            assert set(a[h, :k]) | set(b[h, :k]) <= set(got[h, : 2 * k])
    inv = np.array([0, 1])  # keys both rankings put last stay last
    a2 = np.array([[2, 3, 4, 0, 1]])
    b2 = np.array([[4, 2, 3, 1, 0]])
    assert set(interleave(a2, b2)[0, -2:]) == set(inv)


# --- observing what the next tokens read ---
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_tail_queries_are_the_prefill_queries_of_the_last_tokens_and_leave_no_trace(tiny_models, arch):
    from pyllamaam.queries import tail_queries

    with tiny_models[arch].session(n_ctx=512) as s:
        s.capture_context_queries(512)
        s.prefill(_ids(200, 3))
        prefill_q = s._ctx_queries.get()
        st, tokens, last = _state(s), s.tokens, s.logits()
        got = tail_queries(s, (4, 180), tail_tokens=12)
        assert set(got) == set(prefill_q)
        for il, q in got.items():
            assert q.shape == (12, *prefill_q[il].shape[1:])
            assert max_rel(q, prefill_q[il][-12:]) < 1e-3, il  # same tokens, same positions, same cache
        assert _state(s) == st and s.tokens == tokens
        np.testing.assert_array_equal(s.logits(), last)
        assert len(next(iter(tail_queries(s, (4, 194), tail_tokens=12).values()))) == 5  # only after the span
        with pytest.raises(ConfigError, match="tail_tokens"):
            tail_queries(s, (4, 180), tail_tokens=0)


def test_snapkv_observation_queries_choose_the_keys_they_attend_to():
    from pyllamaam.compact import compact_layer

    rng = np.random.default_rng(1)
    H, T, d = 2, 40, 16
    K = rng.standard_normal((H, T, d)).astype(np.float32)
    V = rng.standard_normal((H, T, d)).astype(np.float32)
    Q = rng.standard_normal((H, 64, d)).astype(np.float32)
    hot = np.array([[3, 17], [25, 8]])  # per head, the keys the observation queries look at
    obs = np.stack([np.repeat(K[h, hot[h]] * 4, 3, axis=0) for h in range(H)])
    res = compact_layer(K, V, Q, 6, 0.25, method="snapkv", kernel=1, obs=obs)
    for h in range(H):
        assert set(hot[h]) <= set(res.indices[h].tolist())
    plain = compact_layer(K, V, Q, 6, 0.25, method="snapkv", kernel=1)
    assert not np.array_equal(plain.indices, res.indices)
    with pytest.raises(ConfigError, match="obs"):
        compact_layer(K, V, Q, 6, 0.25, method="snapkv", obs=obs[:1])


def test_tail_queries_on_a_hybrid_memory_are_refused_and_nothing_changes(tiny_models):
    with tiny_models["hybrid"].session(n_ctx=512) as s:
        s.prefill(_ids(200, 8))
        st, last = _state(s), s.logits()
        # a recurrent state cannot drop its last tokens to read them again: refused with the reason
        with pytest.raises(ConfigError, match="cannot drop its last 8 cells"):
            s.compact(ratio=4, queries="tail", tail_tokens=8, **LENIENT)
        assert _state(s) == st
        np.testing.assert_array_equal(s.logits(), last)


def test_continuation_probe_is_the_kl_of_the_last_tokens_read_again_and_gates(llama):
    from pyllamaam.queries.tail import tail_logits

    st, probe = _state(llama), _ids(4, 11)
    logits = llama.eval_logits(probe)
    end = llama.n_past - 1 - 32  # the span's last position with keep_last=32
    before = tail_logits(llama, 32, end)
    assert before.shape == (32, llama.model.n_vocab) and _state(llama) == st  # read on a scratch copy
    assert tail_logits(llama, 32, llama.n_past - 6).shape[0] == 5  # only tokens after the span
    rep = llama.compact(ratio=5, queries="context", keep_last=32)
    assert not rep.fell_back, rep.reason
    after = tail_logits(llama, 32, end)
    assert rep.tail_kl == pytest.approx(mean_kl(before, after), rel=1e-6, abs=1e-9)
    assert rep.tail_kl > 0 and "continuation probe KL" in str(rep)
    _restore(llama, st)
    assert llama.compact(ratio=5, queries="context", tail_probe=0).tail_kl is None
    _restore(llama, st)
    # a gate like max_kl: past it, the original cache comes back and the reason says which probe
    rep = llama.compact(ratio=5, queries="context", max_tail_kl=-1.0)
    assert rep.fell_back and "continuation probe KL" in rep.reason
    _assert_unchanged(llama, st, logits, probe)
    with pytest.raises(ConfigError, match="tail_probe"):
        llama.compact(ratio=5, queries="context", tail_probe=-2)
    _assert_unchanged(llama, st, logits, probe)


def test_eviction_baselines_read_the_tail_by_default_and_never_run_a_repeat_pass(llama, tiny_models, monkeypatch):
    from pyllamaam import queries as qsources

    st = _state(llama)
    real = dict(qsources.SOURCES)

    def no_repeat(*a, **k):
        raise AssertionError("a repeat pass for an eviction baseline")

    monkeypatch.setitem(qsources.SOURCES, "repeat", no_repeat)
    for method in ("snapkv", "window", "random"):
        rep = llama.compact(ratio=5, method=method)
        assert not rep.fell_back and rep.queries == "tail" and rep.cells_after < st[1], (method, rep.reason)
        _restore(llama, st)
    rep = llama.compact(ratio=5, method="am", on_policy=1)  # fitted methods keep repeat
    assert rep.fell_back and "a repeat pass" in rep.reason and _state(llama) == st
    monkeypatch.setitem(qsources.SOURCES, "repeat", real["repeat"])
    assert llama.compact(ratio=5, method="window", keep_last=1).queries == "repeat"  # no tail to read
    _restore(llama, st)
    with tiny_models["hybrid"].session(n_ctx=512) as s:  # a recurrent state cannot read its tail again
        s.prefill(_ids(200, 8))
        rep = s.compact(ratio=4, method="window", **LENIENT)
        assert not rep.fell_back and rep.queries == "repeat", rep.reason


def test_a_question_aware_gate_reads_the_question(smol, monkeypatch):
    """With task=, the max_kl gate compares the next-token distributions over the question's own
    tokens before and after (what the compaction serves), not a recall of the text's start."""
    st = _state(smol)
    question = "\n\nQuestion: Which method is called when an attribute lookup fails?\nAnswer:"
    probes = []
    real = type(smol).eval_logits

    def spy(self, token_ids):
        probes.append(list(token_ids))
        return real(self, token_ids)

    monkeypatch.setattr(type(smol), "eval_logits", spy)
    try:
        rep = smol.compact(ratio=10, task=question)
        assert not rep.fell_back, rep.reason
        want = smol.model.tokenize(question)
        assert probes[0] == want and probes.count(want) == 2  # read before and after the write
        assert np.isfinite(rep.kl) and rep.kl <= pipeline.PIPELINE_DEFAULTS["max_kl"]
    finally:
        _restore(smol, st)


def test_a_question_aware_compaction_reports_the_continuation_probe_without_gating_it(smol, monkeypatch):
    st = _state(smol)
    question = "\n\nQuestion: Which method is called when an attribute lookup fails?\nAnswer:"
    monkeypatch.setitem(pipeline.PIPELINE_DEFAULTS, "max_tail_kl", 0.0)  # every compaction would fail it
    try:
        rep = smol.compact(ratio=10, task=question)
        assert not rep.fell_back, rep.reason
        assert rep.tail_kl > 0  # measured and reported
        _restore(smol, st)
        rep = smol.compact(ratio=10, task=question, max_tail_kl=0.0)  # the caller's gate still holds
        assert rep.fell_back and "continuation probe" in rep.reason
        _restore(smol, st)
        rep = smol.compact(ratio=10)  # without a question the default gate applies
        assert rep.fell_back and "continuation probe" in rep.reason
    finally:
        _restore(smol, st)


@pytest.mark.parametrize("kind", ["llama", "gemma3", "hybrid"])
def test_token_nll_reads_the_text_again_and_leaves_the_session_as_it_was(tiny_models, kind):
    toks = _ids(90, 3)
    with tiny_models[kind].session(n_ctx=256, n_batch=32) as s:  # several chunks
        s.prefill(toks)
        blob, logits = s.snapshot(), s.logits()
        nll = s.token_nll()
        assert nll.shape == (90,) and nll[0] == 0
        assert s.snapshot() == blob and s.tokens == toks and np.array_equal(s.logits(), logits)
        np.testing.assert_allclose(s.token_nll(40), nll[:40], rtol=1e-5, atol=1e-5)
    with tiny_models[kind].session(n_ctx=256) as ref:  # the same, one token at a time
        ref.prefill(toks[:1])
        want = []
        for t in toks[1:]:
            p = ref.logits().astype(np.float64)
            want.append(np.log(np.exp(p - p.max()).sum()) + p.max() - p[t])
            ref.prefill([t])
    np.testing.assert_allclose(nll[1:], want, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("kind", ["llama", "gemma3", "hybrid"])
def test_recorded_surprisal_is_the_text_read_again_without_reading_it(tiny_models, kind):
    toks = _ids(130, 4)
    with tiny_models[kind].session(n_ctx=256, n_batch=32) as ref:
        ref.prefill(toks)
        want = ref.token_nll()
    with tiny_models[kind].session(n_ctx=256, n_batch=32) as s:
        s.record_surprisal()
        s.prefill(toks[:70])  # in several prefills, the pieces not aligned to the first read's
        with s.scratch():  # a scratch pass is not text: not recorded
            s.prefill(_ids(20, 9))
        s.prefill(toks[70:120])
        for t in toks[120:]:  # one token at a time, as generation feeds them
            s.prefill([t])
        blob = s.snapshot()

        def read_again():
            raise AssertionError("the text was read again")

        s.scratch = read_again
        got = s.token_nll()
        assert got.shape == (130,) and got[0] == 0 and s.snapshot() == blob
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
        np.testing.assert_array_equal(s.token_nll(50), got[:50])
        del s.scratch
        if kind == "llama":  # dropped tokens leave the record; a token after them is read again
            assert s.drop_last(10)
            np.testing.assert_array_equal(s.token_nll(), got[:120])
            s.prefill(toks[120:])
            np.testing.assert_allclose(s.token_nll(), want, rtol=1e-3, atol=1e-3)
        with pytest.raises(ConfigError, match="before the first prefill"):
            s.record_surprisal()



def test_a_saved_session_keeps_its_recorded_surprisal(tiny_models, tmp_path):
    toks = _ids(100, 6)
    with tiny_models["llama"].session(n_ctx=256) as ref:
        ref.prefill(toks)
        want = ref.token_nll()
    with tiny_models["llama"].session(n_ctx=256) as s:
        s.record_surprisal()
        s.prefill(toks[:60])
        path = s.save(tmp_path / "rec.pllam")
    with tiny_models["llama"].load_session(path) as r:
        r.prefill(toks[60:])  # the record and the mode come back: the rest is recorded too
        r.scratch = None  # a read of the text again would fail
        np.testing.assert_allclose(r.token_nll(), want, rtol=1e-3, atol=1e-3)
    from pyllamaam import statefile
    from pyllamaam.errors import StateError

    saved = statefile.read(path)
    bad = statefile.write(tmp_path / "bad.pllam", {**saved.header, "token_nll": [0.0] * 61}, saved.blob, saved.logits)
    with tiny_models["llama"].session(n_ctx=256) as s:
        s.prefill(toks[:5])
        blob = s.snapshot()
        with pytest.raises(StateError, match="does not match its tokens"):
            s.restore(bad)
        assert s.snapshot() == blob and s.tokens == toks[:5]
