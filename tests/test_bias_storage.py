"""Sessions without bias storage: llama.cpp's own graphs and bytes for caches that hold no fitted bias."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import TEXT, kl
from test_memory import _table_picking

from pyllamaam import StateError, demo, memory
from pyllamaam.pipeline import mean_kl

pytestmark = pytest.mark.native


def test_a_session_without_bias_storage_reads_as_one_with_it_and_counts_k_and_v_only(smollm2):
    probe = smollm2.tokenize(" The next morning")
    with smollm2.session(n_ctx=512, n_threads=1) as a, smollm2.session(n_ctx=512, n_threads=1, bias_storage=False) as b:
        a.prefill(TEXT)
        b.prefill(TEXT)
        assert a.bias_storage and not b.bias_storage and b.can_compact, b.gate_reason
        assert kl(a.eval_logits(probe), b.eval_logits(probe)) < 1e-4
        with_bias, without = a.kv_bytes(detail=True), b.kv_bytes(detail=True)
        assert without.bias == 0 and (without.k, without.v) == (with_bias.k, with_bias.v) and with_bias.bias > 0
        assert a.kv_bytes(bias_storage=False) == b.kv_bytes() and b.kv_bytes(bias_storage=True) == a.kv_bytes()


def test_a_bias_is_refused_without_storage_and_nothing_changes(smollm2):
    with smollm2.session(n_ctx=512, n_threads=1, bias_storage=False) as s:
        s.prefill(TEXT)
        blob, kv = s.snapshot(), s.get_kv()
        bias = {il: np.full_like(b, -0.5) for il, b in kv.bias.items()}
        with pytest.raises(StateError, match="no bias storage"):
            s.set_kv(dataclasses.replace(kv, bias=bias))
        assert s.snapshot() == blob
        s.set_kv(kv)  # a zero bias needs no storage
        assert not s.bias_storage and s.snapshot() == blob


def test_whole_sentences_stay_without_storage_and_a_fit_moves_to_it(smollm2):
    with smollm2.session(n_ctx=4096, n_threads=1, bias_storage=False) as s:
        s.prefill(demo.document())
        n = s.n_cells
        rep = s.compact(target_cells=n // 3, spans=1.0, span_score="cache")
        assert not rep.fell_back, rep.reason
        assert not s.bias_storage and s.n_cells <= n // 3 and s.kv_bytes(detail=True).bias == 0
        # the default fits a bias: the cells move to a context that stores it, then compact
        rep = s.compact(ratio=2)
        assert not rep.fell_back, rep.reason
        assert s.bias_storage and s.get_kv().holds_bias()
        assert s.generate(demo.prompt(), max_tokens=6) is not None
        # a fitted bias cannot be dropped: the move is refused and the cache stays as it is
        blob = s.snapshot()
        with pytest.raises(StateError, match="fitted bias"):
            s.retype(bias_storage=False)
        assert s.bias_storage and s.snapshot() == blob


@pytest.mark.parametrize("method", ["sentences", "default"])
def test_a_memory_target_without_a_fit_spends_the_bias_bytes_on_cells(smollm2, monkeypatch, method):
    _table_picking(monkeypatch, method)
    with smollm2.session(n_ctx=4096, n_threads=1) as s:
        s.prefill(demo.document())
        budget = s.kv_bytes_f16() / 8
        per_cell = {b: s.kv_bytes(n_cells=1, kv_type_k="q8_0", kv_type_v="q4_0", bias_storage=b) for b in (True, False)}
        rep = s.compact(memory=8)
        assert not rep.fell_back, rep.reason
        fitted = method == "default"
        assert s.bias_storage == rep.memory["bias_storage"] == fitted
        assert ("no bias storage" in str(rep)) == (not fitted)
        assert (s.kv_bytes(detail=True).bias > 0) == fitted
        assert s.kv_bytes_f16() / s.kv_bytes() >= 8
        assert s.n_cells == memory.cells_for(budget, per_cell[fitted])
        if not fitted:
            assert s.n_cells > memory.cells_for(budget, per_cell[True])  # the bytes a bias would take: more cells


def test_saved_without_bias_storage_loads_so_and_a_biased_file_is_refused_there(smollm2, tmp_path):
    probe = smollm2.tokenize(" The next morning")
    with smollm2.session(n_ctx=1024, n_threads=1, bias_storage=False) as s:
        s.prefill(TEXT)
        want = s.eval_logits(probe)
        path = s.save(tmp_path / "plain.pllam")
    with smollm2.load_session(path, n_threads=1) as r:
        assert not r.bias_storage
        assert mean_kl(want, r.eval_logits(probe)) < 1e-6
    with smollm2.session(n_ctx=1024, n_threads=1) as r:  # a context with storage takes it (bias 0)
        r.restore(path)
        assert kl(want, r.eval_logits(probe)) < 1e-4
        biased = r.save(tmp_path / "biased.pllam")
    with smollm2.session(n_ctx=1024, n_threads=1, bias_storage=False) as r:
        r.prefill("Something else.")
        blob = r.snapshot()
        with pytest.raises(StateError, match="saved with bias storage"):
            r.restore(biased)
        assert r.snapshot() == blob


def test_an_iswa_cache_moves_into_and_out_of_bias_storage(tiny_models):
    from conftest import ids

    m = tiny_models["gemma3"]
    probe = ids(4, seed=9)
    with m.session(n_ctx=512, n_threads=1) as s:
        s.prefill(ids(120))
        want, cells = s.eval_logits(probe), s.n_cells
        s.retype(bias_storage=False)
        assert not s.bias_storage and s.n_cells == cells and s.memory_layout == "iswa"
        assert kl(want, s.eval_logits(probe)) < 1e-4
        s.retype("bf16", "f32", bias_storage=True)  # the tiny heads are 16 wide
        assert s.bias_storage and s.can_compact
        assert s.generate(probe, max_tokens=3) is not None


def test_a_cache_holding_a_fitted_bias_keeps_its_storage_under_a_memory_target(smollm2, monkeypatch):
    _table_picking(monkeypatch, "sentences")
    with smollm2.session(n_ctx=4096, n_threads=1) as s:
        assert not memory.holds_bias(s)  # nothing written yet: no read of the cache
        s.prefill(demo.document())
        rep = s.compact(ratio=2)  # the default: fitted
        assert not rep.fell_back, rep.reason
        assert memory.holds_bias(s)
        rep = s.compact(memory=8)  # whole sentences keep some fitted cells: their bias stays
        assert not rep.fell_back, rep.reason
        assert s.bias_storage and rep.memory["bias_storage"] and s.kv_bytes(detail=True).bias > 0
        assert s.kv_bytes_f16() / s.kv_bytes() >= 8
