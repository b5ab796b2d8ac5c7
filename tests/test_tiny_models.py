"""The tiny random-weight GGUF models load, tokenize and run in the pinned llama.cpp.

Native checks use llama-cpp-python's high-level ``Llama`` (plus the model-level query
functions), so they test the files, not our own binding.
"""

from __future__ import annotations

import numpy as np
import pytest

from pyllamaam import tiny

TEXT = b"The quick brown fox jumps over the lazy dog."

# kind -> (is_recurrent, is_hybrid, n_swa)
LAYOUTS = {
    "llama": (False, False, 0),
    "gemma3": (False, False, 32),
    "recurrent": (True, False, 0),
    "hybrid": (False, True, 0),
}


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="session")
def llama_cpp():
    # No importorskip: a native test must fail, not skip, when the library is missing.
    import llama_cpp

    return llama_cpp


@pytest.fixture(scope="session", params=tiny.KINDS)
def llm(request, tiny_dir, llama_cpp):
    path = tiny.tiny_model_path(request.param, tiny_dir)
    model = llama_cpp.Llama(
        model_path=str(path), n_ctx=256, n_batch=256, logits_all=True, seed=0, verbose=False
    )
    model.kind = request.param
    yield model
    model.close()


def _last_logits(llm, tokens):
    llm.reset()
    llm.eval(tokens)
    return np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)


# --------------------------------------------------------------------------- files


@pytest.mark.parametrize("kind", tiny.KINDS)
def test_writers_are_deterministic(tmp_path, kind):
    writer = tiny._WRITERS[kind]
    a = writer(tmp_path / "a.gguf", seed=3).read_bytes()
    b = writer(tmp_path / "b.gguf", seed=3).read_bytes()
    c = writer(tmp_path / "c.gguf", seed=4).read_bytes()
    assert a[:4] == b"GGUF"
    assert a == b
    assert a != c


def test_tiny_model_path_writes_once_per_params(tmp_path):
    p1 = tiny.tiny_model_path("llama", tmp_path)
    mtime = p1.stat().st_mtime_ns
    assert tiny.tiny_model_path("llama", tmp_path) == p1
    assert p1.stat().st_mtime_ns == mtime
    p2 = tiny.tiny_model_path("llama", tmp_path, seed=1)
    assert p2 != p1 and p2.exists()
    assert list(tmp_path.glob("*.tmp")) == []


def test_tiny_model_path_rejects_unknown_kind(tmp_path):
    with pytest.raises(ValueError, match="unknown tiny model kind"):
        tiny.tiny_model_path("bert", tmp_path)


# --------------------------------------------------------------------------- native


@pytest.mark.native
def test_layout_flags(llm, llama_cpp):
    is_recurrent, is_hybrid, n_swa = LAYOUTS[llm.kind]
    assert llama_cpp.llama_model_is_recurrent(llm.model) == is_recurrent
    assert llama_cpp.llama_model_is_hybrid(llm.model) == is_hybrid
    assert llama_cpp.llama_model_n_swa(llm.model) == n_swa


@pytest.mark.native
def test_gqa_shape(llm, llama_cpp):
    if llm.kind == "recurrent":
        assert llama_cpp.llama_model_n_head(llm.model) == 0
        return
    # hybrid reports layer 0 (a recurrent layer, 0 KV heads); the others report 4 over 2.
    n_head_kv = 0 if llm.kind == "hybrid" else 2
    assert llama_cpp.llama_model_n_head(llm.model) == 4
    assert llama_cpp.llama_model_n_head_kv(llm.model) == n_head_kv


@pytest.mark.native
def test_tokenizer(llm):
    assert llm.n_vocab() == 512
    assert llm.token_bos() == tiny.BOS_ID
    assert llm.token_eos() == tiny.EOS_ID
    tokens = llm.tokenize(TEXT)
    assert tokens[0] == tiny.BOS_ID
    assert tiny.UNK_ID not in tokens
    assert len(tokens) < len(TEXT)  # merges happen
    assert llm.detokenize(tokens[1:]).strip() == TEXT


@pytest.mark.native
def test_logits_finite_and_input_dependent(llm):
    a = _last_logits(llm, llm.tokenize(TEXT))
    b = _last_logits(llm, llm.tokenize(TEXT.replace(b"fox", b"cat")))
    a2 = _last_logits(llm, llm.tokenize(TEXT))
    assert np.isfinite(a).all() and np.isfinite(b).all()
    assert a.std() > 0.1  # not degenerate
    assert np.abs(a - b).max() > 1e-3  # a changed token changes the prediction
    np.testing.assert_array_equal(a, a2)  # and evaluation is repeatable


@pytest.mark.native
def test_long_context_runs(llm):
    # Longer than gemma3's window of 32, so its sliding-window layers really slide.
    tokens = [tiny.BOS_ID] + list(np.random.default_rng(0).integers(3, 512, 200))
    llm.reset()
    llm.eval(tokens)
    scores = np.asarray(llm.scores[: llm.n_tokens])
    assert scores.shape == (201, 512)
    assert np.isfinite(scores).all()


@pytest.mark.native
def test_gemma3_global_layers_see_past_the_window(tiny_dir, llama_cpp):
    # With layers 1 and 3 global, the first token still matters 150 tokens later. An
    # all-sliding model forgets it: 4 layers of window 32 reach back only 4 * 31 = 124.
    def last(path, first):
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, logits_all=True, verbose=False)
        try:
            tokens = [tiny.BOS_ID, first] + [100 + i % 50 for i in range(150)]
            return _last_logits(llm, tokens)
        finally:
            llm.close()

    mixed = tiny.tiny_model_path("gemma3", tiny_dir)
    all_swa = tiny.tiny_model_path("gemma3", tiny_dir, swa_layers=(0, 1, 2, 3))
    assert np.abs(last(mixed, 300) - last(mixed, 301)).max() > 1e-4
    np.testing.assert_allclose(last(all_swa, 300), last(all_swa, 301), atol=1e-5)
