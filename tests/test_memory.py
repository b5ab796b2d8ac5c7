"""Bytes, not cells: moving a cache between types (Session.retype) and compact(memory=...)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import TEXT
from conftest import ids as _ids

from pyllamaam import ConfigError, demo, memory, retype
from pyllamaam.kv import KVState, parse_section
from pyllamaam.kvtypes import BY_NAME
from pyllamaam.pipeline import mean_kl

pytestmark = pytest.mark.native


def test_hadamard_is_symmetric_orthonormal_and_undoes_itself():
    for n in (64, 128):
        H = retype.hadamard(n).astype(np.float64)
        np.testing.assert_allclose(H, H.T)
        np.testing.assert_allclose(H @ H, np.eye(n), atol=1e-6)
    assert retype.rotation_block("q4_0", 64, "k") == 64 and retype.rotation_block("q4_0", 128, "k") == 128
    assert retype.rotation_block("q4_0", 128, "v") == 64
    assert retype.rotation_block("f16", 64, "k") == 0 and retype.rotation_block("q8_0", 48, "k") == 0


def test_convert_rotates_into_the_destination_basis_and_back():
    rng = np.random.default_rng(0)
    st = KVState(np.arange(5), {0: rng.standard_normal((5, 2, 64)).astype(np.float32)},
                 {0: rng.standard_normal((5, 2, 64)).astype(np.float32)}, {0: np.zeros((5, 2), np.float32)})
    q = retype.convert(st, ("f16", "f16"), ("q4_0", "q8_0"))
    assert not np.allclose(q.keys[0], st.keys[0]) and not np.allclose(q.values[0], st.values[0])
    # attention logits are unchanged by the rotation when queries rotate alike
    H = retype.hadamard(64)
    qv = rng.standard_normal(64).astype(np.float32)
    np.testing.assert_allclose(q.keys[0] @ (qv @ H), st.keys[0] @ qv, rtol=1e-4, atol=1e-4)
    back = retype.convert(q, ("q4_0", "q8_0"), ("f16", "f16"))
    np.testing.assert_allclose(back.keys[0], st.keys[0], atol=1e-5)
    np.testing.assert_allclose(back.values[0], st.values[0], atol=1e-5)
    same = retype.convert(st, ("q8_0", "q8_0"), ("q4_0", "q4_0"))  # same basis: only the tags change
    np.testing.assert_array_equal(same.keys[0], st.keys[0])


@pytest.mark.parametrize(("k", "v"), [("q8_0", "q8_0"), ("q4_0", "q4_0"), ("q8_0", "q4_0"), ("iq4_nl", "q5_1")])
def test_retype_moves_the_cache_and_predicts_as_before(smollm2, k, v):
    # regression: a state written to a quantized cache without the Hadamard rotation predicts
    # garbage (KL 10-15 nats measured); rotated it predicts as a prefill in that type does
    probe = smollm2.tokenize(" The next morning")
    with smollm2.session(n_ctx=512, n_threads=1) as s:
        s.prefill(TEXT)
        want, cells = s.eval_logits(probe), s.n_cells
        s.retype(k, v)
        assert (s.kv_type_k, s.kv_type_v, s.flash_attn) == (k, v, True)
        assert s.n_cells == cells and s.kv_bytes() < s.kv_bytes_f16()
        moved = s.eval_logits(probe)
        with smollm2.session(n_ctx=512, n_threads=1, flash_attn=True, kv_type_k=k, kv_type_v=v) as direct:
            direct.prefill(TEXT)
            prefilled = direct.eval_logits(probe)
        assert mean_kl(want, moved) < max(0.02, 2 * mean_kl(want, prefilled))
        s.retype("f16")  # and back: decoding goes on
        assert s.kv_type_k == s.kv_type_v == "f16"
        assert mean_kl(want, s.eval_logits(probe)) < 0.1
        assert s.generate(" and", max_tokens=3)


def test_retype_refuses_bad_types_and_other_layouts(tiny64, tiny_models):
    with tiny64.session(n_ctx=256) as s:
        s.prefill(_ids(40))
        blob = s.snapshot()
        with pytest.raises(ConfigError, match="not a KV cache type"):
            s.retype("q3_k")
        assert s.kv_type_k == "f16" and s.snapshot() == blob
    with tiny_models["recurrent"].session(n_ctx=256) as s:
        s.prefill(_ids(40))
        blob = s.snapshot()
        with pytest.raises(ConfigError, match="recurrent"):
            s.retype("q8_0")
        assert s.snapshot() == blob


@pytest.mark.parametrize("kind", ["gemma3", "hybrid", "gemma3-270m"])
def test_retype_moves_iswa_and_hybrid_caches(models, kind):
    # iSWA: the sliding-window cache follows the first one into the new types (llama.cpp refuses a
    # state whose sections disagree with the context's types); hybrid: the recurrent state stays
    m = models[kind]
    text = TEXT if kind == "gemma3-270m" else _ids(120)
    probe = m.tokenize(" The next morning") if kind == "gemma3-270m" else _ids(4, seed=9)
    k, v = ("q8_0", "q4_0") if kind == "gemma3-270m" else ("bf16", "f32")  # the tiny heads are 16 wide
    with m.session(n_ctx=512, n_threads=1) as s:
        s.prefill(text)
        want, cells, flash = s.eval_logits(probe), s.n_cells, s.flash_attn or v == "q4_0"
        s.retype(k, v)
        assert (s.kv_type_k, s.kv_type_v, s.flash_attn, s.n_cells) == (k, v, flash, cells)
        moved = s.eval_logits(probe)
        if s.memory_layout == "iswa":
            heads = {il: li["n_head_kv"] for il, li in enumerate(s.layers) if li["flags"] & 2}
            swa, _, _ = parse_section(s.get_kv().tail, list(heads), heads)
            assert swa.n_cells > 0 and swa.v_trans == (not flash)
            assert set(swa.k_types.values()) == {BY_NAME[k]} and set(swa.v_types.values()) == {BY_NAME[v]}
        with m.session(n_ctx=512, n_threads=1, flash_attn=flash, kv_type_k=k, kv_type_v=v) as direct:
            direct.prefill(text)
            prefilled = direct.eval_logits(probe)
        assert mean_kl(want, moved) < max(0.02, 2 * mean_kl(want, prefilled))
        s.retype("f16")
        assert mean_kl(want, s.eval_logits(probe)) < max(0.05, 4 * mean_kl(want, prefilled))
        assert s.generate(probe, max_tokens=3) is not None


TABLE = {
    "source": "test",
    "models": {"m": {"agnostic": [{"memory": 2, "cache": "q8_0", "method": "full"},
                                  {"memory": 8, "cache": "q8_0/q4_0", "method": "default"}],
                     "task": [{"memory": 32, "cache": "q4_0", "method": "question"}]}},
    "fallback": {"agnostic": [{"memory": 4, "cache": "q4_0", "method": "default"}], "task": []},
}


def test_pick_reads_the_nearest_measured_target():
    assert memory.pick("m", 2.5, False, TABLE).kv_type_k == "q8_0"
    c = memory.pick("m", 6, False, TABLE)  # nearer 8 than 2 on a log scale
    assert (c.kv_type_k, c.kv_type_v, c.method, c.measured_at) == ("q8_0", "q4_0", "default", 8.0)
    assert memory.pick("m", 4, False, TABLE).measured_at == 8.0  # a tie goes to the larger target
    assert memory.pick("other", 8, False, TABLE).model == "fallback"
    assert memory.pick("m", 20, True, TABLE).method == "question"
    no_task = {**TABLE, "models": {"f": {"agnostic": []}}, "fallback": TABLE["models"]["m"]}
    assert memory.pick("f", 8, True, no_task).model == "fallback"  # the model has no task entries
    with pytest.raises(ConfigError, match="no task entries"):
        memory.pick("other", 8, True, TABLE)
    for bad in (0.5, float("nan"), "8", True):
        with pytest.raises(ConfigError, match="memory must be"):
            memory.pick("m", bad, False, TABLE)


def test_build_table_picks_the_most_answers_per_target():
    rows = [
        {"model": "a", "tokens": 1024, "method": "default", "cache": c, "memory": m, "of_full": f, "accuracy": f / 2,
         "bytes_ratio": m, "questions": 27}
        for c, m, f in [("f16", 4, 0.5), ("q8_0", 4, 0.8), ("f16", 8, 0.4), ("q4_0", 8, 0.3)]
    ] + [{"model": "a", "tokens": 1024, "method": "full", "cache": "q8_0", "memory": 0.0, "of_full": 1.0,
          "accuracy": 0.5, "bytes_ratio": 1.9, "questions": 27}]
    # more answers, but a compaction fell back (the full cache answered, the target was missed)
    rows.append({"model": "a", "tokens": 1024, "method": "sentences", "cache": "q8_0", "memory": 8, "of_full": 0.9,
                 "accuracy": 0.45, "bytes_ratio": 5.0, "questions": 27, "fell_back": 1})
    t = memory.build_table(rows, "cmd")
    got = {(e["memory"], e["cache"]) for e in t["models"]["a"]["agnostic"]}
    assert got == {(4, "q8_0"), (8, "f16")}
    assert [e["cache"] for e in t["fallback"]["agnostic"]] == ["q8_0", "f16"]
    assert "task" not in t["models"]["a"]


def test_another_method_replaces_the_default_only_by_a_margin():
    def row(method, cache, correct):
        return {"model": "a", "tokens": 1024, "method": method, "cache": cache, "memory": 8, "of_full": correct / 20,
                "accuracy": correct / 27, "bytes_ratio": 8, "questions": 27}

    def pick(*rows):
        (e,) = memory.build_table(list(rows), "cmd")["models"]["a"]["agnostic"]
        return e["method"], e["cache"]

    assert pick(row("default", "f16", 10), row("sentences", "q8_0", 11)) == ("default", "f16")  # one answer: a tie
    assert pick(row("default", "f16", 10), row("sentences", "q8_0", 12)) == ("sentences", "q8_0")
    assert pick(row("default", "f16", 10), row("default", "q4_0", 11)) == ("default", "q4_0")  # the default's types


def test_the_fallback_pools_what_most_models_measured():
    def row(model, cache, method, f):
        return {"model": model, "tokens": 1024, "method": method, "cache": cache, "memory": 8, "of_full": f,
                "accuracy": f, "bytes_ratio": 8, "questions": 27}

    # b never ran f16 and c ran nothing else: q8_0 "default" is the one configuration of two models
    rows = [row("a", "f16", "default", 0.9), row("a", "q8_0", "default", 0.5), row("b", "q8_0", "default", 0.7),
            row("b", "q8_0", "sentences", 0.8), row("c", "f16", "sentences", 1.0)]
    (fb,) = memory.build_table(rows, "cmd")["fallback"]["agnostic"]
    assert (fb["cache"], fb["method"], fb["models"], fb["of_full"]) == ("q8_0", "default", 2, 0.6)


def test_the_shipped_table_covers_the_bundled_models():
    t = memory.load_table()
    assert t["source"] and t["fallback"]["agnostic"] and t["fallback"]["task"]  # any other GGUF gets a pick
    for name in ("smollm2-135m", "qwen2.5-0.5b", "gemma3-270m"):  # measured at every target from 4x to 32x
        targets = {e["memory"] for e in t["models"][name]["agnostic"]}
        assert {4.0, 8.0, 16.0, 32.0} <= targets, (name, targets)
        assert {e["memory"] for e in t["models"][name]["task"]} >= {8.0, 32.0}


@pytest.mark.parametrize("target", [4, 8, 16])
def test_compact_memory_reaches_the_byte_target(smollm2, target):
    with smollm2.session(n_ctx=4096, n_threads=1) as s:
        s.prefill(demo.document())
        rep = s.compact(memory=target)
        assert not rep.fell_back, rep.reason
        assert rep.memory["target"] == target
        assert (s.kv_type_k, s.kv_type_v) == (rep.memory["kv_type_k"], rep.memory["kv_type_v"])
        assert s.kv_bytes_f16() / s.kv_bytes() >= target
        assert rep.bytes_after == s.kv_bytes() and rep.bytes_ratio_f16 >= target


def _table_picking(monkeypatch, method: str, target: float = 8, cache: str = "q8_0/q4_0") -> None:
    """A memory table whose only (fallback, query-agnostic) entry is ``method`` in ``cache`` at ``target``."""
    table = {"source": "t", "models": {}, "fallback": {"agnostic": [
        {"memory": target, "cache": cache, "method": method}]}}
    monkeypatch.setattr(memory, "load_table", lambda path=None: table)


def test_compact_memory_runs_the_method_the_table_picks(smollm2, monkeypatch):
    _table_picking(monkeypatch, "sentences")
    with smollm2.session(n_ctx=4096, n_threads=1) as s:
        s.prefill(demo.document())
        rep = s.compact(memory=8)
        assert not rep.fell_back, rep.reason
        assert rep.memory["method"] == "sentences" and s.kv_bytes_f16() / s.kv_bytes() >= 8
        # whole sentences fill the budget: no forward pass for queries, every span cell kept exact
        assert rep.n_queries == 0 and rep.seconds["queries"] < 0.05
        kv = s.get_kv()
        assert all(np.all(kv.bias[il][np.isfinite(kv.bias[il])] == 0) for il in range(len(kv.bias)))
        # an option given by the caller wins over the table's
        s.prefill(" More text.")
        rep = s.compact(memory=8, spans=0.5)
        assert not rep.fell_back, rep.reason
        assert rep.n_queries > 0


def test_repeat_sentences_fills_the_budget_with_sentences_the_repeat_pass_ranks(smollm2, monkeypatch):
    _table_picking(monkeypatch, "repeat-sentences")
    from pyllamaam import queries as qsources

    passes, collect = [], qsources.collect
    monkeypatch.setattr(qsources, "collect", lambda *a, **k: passes.append(a[1]) or collect(*a, **k))
    with smollm2.session(n_ctx=4096, n_threads=1) as s:
        s.prefill(demo.document())
        rep = s.compact(memory=8)
        assert not rep.fell_back, rep.reason
        assert rep.memory["method"] == "repeat-sentences" and "instead_of" not in rep.memory
        assert s.kv_bytes_f16() / s.kv_bytes() >= 8 and (s.kv_type_k, s.kv_type_v) == ("q8_0", "q4_0")
        # one repeat pass ranked the sentences, and nothing was fitted: every kept cell is exact
        assert passes == ["repeat"] and rep.n_queries == 0
        kv = s.get_kv()
        assert all(np.all(kv.bias[il][np.isfinite(kv.bias[il])] == 0) for il in range(len(kv.bias)))


@pytest.mark.parametrize("record", [False, True], ids=["read-again", "recorded"])
def test_surprisal_sentences_ranks_by_the_cache_and_the_text_read_again(smollm2, monkeypatch, record):
    _table_picking(monkeypatch, "surprisal-sentences")
    from pyllamaam import queries as qsources

    passes, reads, collect = [], [], qsources.collect
    monkeypatch.setattr(qsources, "collect", lambda *a, **k: passes.append(a[1]) or collect(*a, **k))
    with smollm2.session(n_ctx=4096, n_threads=1) as s:
        assert memory.wants_surprisal(s, 8)
        if record:
            s.record_surprisal()
        s.prefill(demo.document())
        read_nll = s._read_nll
        monkeypatch.setattr(s, "_read_nll", lambda *a, **k: reads.append(a) or read_nll(*a, **k))
        rep = s.compact(memory=8)
        assert not rep.fell_back, rep.reason
        assert rep.memory["method"] == "surprisal-sentences" and "instead_of" not in rep.memory
        assert rep.memory["surprisal"] == ("recorded" if record else "read again") and s.surprisal_recorded == record
        assert f"surprisal-sentences (surprisal {rep.memory['surprisal']})" in str(rep)
        assert rep.n_queries == 0 and "/ no reference queries" in str(rep) and "queries repeat" not in str(rep)
        assert s.kv_bytes_f16() / s.kv_bytes() >= 8
        # the text was read once for its surprisal (not at all where the prefill recorded it), no
        # repeat pass ran and nothing was fitted
        assert len(reads) == (0 if record else 1) and passes == [] and rep.n_queries == 0
        kv = s.get_kv()
        assert all(np.all(kv.bias[il][np.isfinite(kv.bias[il])] == 0) for il in range(len(kv.bias)))
        # the demo's planted code is the least predictable sentence of its text: it is kept
        assert demo.ANSWER in "".join(s.kept_text(rep))
        assert s.generate(demo.prompt(), max_tokens=6).strip().startswith(demo.ANSWER)


def test_a_picked_method_that_fails_its_gates_falls_through_to_the_default(smollm2, monkeypatch):
    """When the table's method rolls back, compact(memory=) runs the default at the same cells
    instead of giving up the target, and the report says what fell through and why."""
    _table_picking(monkeypatch, "sentences")
    # a recall gate no compaction passes, for the picked method only
    monkeypatch.setitem(memory.METHODS, "sentences", {**memory.METHODS["sentences"], "max_kl": 0.0})
    with smollm2.session(n_ctx=4096, n_threads=1) as s:
        s.prefill(demo.document())
        rep = s.compact(memory=8)
        assert not rep.fell_back, rep.reason
        assert rep.memory["method"] == "default" and rep.n_queries > 0
        assert rep.memory["instead_of"]["method"] == "sentences"
        assert "probe KL" in rep.memory["instead_of"]["reason"]
        assert s.kv_bytes_f16() / s.kv_bytes() >= 8 and (s.kv_type_k, s.kv_type_v) == ("q8_0", "q4_0")


def _beta(s) -> np.ndarray:
    kv = s.get_kv()
    return np.concatenate([kv.bias[il][np.isfinite(kv.bias[il])] for il in kv.layers])


def _f16_exact(b: np.ndarray) -> bool:
    return bool(np.array_equal(b.astype(np.float16).astype(np.float32), b))


def test_a_compaction_read_through_flash_attention_fits_the_float16_beta_it_applies(smollm2, monkeypatch):
    """Flash attention adds beta through its float16 mask: a compaction of a flash-attention
    session, or one that memory= moves to a quantized V (flash attention), fits and writes beta as
    float16 holds it; without flash attention beta stays float32."""
    with smollm2.session(n_ctx=4096, n_threads=1) as s:
        s.prefill(demo.document())
        blob, n = s.snapshot(), s.n_cells
        rep = s.compact(ratio=4)
        assert not rep.fell_back, rep.reason
        b = _beta(s)
        assert np.any(b != 0) and not _f16_exact(b)
        s.write_state(blob, n)
        _table_picking(monkeypatch, "default")  # a method that fits beta
        rep = s.compact(memory=8)
        assert not rep.fell_back, rep.reason
        assert s.flash_attn and rep.memory["method"] == "default"
        b = _beta(s)
        assert np.any(b != 0) and _f16_exact(b)
    with smollm2.session(n_ctx=4096, n_threads=1, flash_attn=True) as s:
        s.prefill(demo.document())
        rep = s.compact(ratio=4)
        assert not rep.fell_back, rep.reason
        b = _beta(s)
        assert np.any(b != 0) and _f16_exact(b)


def test_an_impossible_budget_or_bad_target_changes_nothing(smollm2):
    with smollm2.session(n_ctx=1024, n_threads=1) as s:
        s.prefill(TEXT)
        blob = s.snapshot()
        with pytest.raises(ConfigError, match="leaves room for"):
            s.compact(memory=200)
        with pytest.raises(ConfigError, match="memory must be"):
            s.compact(memory=0)
        with pytest.raises(ConfigError, match="one of ratio="):
            s.compact(ratio=4, memory=8)
        assert s.snapshot() == blob and s.kv_type_k == "f16"


def test_q4_0_session_compacted_by_memory_saved_and_restored_answers(smollm2, tmp_path):
    with smollm2.session(n_ctx=4096, n_threads=1, flash_attn=True, kv_type="q4_0") as s:
        s.prefill(demo.document())
        rep = s.compact(memory=8)
        assert not rep.fell_back, rep.reason
        assert s.kv_bytes_f16() / s.kv_bytes() >= 8
        kept = "".join(s.kept_text(rep))
        path = s.save(tmp_path / "q4.pllam")
    with smollm2.load_session(path, n_threads=1) as r:
        answer = r.generate(demo.prompt(), max_tokens=8)
    # answered, or (where the measured table says this budget cannot) the sentence kept verbatim
    assert "67767" in answer or "67767" in kept, (answer, kept[:200])


def test_cli_compact_by_memory_then_ask(tmp_path):
    doc = tmp_path / "notes.txt"
    doc.write_text(demo.document())
    out = tmp_path / "m.pllam"
    run = [sys.executable, "-m", "pyllamaam"]
    res = subprocess.run([*run, "compact", str(doc), "--memory", "8", "-o", str(out), "--json"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["memory"]["target"] == 8 and report["bytes_ratio_f16"] >= 8 and not report["fell_back"]
    assert report["memory"].get("surprisal") in (None, "recorded")  # the CLI records what the pick ranks by
    res = subprocess.run([*run, "ask", str(out), "What is the locker code for the archivist?"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "Q: " in res.stdout


def test_auto_compaction_by_memory_runs_past_n_ctx(smollm2):
    import pydoc_data.topics as T

    text = "\n\n".join(T.topics[k] for k in sorted(T.topics))[:4000]
    with smollm2.session(n_ctx=512, n_threads=1) as s:
        s.auto_compact(threshold=0.75, memory=8)
        s.prefill(text)
        reps = s.auto_reports
        assert len(reps) >= 2 and not any(r.fell_back for r in reps), [r.reason for r in reps]
        assert s.n_cells <= 512 < s.n_past
        first = reps[0]
        # each compaction leaves the cells it found in 8x fewer bytes than an f16 cache of them
        assert first.bytes_after * 8 <= first.cells_before * s.kv_bytes_f16(n_cells=1)
        assert (s.kv_type_k, s.kv_type_v) == (first.memory["kv_type_k"], first.memory["kv_type_v"])


def test_auto_compaction_past_n_ctx_ranks_by_the_surprisal_recorded_while_reading(smollm2, monkeypatch):
    """The text outgrows the context, so it cannot be read again: the surprisal recorded while
    reading lets every automatic compaction run the table's pick instead of the default."""
    import pydoc_data.topics as T

    _table_picking(monkeypatch, "surprisal-sentences")
    text = "\n\n".join(T.topics[k] for k in sorted(T.topics))[:4000]
    with smollm2.session(n_ctx=512, n_threads=1) as s:
        s.auto_compact(threshold=0.75, memory=8)  # the pick ranks by surprisal: the session records it
        reads, token_nll = [], s.token_nll
        monkeypatch.setattr(s, "token_nll", lambda n=None: reads.append(n) or token_nll(n))
        s.prefill(text)
        reps = s.auto_reports
        assert len(reps) >= 2 and s.n_cells <= 512 < s.n_past
        assert not any(r.fell_back for r in reps), [r.reason for r in reps]
        assert [r.memory["method"] for r in reps] == ["surprisal-sentences"] * len(reps)
        # each ranked by surprisal (automatic compaction's own span score does not override the pick's)
        assert len(reads) == len(reps) and max(reads) > s.n_ctx


