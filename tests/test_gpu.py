"""With every layer on a GPU: the bias identities in both attention paths, compacted states moved
between CPU and GPU sessions, and compaction that verifies.

Run by ``make test-gpu`` (a CUDA build of the patched library) or, on the offline CUDA machine,
``bash .device/gpu.sh python3 -m pytest -q -m gpu``; ``make test`` leaves them out. Models: the
tiny random ones, and the stand-in named by ``PYLLAMAAM_DEVICE_MODEL`` (SmolLM2-135M cut to 10
blocks, ../shared/device) when it is set. Nothing comes from the network.

Without a CUDA device they skip. ``PYLLAMAAM_GPU_TESTS_ON_CPU=1`` runs them with the "GPU" side on
the CPU (``n_gpu_layers=0``): the same checks, CPU against CPU, so that their logic is tested on a
machine without a GPU.
"""

from __future__ import annotations

import math
import os
from pydoc_data.topics import topics

import numpy as np
import pytest
from conftest import CONT, kl
from test_native_bias import (
    PATHS,
    SINK,
    _logits,
    _session,
    _with_duplicate,
    assert_same,
    flash_vs_regular_token_by_token,
)

import pyllamaam
from pyllamaam import _native, devices, tiny
from pyllamaam.compact import arrays, attend, attention_stats

pytestmark = [pytest.mark.gpu, pytest.mark.native]

ON_CPU = os.environ.get("PYLLAMAAM_GPU_TESTS_ON_CPU", "") not in ("", "0")
DEVICE_MODEL = os.environ.get("PYLLAMAAM_DEVICE_MODEL")

TINY = ["llama", "gemma3", "hybrid"]
# head size 64 (SmolLM2's): CUDA's flash attention takes no head size of 16, the tiny default, and
# would leave the op on the CPU
GPU_SHAPES = {"llama": {"head_dim": 64}, "gemma3": {"head_dim": 64}, "hybrid": {"n_embd": 256}}
# the stand-in model: quantized weights (Q4_1), so identities hold up to 8-bit activation noise
QUANTIZED = {"device"}
# random weights: the quality gates mean nothing, the write-back and its checks still run
LENIENT = {"max_kl": float("inf"), "max_attention_error": float("inf")}
# a state moved between CPU and GPU gives the same next-token distributions within this (nats)
MAX_MOVE_KL = 1e-3
# the F32 regular path on CUDA: the K*Q product rounds its inputs to 11 significant bits (seen on
# an H200: relative logit differences of 3-4e-4 between duplicate and log 2 bias, 2^-11 = 4.9e-4)
GPU_REL_TOL = 1e-4 if ON_CPU else 4 * 2.0**-11


@pytest.fixture(scope="module")
def n_gpu_layers():
    if not ON_CPU and not devices.has_cuda():
        names = ", ".join(f"{d['name']} ({d['type']})" for d in _native.devices())
        pytest.skip(f"no CUDA device (this build has: {names}); PYLLAMAAM_GPU_TESTS_ON_CPU=1 runs these on the CPU")
    n = 0 if ON_CPU else 99
    # first in a fresh interpreter: a native crash on load (the CUDA vocabulary crash of
    # ../shared/device/README.md) fails these tests with its exit status instead of ending pytest
    probe = devices.bias_offload_isolated(n)
    if "reason" in probe:
        pytest.fail(probe["reason"])
    return n


class _Models:
    """Models by (name, n_gpu_layers), loaded on first use and closed at the end of the module."""

    def __init__(self, tiny_dir) -> None:
        self.tiny_dir = tiny_dir
        self.loaded: dict[tuple[str, int], pyllamaam.Model] = {}

    def get(self, name: str, n_gpu_layers: int) -> pyllamaam.Model:
        if name == "device" and not DEVICE_MODEL:
            pytest.skip("PYLLAMAAM_DEVICE_MODEL is not set (the stand-in model, ../shared/device/README.md)")
        if (name, n_gpu_layers) not in self.loaded:
            path = DEVICE_MODEL if name == "device" else tiny.tiny_model_path(name, self.tiny_dir, **GPU_SHAPES[name])
            self.loaded[name, n_gpu_layers] = pyllamaam.load_model(str(path), n_gpu_layers=n_gpu_layers)
        return self.loaded[name, n_gpu_layers]

    def close(self) -> None:
        for m in self.loaded.values():
            m.close()


@pytest.fixture(scope="module")
def registry(tiny_dir):
    r = _Models(tiny_dir)
    yield r
    r.close()


@pytest.fixture
def gpu(registry, n_gpu_layers):
    """name -> the model with every layer on the GPU."""
    return lambda name: registry.get(name, n_gpu_layers)


