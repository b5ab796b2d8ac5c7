"""Every KV cache type llama.cpp accepts, for K and V separately, and the bytes they take."""

from __future__ import annotations

import typing

import numpy as np
import pytest
from conftest import TEXT
from conftest import ids as _ids

from pyllamaam import ConfigError, StateError, kvtypes, pipeline, statefile
from pyllamaam.pipeline import mean_kl

pytestmark = pytest.mark.native

TYPES = list(kvtypes.BY_NAME)  # f32, f16, bf16, q8_0, q5_1, q5_0, q4_1, q4_0, iq4_nl
QUANTIZED = [n for n in TYPES if kvtypes.TYPES[kvtypes.BY_NAME[n]].quantized]
# bytes per value, from ggml's block sizes (32 values: q8_0 34 bytes, q4_0 18, ...)
PER_VALUE = {"f32": 4, "f16": 2, "bf16": 2, "q8_0": 34 / 32, "q5_1": 24 / 32, "q5_0": 22 / 32,
             "q4_1": 20 / 32, "q4_0": 18 / 32, "iq4_nl": 18 / 32}


def _expected_bytes(s, k: str, v: str, n: int) -> tuple[int, int, int]:
    ks = vs = bs = 0
    for il in s.compact_layers():
        li = s.layers[il]
        ks += round(li["n_head_kv"] * li["head_dim_k"] * PER_VALUE[k])
        vs += round(li["n_head_kv"] * li["head_dim_v"] * PER_VALUE[v])
        bs += 4 * li["n_head_kv"]
    return n * ks, n * vs, n * bs


# every type as K and V with flash attention; without it (V transposed), the float types as K and V
# and every quantized K (V then stays f16)
CASES = [(t, t, True) for t in TYPES] + [(t, t, False) for t in ("f32", "bf16")]
CASES += [(t, "f16", False) for t in QUANTIZED]
IDS = [f"{k}-{v}-{'flash' if f else 'regular'}" for k, v, f in CASES]


@pytest.mark.parametrize(("k", "v", "flash"), CASES, ids=IDS)
def test_type_round_trips_and_compacts(tiny64, k, v, flash):
    with tiny64.session(n_ctx=512, flash_attn=flash, kv_type_k=k, kv_type_v=v) as s:
        s.capture_context_queries(512)
        s.prefill(_ids(200))
        probe = _ids(4, 1)
        want, blob = s.eval_logits(probe), s.snapshot()
        kv = s.get_kv()
        assert set(kv.k_types.values()) == {kvtypes.BY_NAME[k]} and set(kv.v_types.values()) == {kvtypes.BY_NAME[v]}
        s.set_kv(kv)  # writing back what was read: the same bytes, the same logits
        assert s.snapshot() == blob
        np.testing.assert_array_equal(s.eval_logits(probe), want)
        again = s.get_kv()
        for il in kv.layers:
            np.testing.assert_array_equal(again.keys[il], kv.keys[il])
            np.testing.assert_array_equal(again.values[il], kv.values[il])

        b = s.kv_bytes(detail=True)
        assert (b.k, b.v, b.bias) == _expected_bytes(s, k, v, s.n_cells)
        assert s.kv_bytes() == b.total and s.kv_bytes_f16() == _expected_bytes(s, "f16", "f16", s.n_past)[0] * 2

        rep = s.compact(ratio=3, queries="context")
        assert not rep.fell_back, rep.reason
        assert rep.bytes_before == b.total and rep.bytes_after == s.kv_bytes() < rep.bytes_before
        assert rep.bytes_ratio_f16 == pytest.approx(rep.bytes_f16 / rep.bytes_after)
        assert s.kv_bytes(detail=True).k == _expected_bytes(s, k, v, s.n_cells)[0]
        assert np.isfinite(s.eval_logits(probe)).all()


