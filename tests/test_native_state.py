"""Saved sessions and the layout gate, on the real patched library."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import CONT, TEXT

from pyllamaam import StateError
from pyllamaam.kv import build_seq_state

pytestmark = pytest.mark.native


def _biased_session(model, flash=False):
    s = model.session(n_ctx=512, flash_attn=flash)
    s.prefill(TEXT)
    st = s.get_kv()
    rng = np.random.default_rng(1)
    for il in st.layers:
        st.bias[il] = rng.uniform(-1.5, 1.5, size=st.bias[il].shape).astype(np.float32)
    s.set_kv(st.subset(np.r_[0, np.arange(5, st.n_cells)]))  # a compacted-looking subset
    return s


@pytest.mark.parametrize("name", ["llama", "gemma3", "hybrid", "smollm2", "gemma3-270m"])
@pytest.mark.parametrize("flash", [False, True], ids=["regular", "flash"])
def test_save_load_gives_identical_logits(models, name, flash, tmp_path):
    m = models[name]
    cont = m.tokenize(CONT)
    with _biased_session(m, flash) as s:
        want = s.eval_logits(cont)
        kv = s.get_kv()
        path = s.save(tmp_path / "doc.pllam")
        n_past, n_cells, last = s.n_past, s.n_cells, s.logits()
    with m.load_session(path) as t:
        assert (t.n_past, t.n_cells) == (n_past, n_cells)
        np.testing.assert_array_equal(t.logits(), last)
        np.testing.assert_array_equal(t.eval_logits(cont), want)
        got = t.get_kv()
        for il in kv.layers:
            np.testing.assert_array_equal(got.bias[il], kv.bias[il])
    # compact once, ask many times: a second session from the same file
    with m.load_session(path) as u:
        np.testing.assert_array_equal(u.eval_logits(cont), want)


def _corruptions(data: bytes) -> dict[str, bytes]:
    mid = len(data) // 2
    return {
        "truncated": data[: len(data) - 100],
        "flipped byte": data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1 :],
        "not a session": b"GGUF" + data[4:],
        "empty": b"",
    }


def test_bad_files_raise_and_leave_the_session_untouched(models, tmp_path):
    m = models["llama"]
    cont = m.tokenize(CONT)
    with _biased_session(m) as s:
        good = s.save(tmp_path / "good.pllam").read_bytes()
    with m.session(n_ctx=512) as victim:
        victim.prefill("Another text that must survive.")
        before = victim.eval_logits(cont)
        n_past = victim.n_past
        for what, data in _corruptions(good).items():
            bad = tmp_path / "bad.pllam"
            bad.write_bytes(data)
            with pytest.raises(StateError) as err:
                victim.restore(bad)
            assert str(bad) in str(err.value), what
            with pytest.raises(StateError):
                m.load_session(bad)
            assert victim.n_past == n_past
            np.testing.assert_array_equal(victim.eval_logits(cont), before)
        with pytest.raises(StateError, match="cannot read"):
            m.load_session(tmp_path / "missing.pllam")


def test_a_file_of_another_model_is_refused(models, tmp_path):
    with _biased_session(models["llama"]) as s:
        path = s.save(tmp_path / "llama.pllam")
    other = models["smollm2"]
    with other.session(n_ctx=512) as victim:
        victim.prefill(TEXT)
        before = victim.get_kv()
        with pytest.raises(StateError, match="another model"):
            victim.restore(path)
        with pytest.raises(StateError, match="another model"):
            other.load_session(path)
        after = victim.get_kv()
        np.testing.assert_array_equal(after.keys[0], before.keys[0])


def test_a_blob_the_library_refuses_restores_the_previous_state(models):
    m = models["llama"]
    cont = m.tokenize(CONT)
    with m.session(n_ctx=512) as s:
        s.prefill(TEXT)
        want = s.eval_logits(cont)
        st = s.get_kv()
        blob = bytearray(build_seq_state(st))
        blob[-8:] = b"\xff\xff\xc0\x7f" * 2  # NaN in the last bias row: the library must refuse it
        with pytest.raises(StateError, match="restored"):
            s.write_state(bytes(blob), st.n_cells)
        np.testing.assert_array_equal(s.eval_logits(cont), want)


def test_set_kv_must_keep_the_last_cell(models):
    m = models["llama"]
    with m.session(n_ctx=512) as s:
        s.prefill(TEXT)
        st = s.get_kv()
        with pytest.raises(StateError, match="n_past-1"):
            s.set_kv(st.subset(np.arange(st.n_cells - 1)))
        assert s.get_kv().n_cells == st.n_cells


@pytest.mark.parametrize(
    "name, layout, ok, layers, reason",
    [
        ("llama", "kv", True, [0, 1], "ok"),
        ("gemma3", "iswa", True, [1, 3], "ok"),
        ("hybrid", "hybrid", True, [1, 3], "ok"),
        ("recurrent", "recurrent", False, [], "recurrent model (mamba)"),
    ],
)
def test_gate_reports_layout_and_reason(tiny_models, name, layout, ok, layers, reason):
    m = tiny_models[name]
    with m.session(n_ctx=256) as s:
        assert s.memory_layout == layout
        assert s.can_compact is ok
        assert reason in s.gate_reason
        assert s.compact_layers() == layers
        if not ok:
            from pyllamaam import UnsupportedLayout

            s.prefill(TEXT)
            with pytest.raises(UnsupportedLayout, match="recurrent"):
                s.get_kv()


def test_gate_on_smollm2_and_kq_scale(smollm2):
    with smollm2.session(n_ctx=256) as s:
        assert (s.memory_layout, s.can_compact) == ("kv", True)
        assert s.kq_scale(0) == pytest.approx(1 / np.sqrt(64))


def test_gate_on_gemma3_270m_compacts_global_layers_only(gemma3_270m):
    with gemma3_270m.session(n_ctx=1024) as s:
        assert (s.memory_layout, s.can_compact) == ("iswa", True)
        layers = s.compact_layers()
        swa = [il for il, li in enumerate(s.layers) if li["flags"] & 2]
        assert layers and swa and not set(layers) & set(swa)
        assert sorted(layers + swa) == list(range(gemma3_270m.n_layer))
        assert s.kq_scale(layers[0]) == pytest.approx(1.0)  # Gemma pre-scales q


def test_a_blob_without_bias_section_loads_with_bias_zero(models):
    m = models["llama"]
    cont = m.tokenize(CONT)
    with m.session(n_ctx=512) as s:
        s.prefill(TEXT)
        plain = s.get_kv()
        want = s.eval_logits(cont)
        biased = plain.subset(np.arange(plain.n_cells))
        for il in biased.layers:
            biased.bias[il][:] = 2.0
        s.set_kv(biased)
        assert np.abs(s.eval_logits(cont) - want).max() > 1e-3
        # a llama.cpp state written without the bias section (e.g. by an unpatched build)
        s.write_state(build_seq_state(plain, with_bias=False), plain.n_cells)
        assert all(np.all(b == 0) for b in s.get_kv().bias.values())
        np.testing.assert_array_equal(s.eval_logits(cont), want)