@pytest.fixture
def cpu(registry, n_gpu_layers):
    """name -> the model on the CPU."""
    return lambda name: registry.get(name, 0)


def _document(name: str, model: pyllamaam.Model) -> list[int]:
    if name == "device":  # real text, offline and deterministic
        return model.tokenize(topics["attribute-access"], add_bos=True)[:400]
    return [tiny.BOS_ID] + [int(t) for t in np.random.default_rng(0).integers(10, 500, 200)]


def _gates(name: str) -> dict:
    return {} if name == "device" else LENIENT


# --- where the bias runs ---
def test_the_bias_path_is_offloaded(n_gpu_layers):
    r = devices.bias_offload(n_gpu_layers)
    assert r["biased_layers"], r
    assert r["offloaded"] is (not ON_CPU), r  # on a CPU: no layer on a GPU


# --- the bias identities (tests/test_native_bias.py) with every layer on the GPU ---
@pytest.mark.parametrize("path", PATHS, ids=["regular-f32", "regular-f16", "flash-f16"])
@pytest.mark.parametrize("name", [*TINY, "device"])
def test_duplicate_cell_equals_bias_log2(gpu, name, path):
    if name in QUANTIZED and path == (False, "f32") and not ON_CPU:
        # seen on an H200: KL 0.017 between duplicate and bias, against 0.025 for leaving the bias
        # out; the identity cannot be told from this path's noise there (the tiny models check it)
        pytest.skip("the F32 regular path of a Q4_1 model on CUDA: noise of the size of the effect")
    m = gpu(name)
    cont = m.tokenize(CONT)
    with _session(m, path) as s:
        doubled, biased, plain = _with_duplicate(s.get_kv(), dup=SINK)
        want, got, without = (_logits(s, x, cont) for x in (doubled, biased, plain))
    assert_same(got, want, without, path, exact=name not in QUANTIZED, rel_tol=GPU_REL_TOL)


@pytest.mark.parametrize("path", PATHS, ids=["regular-f32", "regular-f16", "flash-f16"])
@pytest.mark.parametrize("name", [*TINY, "device"])
def test_minus_inf_bias_equals_deleting_the_cell(gpu, name, path):
    m = gpu(name)
    cont = m.tokenize(CONT)
    with _session(m, path) as s:
        st = s.get_kv()
        masked = st.subset(np.arange(st.n_cells))
        for il in masked.layers:
            masked.bias[il][SINK, :] = -math.inf
        deleted = st.subset(np.array([i for i in range(st.n_cells) if i != SINK]))
        want, got, full = (_logits(s, x, cont) for x in (deleted, masked, st))
    assert_same(got, want, full, path, exact=name not in QUANTIZED, rel_tol=GPU_REL_TOL)


def test_one_token_decode_reads_the_bias_in_both_paths(gpu):
    """Decoding token by token (the single-token layout of the flash path, CUDA's decode kernels)
    over 700 biased cells: flash gives the regular path's next-token distributions."""
    dev, effect = flash_vs_regular_token_by_token(gpu("llama"))
    assert dev < 1e-3 and effect > 100 * dev, (dev, effect)


# --- states move between CPU and GPU ---
@pytest.mark.parametrize("flash", [False, True], ids=["regular", "flash"])
@pytest.mark.parametrize("name", ["llama", "device"])
@pytest.mark.parametrize("direction", ["cpu-to-gpu", "gpu-to-cpu"])
def test_a_compacted_state_moves_between_cpu_and_gpu(cpu, gpu, name, flash, direction, tmp_path):
    src, dst = (cpu(name), gpu(name)) if direction == "cpu-to-gpu" else (gpu(name), cpu(name))
    cont = src.tokenize(CONT)
    with src.session(n_ctx=1024, flash_attn=flash) as s:
        s.prefill(_document(name, src))
        rep = s.compact(ratio=4, **_gates(name))
        assert not rep.fell_back, rep.reason
        want = s.eval_logits(cont)
        kv = s.get_kv()
        saved = s.save(tmp_path / "moved.pllam")
    with dst.load_session(saved) as t:
        got = t.eval_logits(cont)
        moved = t.get_kv()
    for il in kv.layers:  # the cache moves bit for bit, bias included
        np.testing.assert_array_equal(moved.keys[il], kv.keys[il])
        np.testing.assert_array_equal(moved.values[il], kv.values[il])
        np.testing.assert_array_equal(moved.bias[il], kv.bias[il])
    bound = MAX_MOVE_KL
    if name in QUANTIZED:
        # Q4_1 weights: the two backends quantize activations and sum in other orders, so the
        # same uncompacted cache already predicts differently on each (0.008-0.019 nats seen
        # for compacted states on an H200). The move must add nothing beyond that floor.
        bound = max(bound, 2 * _backend_floor(src, dst, _document(name, src), cont, flash))
    assert kl(want, got) <= bound