def test_mixed_k_and_v_types(tiny64):
    with tiny64.session(n_ctx=512, flash_attn=True, kv_type_k="q8_0", kv_type_v="q4_0") as s:
        assert (s.kv_type_k, s.kv_type_v, s.kv_type) == ("q8_0", "q4_0", None)
        s.capture_context_queries(512)
        s.prefill(_ids(200))
        kv = s.get_kv()
        assert set(kv.k_types.values()) == {8} and set(kv.v_types.values()) == {2}
        b = s.kv_bytes(detail=True)
        assert (b.k, b.v, b.bias) == _expected_bytes(s, "q8_0", "q4_0", s.n_cells)
        rep = s.compact(ratio=3, queries="context")
        assert not rep.fell_back, rep.reason
        assert rep.bytes_after < rep.bytes_before
        assert "fewer bytes than the full f16 cache" in str(rep)
        assert rep.to_dict()["bytes_after"] == rep.bytes_after


@pytest.mark.parametrize(
    ("opts", "match"),
    [
        ({"kv_type": "q3_k"}, "q3_k.*valid: f32, f16, bf16, q8_0, q5_1, q5_0, q4_1, q4_0, iq4_nl"),
        ({"kv_type_v": "f8"}, "kv_type_v='f8' is not a KV cache type"),
        ({"kv_type": "f16", "kv_type_k": "q8_0", "flash_attn": True}, "sets both K and V"),
        ({"kv_type": "q4_0"}, "quantized V cache .*needs flash attention"),
        ({"kv_type_v": "iq4_nl"}, "quantized V cache .*needs flash attention"),
    ],
)
def test_bad_types_are_refused_and_create_nothing(tiny64, opts, match):
    before = len(tiny64._sessions)
    with pytest.raises(ConfigError, match=match):
        tiny64.session(n_ctx=64, **opts)
    assert len(tiny64._sessions) == before


def test_quantized_k_without_flash_and_blocks_that_do_not_divide_a_head(tiny64, tiny_models):
    with tiny64.session(n_ctx=64, kv_type_k="q4_0") as s:  # llama.cpp allows it: V stays f16
        assert (s.kv_type_k, s.kv_type_v, s.flash_attn) == ("q4_0", "f16", False)
    # heads of 16 values: llama.cpp refuses 32-value blocks with flash attention
    with pytest.raises(ConfigError, match="blocks of 32 values.*head size 16"):
        tiny_models["llama"].session(n_ctx=64, flash_attn=True, kv_type="q4_0")


@pytest.mark.parametrize("name", QUANTIZED)
def test_encoders_write_what_llama_cpp_writes(tiny64, name, monkeypatch):
    """Layer 0's K and V do not depend on the cache type: encoded by kvtypes from an f32 cache they
    give exactly the values llama.cpp's own quantizer stored (rotation off, so both see one basis;
    with it on, almost none of iq4_nl's keys match)."""
    monkeypatch.setenv("LLAMA_ATTN_ROT_DISABLE", "1")
    ids = _ids(96)
    kv = {}
    for t in ("f32", name):
        with tiny64.session(n_ctx=128, flash_attn=True, kv_type=t) as s:
            s.prefill(ids)
            kv[t] = s.get_kv()
    tid = kvtypes.BY_NAME[name]
    for arrays in ("keys", "values"):
        ref = getattr(kv["f32"], arrays)[0]
        ours = kvtypes.decode(kvtypes.encode(ref.reshape(ref.shape[0], -1), tid), tid).reshape(ref.shape)
        np.testing.assert_array_equal(ours, getattr(kv[name], arrays)[0], err_msg=arrays)


def test_iq4_nl_encoder_is_idempotent_and_close():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((500, 64)) * rng.uniform(0.01, 10, (500, 1))).astype(np.float32)
    raw = kvtypes.encode(x, kvtypes.IQ4_NL)
    assert len(raw) == 500 * 2 * 18
    y = kvtypes.decode(raw, kvtypes.IQ4_NL).reshape(x.shape)
    assert np.linalg.norm(y - x) / np.linalg.norm(x) < 0.1
    assert kvtypes.encode(y, kvtypes.IQ4_NL) == raw
    assert not np.any(kvtypes.decode(kvtypes.encode(np.zeros((2, 32)), kvtypes.IQ4_NL), kvtypes.IQ4_NL))