def test_auto_compaction_refuses_a_target_the_types_alone_reach(smollm2, monkeypatch):
    _table_picking(monkeypatch, "full", target=2, cache="q4_0")
    with smollm2.session(n_ctx=256, n_threads=1) as s:
        with pytest.raises(ConfigError, match="reached by the q4_0/q4_0 cache types alone"):
            s.auto_compact(memory=2)
        assert s._auto is None


def test_qa_summary_groups_memory_cells_by_target_and_draws_the_frontier():
    from pyllamaam.evaluation import qa_memory, qa_run

    def cell(seed, method, cache, memory_, ratio, correct, size):
        size_key = f"mem{memory_:g}" if memory_ else f"{ratio:g}"
        key = f"m|1024|{seed}|{method}|{size_key}" + ("" if cache == "f16" else f"|{cache}")
        c = {"key": key, "model": "m", "n_tokens": 1000, "seed": seed, "method": method, "ratio": ratio,
             "prefill_seconds": 1.0, "questions": [{"kind": "code", "correct": x} for x in correct],
             "bytes_ratio": size, "delta_nll": 0.0, "kl": 0.0, "compaction_seconds": 0.5}
        if cache != "f16":
            c["cache"] = cache
        if memory_:
            c["memory"] = memory_
        return c

    cells = [cell(s, "full", "f16", 0, 0.0, [True, True], 1.0) for s in (1, 2)]
    cells += [cell(s, "full", "q4_0", 0, 0.0, [True, False], 3.6) for s in (1, 2)]
    cells += [cell(1, "default", "q8_0", 4, 2.18, [True, True], 4.0),
              cell(2, "default", "q8_0", 4, 2.21, [True, False], 4.0)]
    cells += [cell(1, "default", "f16", 4, 4.1, [False, False], 4.0), {"key": "x", "model": "m", "n_tokens": 1000,
              "seed": 1, "method": "default", "ratio": 0.0, "memory": 32, "questions": [], "skipped": "too small"}]
    # an eviction that fell back answered from the full cache at 2.5x: it fills no 4x column
    cells += [{**cell(s, "snapkv", "q8_0", 4, 1.0, [True, True], 2.5), "fell_back": True} for s in (1, 2)]
    rows = qa_run.summarize(cells)
    q8 = [r for r in rows if r["cache"] == "q8_0" and r["method"] == "default"]
    assert len(q8) == 1 and q8[0]["documents"] == 2 and q8[0]["accuracy"] == 0.75 and q8[0]["of_full"] == 0.75
    assert not any(r["memory"] == 32 for r in rows)  # skipped: the budget cannot hold the sinks and window
    md = qa_memory.table(rows)
    assert "| 4x |" in md and "0.75 (0.75) [q8_0, 4.0x]" in md and "0.50 (0.50) [q4_0, 3.6x]" in md
    assert "| best eviction | – |" in md and "[q8_0, 2.5x]" not in md
    assert qa_memory.frontier([(1.0, 1.0), (3.6, 0.5), (4.0, 0.75), (4.0, 0.0)]) == [(1.0, 1.0), (4.0, 0.75)]