def _backend_floor(a: pyllamaam.Model, b: pyllamaam.Model, doc: list[int], cont: list[int], flash: bool) -> float:
    """KL between two models' next-token distributions after the same uncompacted prefill."""
    logits = []
    for m in (a, b):
        with m.session(n_ctx=1024, flash_attn=flash) as s:
            s.prefill(doc)
            logits.append(s.eval_logits(cont))
    return kl(*logits)


@pytest.mark.parametrize("direction", ["cpu-to-gpu", "gpu-to-cpu"])
def test_set_kv_moves_a_compacted_state_between_cpu_and_gpu(cpu, gpu, direction):
    src, dst = (cpu("llama"), gpu("llama")) if direction == "cpu-to-gpu" else (gpu("llama"), cpu("llama"))
    cont = src.tokenize(CONT)
    doc = _document("llama", src)
    with src.session(n_ctx=1024) as s, dst.session(n_ctx=1024) as t:
        s.prefill(doc)
        rep = s.compact(ratio=4, **LENIENT)
        assert not rep.fell_back, rep.reason
        t.prefill(doc)  # the same tokens and positions, then the compacted cells in place of its own
        t.set_kv(s.get_kv())
        assert kl(s.eval_logits(cont), t.eval_logits(cont)) <= MAX_MOVE_KL


# --- compaction with every layer on the GPU ---
@pytest.mark.parametrize("flash", [False, True], ids=["regular", "flash"])
@pytest.mark.parametrize("name", [*TINY, "device"])
def test_compaction_on_the_gpu_verifies_without_fallback(gpu, name, flash):
    m = gpu(name)
    with m.session(n_ctx=1024, flash_attn=flash) as s:
        s.prefill(_document(name, m))
        n_past = s.n_past
        rep = s.compact(ratio=4, **_gates(name))
        assert not rep.fell_back, rep.reason
        assert rep.cells_after < rep.cells_before and s.n_past == n_past
        assert np.isfinite(s.eval_logits(m.tokenize(CONT))).all()
        s.generate(max_tokens=4)
        assert s.n_past == n_past + 4


# --- the attention passes on the GPU through CuPy (option arrays) ---
def _cupy():
    cupy, why = arrays.cupy_status()
    if cupy is None:
        pytest.skip(why)
    return cupy


def test_the_attention_passes_on_cupy_match_numpy():
    _cupy()
    rng = np.random.default_rng(3)
    H, T, n, d = 3, 700, 300, 64
    K, V = rng.normal(size=(2, H, T, d)).astype(np.float32)
    Q = rng.normal(size=(H, n, d)).astype(np.float32)
    bias = rng.normal(scale=0.5, size=(H, T))
    bias[:, ::7] = -np.inf
    got = {}
    for backend in ("numpy", "cupy"):
        with arrays.use(backend):
            assert arrays.name() == backend
            st = attention_stats(K, V, Q, 0.125, bias, max_block=1 << 16)  # several blocks
            got[backend] = (*(getattr(st, f) for f in ("shift", "mass", "output", "score_rms", "score_mean",
                                                        "score_max")), *attend(K, V, Q, 0.125, bias, np.float32))
    for a, b in zip(got["numpy"], got["cupy"], strict=True):
        assert isinstance(b, np.ndarray)  # results come back to the host
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", ["llama", "device"])
def test_compaction_on_the_gpu_runs_its_attention_passes_there(gpu, name):
    m = gpu(name)
    with m.session(n_ctx=1024) as s:
        s.prefill(_document(name, m))
        if ON_CPU:  # no GPU: auto stays on numpy
            assert s.compact(ratio=4, **_gates(name)).arrays == "numpy"
            return
        _cupy()
        full, reps, probes = (s.snapshot(), s.n_cells), {}, {}
        for backend in ("auto", "numpy"):
            s.write_state(*full)  # the same cache each time
            reps[backend] = s.compact(ratio=4, arrays=backend, **_gates(name))
            probes[backend] = s.eval_logits(m.tokenize(CONT))
        assert reps["auto"].arrays == "cupy" and reps["numpy"].arrays == "numpy"
        for rep in reps.values():
            assert not rep.fell_back, rep.reason
        assert reps["auto"].cells_after == reps["numpy"].cells_after
        # the same compaction up to float32 sums in another order
        assert kl(probes["numpy"], probes["auto"]) <= 0.05