def test_saved_session_records_types_and_refuses_other_types(tiny64, tmp_path):
    probe = _ids(4, 1)
    with tiny64.session(n_ctx=256, flash_attn=True, kv_type_k="q8_0", kv_type_v="q4_0") as s:
        s.prefill(_ids(60))
        want = s.eval_logits(probe)
        path = s.save(tmp_path / "q.pllam")
    h = statefile.read(path).header
    assert (h["kv_type_k"], h["kv_type_v"]) == ("q8_0", "q4_0")
    with tiny64.load_session(path) as t:  # the types come from the file
        assert (t.kv_type_k, t.kv_type_v) == ("q8_0", "q4_0")
        np.testing.assert_array_equal(t.eval_logits(probe), want)
    with pytest.raises(StateError, match="saved with K/V cache types q8_0/q4_0, this session has f16/f16"):
        tiny64.load_session(path, kv_type="f16")
    with tiny64.session(n_ctx=256, flash_attn=True, kv_type="q8_0") as other:
        other.prefill("untouched")
        n_past = other.n_past
        with pytest.raises(StateError, match="q8_0/q4_0, this session has q8_0/q8_0"):
            other.restore(path)
        assert other.n_past == n_past


def test_files_with_one_kv_type_still_load(tiny64, tmp_path):
    with tiny64.session(n_ctx=256, flash_attn=True, kv_type="q8_0") as s:
        s.prefill(_ids(40))
        path = s.save(tmp_path / "new.pllam")
    saved = statefile.read(path)
    h = {k: v for k, v in saved.header.items() if k not in ("kv_type_k", "kv_type_v")}
    old = statefile.write(tmp_path / "old.pllam", {**h, "kv_type": "q8_0"}, saved.blob, saved.logits)
    with tiny64.load_session(old) as t:
        assert (t.kv_type_k, t.kv_type_v) == ("q8_0", "q8_0")


def test_verify_reads_the_cache_as_written(tiny64, monkeypatch):
    # regression: verify measured the float32 values the fit produced, not the q4_0 cache written
    seen = {}
    real = pipeline.verify.check

    def spy(session, kv, split, fitted, *rest, **kw):
        seen.update(fitted)
        return real(session, kv, split, fitted, *rest, **kw)

    monkeypatch.setattr(pipeline.verify, "check", spy)
    with tiny64.session(n_ctx=512, flash_attn=True, kv_type="q4_0") as s:
        s.capture_context_queries(512)
        s.prefill(_ids(200))
        rep = s.compact(ratio=3, queries="context", spans=0.0)
        assert not rep.fell_back, rep.reason
        got = s.get_kv()
        order = np.argsort(got.positions)
        for il, res in seen.items():
            t = res.indices.shape[1]
            stored = got.values[il][order][4 : 4 + t].transpose(1, 0, 2)  # after the 4 sinks
            np.testing.assert_array_equal(res.values, stored)


def test_q4_0_smollm2_compacts_in_the_rotated_basis(smollm2):
    """Quantized caches hold K and V after a Hadamard rotation; the captured queries are in the same
    basis, so the fit works as well as on f16 (a wrong basis would fail the attention gate)."""
    toks = smollm2.tokenize(TEXT * 4, add_bos=True)[:160]
    probe = smollm2.tokenize(" The next")
    out = {}
    for t in ("f16", "q4_0"):
        with smollm2.session(n_ctx=256, flash_attn=True, kv_type=t, n_threads=1) as s:  # 1: 7x faster on a busy box
            s.capture_context_queries(256)
            s.prefill(toks)
            before = s.eval_logits(probe)
            rep = s.compact(ratio=4, queries="context", keep_last=16, spans=0.0, probe_tokens=32, tail_probe=16)
            assert not rep.fell_back, rep.reason
            out[t] = (rep, mean_kl(before, s.eval_logits(probe)), s.kv_bytes(detail=True))
    rep, kl, b = out["q4_0"]
    assert rep.attention_error < 2 * out["f16"][0].attention_error + 0.05
    assert kl < 1.0
    # the bias storage next to 4-bit K and V: 4 bytes per KV head and cell against 2 * 64 * 18/32
    assert b.bias / b.total == pytest.approx(4 / (4 + 2 * 64 * 18 / 32))
    assert rep.bytes_ratio_f16 == pytest.approx(len(toks) * 2 * 64 * 2 / (rep.cells_after * (2 * 64 * 18 / 32 + 4)))


