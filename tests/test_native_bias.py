"""The bias path of the patched libllama: identities that must hold in both attention paths.

Each test compares the logits of a continuation (``eval_logits``) between two KV states that
must be equivalent if the bias is applied correctly: post-scale, per KV head, on the right cells.

Precision: with an F32 cache and the regular path the identities hold to float32 rounding. With
an F16 cache (and always in the flash path, which runs on F16 K/V and an F16 mask) the rounding
of attention weights to f16 is amplified by deep models: on SmolLM2 even flash vs regular
attention on an untouched context differ by KL ~0.007. There the check is that the identity's
deviation is small and far below the effect of leaving the bias out.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import CONT, QUANTIZED, TEXT, ids, kl, max_rel

pytestmark = pytest.mark.native

MODELS = ["llama", "gemma3", "hybrid", "smollm2"]
# Gemma-3-270M (Q4_K_M): only the exact checks; its f16 noise is of the size of a one-cell effect
PATHS = [(False, "f32"), (False, "f16"), (True, "f16")]
# the cell the identities act on: the first token, an attention sink, so that the effect of the
# bias stands well above the f16 / Q8-activation noise of quantized models
SINK = 0


@pytest.fixture(params=PATHS, ids=["regular-f32", "regular-f16", "flash-f16"])
def path(request):
    return request.param


def _session(model, path, text=TEXT):
    flash, kv_type = path
    s = model.session(n_ctx=512, flash_attn=flash, kv_type=kv_type)
    s.prefill(text)
    return s


def assert_same(got, want, without, path, exact=True, rel_tol=1e-4):
    """``got`` matches ``want``; ``without`` (the bias left out) does not.

    ``exact=False`` for models with quantized weights: llama.cpp quantizes their activations to
    8 bits, so even F32 attention differences of 1e-7 flip roundings downstream. ``rel_tol``: the
    largest relative logit difference on the F32 regular path.
    """
    effect = kl(want, without)
    if path == (False, "f32") and exact:
        assert max_rel(got, want) < rel_tol
        assert effect > 1e-6
    else:
        dev = kl(want, got)
        assert dev < 0.02 and dev < 0.5 * effect, (dev, effect)


@pytest.mark.parametrize("name", [*MODELS, "gemma3-270m"])
def test_round_trip_is_exact(models, name, path):
    m = models[name]
    with _session(m, path) as s:
        cont = m.tokenize(CONT)
        ref = s.eval_logits(cont)
        st = s.get_kv()
        assert st.n_cells == s.n_cells
        assert all(np.all(b == 0) for b in st.bias.values())
        s.set_kv(st)
        np.testing.assert_array_equal(s.eval_logits(cont), ref)
        np.testing.assert_array_equal(s.get_kv().keys[st.layers[0]], st.keys[st.layers[0]])


def _with_duplicate(st, dup, head=None):
    """All cells plus a copy of cell ``dup`` at a free position (dropping position 1 for it).

    Returns (doubled, biased, plain), all with the same cells in the same order:
    - doubled: the copy counts (bias 0; with ``head``, only for that KV head)
    - biased: the copy is masked (-inf) and cell ``dup`` has bias log 2 (on ``head`` or all heads)
    - plain: the copy is masked and there is no bias
    """
    keep = np.array([i for i in range(st.n_cells) if i != 1] + [dup])
    doubled = st.subset(keep)
    doubled.positions[-1] = st.positions[1]
    heads = slice(None) if head is None else head
    j = dup if dup < 1 else dup - 1  # index of cell `dup` once cell 1 is gone
    if head is not None:
        for il in doubled.layers:
            doubled.bias[il][-1, :] = -np.inf
            doubled.bias[il][-1, head] = 0.0
    plain = doubled.subset(np.arange(doubled.n_cells))
    for il in plain.layers:
        plain.bias[il][-1, :] = -np.inf
    biased = plain.subset(np.arange(plain.n_cells))
    for il in biased.layers:
        biased.bias[il][j, heads] = math.log(2.0)
    return doubled, biased, plain


def _logits(s, state, cont):
    s.set_kv(state)
    return s.eval_logits(cont)


@pytest.mark.parametrize("name", MODELS)
def test_duplicate_cell_equals_bias_log2(models, name, path):
    m = models[name]
    cont = m.tokenize(CONT)
    with _session(m, path) as s:
        doubled, biased, plain = _with_duplicate(s.get_kv(), dup=SINK)
        want, got, without = (_logits(s, x, cont) for x in (doubled, biased, plain))
    assert_same(got, want, without, path, exact=name not in QUANTIZED)


@pytest.mark.parametrize("name", ["llama", "smollm2"])
def test_duplicate_identity_per_kv_head(models, name, path):
    m = models[name]
    cont = m.tokenize(CONT)
    with _session(m, path) as s:
        st = s.get_kv()
        for h in range(st.bias[st.layers[0]].shape[1]):
            doubled, biased, plain = _with_duplicate(st, dup=SINK, head=h)
            want, got, without = (_logits(s, x, cont) for x in (doubled, biased, plain))
            assert_same(got, want, without, path, exact=name not in QUANTIZED)


@pytest.mark.parametrize("name", MODELS)
def test_minus_inf_bias_equals_deleting_the_cell(models, name, path):
    m = models[name]
    cont = m.tokenize(CONT)
    with _session(m, path) as s:
        st = s.get_kv()
        gone = SINK
        s.set_kv(st.subset(np.array([i for i in range(st.n_cells) if i != gone])))
        want = s.eval_logits(cont)
        masked = st.subset(np.arange(st.n_cells))
        for il in masked.layers:
            masked.bias[il][gone, :] = -np.inf
        s.set_kv(masked)
        got = s.eval_logits(cont)
        s.set_kv(st)
        full = s.eval_logits(cont)
    assert_same(got, want, full, path, exact=name not in QUANTIZED)


@pytest.mark.parametrize("flash_attn", [False, True], ids=["noflash", "flash"])
def test_bias_on_kv_head_changes_only_its_query_group(tiny_models, flash_attn):
    # GQA: query head h reads KV head h // (n_head / n_head_kv); a bias on KV head g must change
    # the attention output of exactly the query heads of group g
    m = tiny_models["llama"]
    cont = m.tokenize(CONT)
    with _session(m, (flash_attn, "f16")) as s:
        n_head, n_head_kv, d = (s.layers[0][k] for k in ("n_head", "n_head_kv", "head_dim_v"))
        r = n_head // n_head_kv
        st = s.get_kv()
        ref = s.capture_nodes(["kqv_out-0"], cont)["kqv_out-0"].reshape(len(cont), n_head, d)
        for g in range(n_head_kv):
            b = st.subset(np.arange(st.n_cells))
            b.bias[0][3:9, g] = 1.5
            s.set_kv(b)
            out = s.capture_nodes(["kqv_out-0"], cont)["kqv_out-0"].reshape(len(cont), n_head, d)
            diff = np.abs(out - ref).max(axis=(0, 2))
            group = np.arange(n_head) // r == g
            assert (diff[group] > 1e-3).all(), diff
            assert (diff[~group] < 1e-6).all(), diff
        s.set_kv(st)


@pytest.mark.parametrize("name", ["llama", "smollm2"])
def test_flash_and_regular_paths_agree_with_biases(models, name):
    m = models[name]
    cont = m.tokenize(CONT)
    rng = np.random.default_rng(0)
    with _session(m, (False, "f16")) as a, _session(m, (True, "f16")) as b:
        st = a.get_kv()
        for il in st.layers:
            st.bias[il] = rng.uniform(-2, 2, size=st.bias[il].shape).astype(np.float32)
        a.set_kv(st)
        b.set_kv(st)
        la, lb = a.eval_logits(cont), b.eval_logits(cont)
        a.set_kv(a.get_kv().subset(np.arange(st.n_cells)))  # unchanged
        zero = st.subset(np.arange(st.n_cells))
        for il in zero.layers:
            zero.bias[il][:] = 0
        a.set_kv(zero)
        unbiased = a.eval_logits(cont)
    # within f16 noise, and far from what the same context gives without the biases
    assert kl(la, lb) < 0.02 and kl(la, lb) < 0.25 * kl(la, unbiased)


@pytest.mark.parametrize("free", ["seq_rm", "shift", "clear"])
@pytest.mark.parametrize("flash", [False, True], ids=["regular", "flash"])
def test_reused_cell_starts_with_bias_zero(tiny_models, flash, free):
    """The cache zeroes the bias of cells as they become free (the graph zeroes nothing), however
    they are freed: removed, shifted before position 0, or the whole cache cleared without its data."""
    import ctypes

    from pyllamaam import _native

    C, m = _native.lib().C, tiny_models["llama"]
    with m.session(n_ctx=64, flash_attn=flash) as s:
        n = _native.n_ctx(s.ctx)
        toks = (m.tokenize(TEXT * 4, add_bos=True))[:n]
        s.prefill(toks)  # every cell is in use
        st = s.get_kv()
        for il in st.layers:
            st.bias[il][:] = 3.0
        s.set_kv(st)
        mem = C.llama_get_memory(ctypes.c_void_p(s.ctx))
        # free cells (their storage held bias 3) and fill them with new tokens
        if free == "seq_rm":  # the last 4
            assert _native.seq_rm(s.ctx, n - 4, -1)
            s._n_cells, s._tokens = s._n_cells - 4, s._tokens[:-4]
            s.prefill(toks[n - 4 :])
            new_pos = np.arange(n - 4, n)
        elif free == "shift":  # the first 4, moved before position 0; new tokens come after the last
            C.llama_memory_seq_add(mem, 0, 0, 4, -1000)
            s._n_cells -= 4
            s.prefill(toks[:4])
            new_pos = np.arange(n, n + 4)
        else:  # every cell, the data left as it was
            C.llama_memory_clear(mem, False)
            s._n_cells, s._tokens = 0, []
            s.prefill(toks[:8])
            new_pos = np.arange(8)
        after = s.get_kv()
        new = np.isin(after.positions, new_pos)
        assert new.sum() == len(new_pos)
        for il in after.layers:
            assert np.all(after.bias[il][new] == 0.0)
            assert np.all(after.bias[il][~new] == 3.0)


def flash_vs_regular_token_by_token(model, **session_opts) -> tuple[float, float]:
    """Next-token KL, decoding 4 tokens one at a time over 700 cells with a random bias (some
    cells at -inf): flash against regular attention, and regular against flash without the bias."""
    toks, cont = ids(700), ids(4, seed=1)
    runs = {}
    for flash, biased in ((False, True), (True, True), (True, False)):
        with model.session(n_ctx=1024, flash_attn=flash, kv_type="f16", **session_opts) as s:
            s.prefill(toks)
            st = s.get_kv()
            if biased:
                for il in st.layers:
                    rng = np.random.default_rng(il)  # the same bias in each path
                    b = rng.normal(0.0, 1.5, st.bias[il].shape)
                    b[rng.random(b.shape) < 0.1] = -np.inf
                    st.bias[il][:] = b
            s.set_kv(st)
            steps = []
            for t in cont:  # one token per decode
                s.prefill([t])
                steps.append(s.logits())
            runs[flash, biased] = np.stack(steps)
    return kl(runs[False, True], runs[True, True]), kl(runs[False, True], runs[True, False])


def test_one_token_decode_of_flash_attention_reads_the_bias(tiny64):
    """ggml-cpu decodes one token over >= 512 cells by splitting the cells across threads (patch
    0005 lets that path take the bias path's heads layout): token by token, the flash path gives
    the regular path's next-token distributions on a biased cache, and not the unbiased ones."""
    dev, effect = flash_vs_regular_token_by_token(tiny64, n_threads=2)
    assert dev < 1e-3 and effect > 100 * dev, (dev, effect)
