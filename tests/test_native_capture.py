"""Native query capture (``llama_kvc_set_capture``): the q each layer's attention used, copied out by
the context after every ubatch, with no per-node callback.

The reference is the previous capture path, which stays reachable for this comparison: the
``kvc_q-<il>`` probe nodes read by a ``cb_eval`` callback (``LLAMA_KVC_FLAG_QUERY_PROBE``).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import CONT, TEXT

from pyllamaam import _native

pytestmark = pytest.mark.native

MODELS = ["llama", "gemma3", "hybrid", "smollm2", "gemma3-270m"]


def _probe_queries(s, toks, n_first):
    """Queries of ``toks[n_first:]`` after ``toks[:n_first]``, read by the cb_eval probe on a fresh
    twin of session ``s`` fed exactly as ``s`` is (same chunks, so the same cells and kernels)."""
    got: dict[int, list[np.ndarray]] = {}
    on = [False]

    def on_eval(t, ask):
        if not on[0]:
            return not ask
        if ask:
            return _native.probe_is_query(t)
        r = _native.probe_read(t)
        got.setdefault(r[0], []).append(r[1])
        return True

    ctx = s._new_context(_native.FLAG_BIAS | _native.FLAG_QUERY_PROBE, probe=on_eval, probe_key=id(got))
    try:
        ids = np.asarray(toks, dtype=np.int32)
        _native.decode(ctx, ids[:n_first], 0, s.n_batch, False)
        on[0] = True
        _native.decode(ctx, ids[n_first:], n_first, s.n_batch, False)
    finally:
        _native.context_free(ctx, id(got))
    return {il: np.concatenate(qs) for il, qs in sorted(got.items())}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("flash_attn", [False, True], ids=["regular", "flash"])
def test_native_capture_equals_the_probe_bit_for_bit(models, name, flash_attn):
    m = models[name]
    toks = m.tokenize(TEXT + CONT + TEXT, add_bos=True)
    # n_batch 16: the captured tokens span several decode calls, appended in order; they follow
    # 48 tokens already in the cache
    with m.session(n_ctx=512, n_batch=16, flash_attn=flash_attn) as s:
        want = _probe_queries(s, toks, 48)
        s.prefill(toks[:48])
        got = s.capture_queries(toks[48:])
    assert want and sorted(got) == sorted(want)
    for il, q in got.items():
        li = s.layers[il]
        assert q.dtype == np.float32 and q.shape == (len(toks) - 48, li["n_head"], li["head_dim_k"]), il
        np.testing.assert_array_equal(q, want[il], err_msg=f"layer {il}")


@pytest.mark.parametrize("name", ["llama", "gemma3", "smollm2"])
def test_capture_changes_no_logits_and_off_is_the_plain_graph(models, name):
    m = models[name]
    toks = m.tokenize(CONT)
    with m.session(n_ctx=512) as plain, m.session(n_ctx=512) as s:
        plain.prefill(TEXT)
        s.capture_queries(TEXT)  # capture on (and its graphs reserved) ...
        assert np.array_equal(s.logits(), plain.logits())  # ... gives the same logits
        want = plain.eval_logits(toks)
        s._capture = {}
        assert np.array_equal(s.eval_logits(toks), want)
        s._capture = None
        assert np.array_equal(s.eval_logits(toks), want)  # ... and switched off again too
        assert _native.capture_read(s.ctx, 0) == {}  # off: nothing kept


def test_capture_api_return_codes(tiny_models):
    m = tiny_models["llama"]
    with m.session(n_ctx=256) as s:  # one decode call (n_batch 256): the native capture holds the last one
        c = _native._cctx(s.ctx)
        ext = _native.lib().ext
        assert not ext.llama_kvc_get_capture(c) and ext.llama_kvc_capture_n_tokens(c) == 0
        assert ext.llama_kvc_capture_read(c, -1, _native.ffi.NULL, 0, _native.ffi.NULL) == -1
        assert ext.llama_kvc_capture_read(c, m.n_layer, _native.ffi.NULL, 0, _native.ffi.NULL) == -1
        assert ext.llama_kvc_capture_read(c, 0, _native.ffi.NULL, 0, _native.ffi.NULL) == 0
        q = s.capture_queries(TEXT)
        n = len(m.tokenize(TEXT, add_bos=True))
        assert ext.llama_kvc_get_capture(c) and ext.llama_kvc_capture_n_tokens(c) == n
        ne = _native.ffi.new("int64_t[4]")
        assert ext.llama_kvc_capture_read(c, 0, _native.ffi.NULL, 0, ne) == q[0].size
        assert list(ne) == [q[0].shape[2], q[0].shape[1], n, 1]
        # a buffer too small: the size, nothing copied
        dst = np.full(4, 7.0, dtype=np.float32)
        ptr = _native.ffi.cast("float *", dst.ctypes.data)
        assert ext.llama_kvc_capture_read(c, 0, ptr, 4, _native.ffi.NULL) == q[0].size
        assert (dst == 7.0).all()
        assert ext.llama_kvc_capture_clear(c) == 0 and ext.llama_kvc_capture_n_tokens(c) == 0
        assert ext.llama_kvc_set_capture(_native.ffi.NULL, True) == -1
        assert ext.llama_kvc_capture_clear(_native.ffi.NULL) == -1


def test_sessions_install_no_eval_callback(tiny_models):
    # the per-node callback split the graph at every node it watched (capture cost 1.4-2x a prefill)
    with tiny_models["llama"].session(n_ctx=128) as s:
        s.capture_queries(TEXT)
        assert id(s) not in _native._probes
        assert _native.lib().ext.llama_kvc_get_flags(_native._cctx(s.ctx)) == _native.FLAG_BIAS