def test_cli_cache_types_compact_then_ask(tiny64, tmp_path):
    import json
    import subprocess
    import sys

    from pyllamaam.cli import build_parser

    for cmd in (["demo"], ["ask", "s.pllam", "q?"], ["compact", "d.txt", "-o", "s.pllam"]):
        a = build_parser().parse_args([*cmd, "-ctk", "q8_0", "--cache-type-v", "iq4_nl"])
        assert (a.cache_type_k, a.cache_type_v) == ("q8_0", "iq4_nl")
    doc, out = tmp_path / "doc.txt", tmp_path / "doc.pllam"
    doc.write_text("The lighthouse keeper wrote in his log every evening. " * 20)
    run = [sys.executable, "-m", "pyllamaam"]
    model = ["--model", str(tiny64.path)]
    res = subprocess.run(  # a quantized V turns flash attention on, as llama.cpp's -fa auto does
        [*run, "compact", str(doc), "--ratio", "3", "-o", str(out), *model, "--queries", "context", "--json",
         "-ctk", "q8_0", "-ctv", "q4_0"],
        capture_output=True, text=True,
    )
    assert res.returncode == 0, res.stderr
    rep = json.loads(res.stdout)
    assert not rep["fell_back"] and rep["bytes_after"] < rep["bytes_before"] and rep["bytes_ratio_f16"] > 3
    h = statefile.read(out).header
    assert (h["kv_type_k"], h["kv_type_v"], h["flash_attn"]) == ("q8_0", "q4_0", True)
    res = subprocess.run([*run, "ask", str(out), "first?", *model, "--max-tokens", "2"], capture_output=True, text=True)
    assert res.returncode == 0 and "Q: first?" in res.stdout, res.stderr
    res = subprocess.run([*run, "ask", str(out), "first?", *model, "-ctk", "f16"], capture_output=True, text=True)
    assert res.returncode == 2 and "saved with K/V cache types q8_0/q4_0" in res.stderr
    bad = [*run, "compact", str(doc), "-o", str(out), *model, "-ctk", "q3_k"]
    res = subprocess.run(bad, capture_output=True, text=True)
    assert res.returncode == 2 and "invalid choice" in res.stderr


def test_server_settings_and_sessions(tiny64, tmp_path, monkeypatch):
    from fastapi.testclient import TestClient
    from pydantic import ValidationError

    from server.app import create_app
    from server.settings import KVType, Settings, parse_args

    assert typing.get_args(KVType) == tuple(kvtypes.BY_NAME)
    assert Settings().session_kv_types() == {"kv_type_k": "f16", "kv_type_v": "f16"}
    assert Settings(kv_type="q8_0", cache_type_v="f16").session_kv_types() == {"kv_type_k": "q8_0", "kv_type_v": "f16"}
    monkeypatch.setenv("PYLLAMAAM_CACHE_TYPE_K", "iq4_nl")
    s = parse_args(["--cache-type-v", "q4_0", "--flash-attn"])
    assert s.session_kv_types() == {"kv_type_k": "iq4_nl", "kv_type_v": "q4_0"}
    with pytest.raises(ValidationError, match="needs flash attention"):
        parse_args(["--cache-type-v", "q4_0"])
    with pytest.raises(ValidationError, match="cache_type_k"):
        Settings(cache_type_k="q3_k")

    class Recording:  # the real tiny model, noting the options of each session the server makes
        def __init__(self, model):
            self.model, self.opts = model, []

        def __getattr__(self, name):
            return getattr(self.model, name)

        def session(self, **kw):
            self.opts.append(kw)
            return self.model.session(**kw)

    model = Recording(tiny64)
    settings = Settings(n_ctx=256, flash_attn=True, cache_type_k="q8_0", cache_type_v="q4_0", compact_threshold=0.0,
                        state_dir=tmp_path)
    with TestClient(create_app(settings, load_model=lambda st: model)) as c:
        r = c.post("/v1/completions", json={"prompt": "The keeper", "max_tokens": 2, "session_id": "a"})
        assert r.status_code == 200, r.text
    assert len(model.opts) >= 2 and all((o["kv_type_k"], o["kv_type_v"]) == ("q8_0", "q4_0") for o in model.opts)
