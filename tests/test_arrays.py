"""Option ``arrays``: where a compaction's attention passes run (numpy, or CuPy on a GPU).

The CuPy side runs in tests/test_gpu.py on a CUDA machine; here, on the CPU: the choice, its
errors, and that the passes and the worker threads of the array stages use the module chosen.
"""

from __future__ import annotations

import numpy as np
import pytest

from pyllamaam.compact import arrays, attend, attention_stats
from pyllamaam.compact.parallel import map_layers
from pyllamaam.errors import ConfigError


class _Counting:
    """numpy, counting the functions the passes take from it (a stand-in array module)."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.ndarray = np.ndarray

    def __getattr__(self, name: str):
        self.calls[name] = self.calls.get(name, 0) + 1
        return getattr(np, name)


def test_the_choice():
    assert arrays.resolve("numpy", offloaded=True) == "numpy"
    with pytest.raises(ConfigError, match="arrays must be one of"):
        arrays.resolve("torch", offloaded=False)
    cupy, why = arrays.cupy_status()
    assert arrays.resolve("auto", offloaded=False) == "numpy"  # layers on the CPU: the CPU
    assert arrays.resolve("auto", offloaded=True) == ("numpy" if cupy is None else "cupy")
    if cupy is None:
        with pytest.raises(ConfigError, match="arrays='cupy'.*(CuPy|CUDA)"):
            arrays.resolve("cupy", offloaded=True)
        with pytest.raises(ConfigError, match="arrays='cupy'"), arrays.use("cupy"):
            pass
        assert why
    with arrays.use("numpy"):
        assert arrays.current() is np and arrays.name() == "numpy"


def test_the_passes_and_the_worker_threads_use_the_module_chosen():
    rng = np.random.default_rng(0)
    K, V = rng.normal(size=(2, 2, 50, 8)).astype(np.float32)
    Q = rng.normal(size=(2, 30, 8)).astype(np.float32)
    ref = attention_stats(K, V, Q, 0.3)
    fake = _Counting()
    token = arrays._current.set(fake)
    try:
        got = map_layers(lambda _: (attention_stats(K, V, Q, 0.3), attend(K, V, Q, 0.3)), range(4), workers=2)
    finally:
        arrays._current.reset(token)
    assert fake.calls.get("matmul", 0) >= 4 * 2 and fake.calls.get("exp", 0) >= 4 * 2
    for st, _ in got:
        np.testing.assert_array_equal(st.score_rms, ref.score_rms)
    assert arrays.current() is np  # the context ends with the block


class OutOfMemoryError(Exception):  # named as CuPy's
    pass


class _Full(_Counting):
    """An array module whose device is full: every product runs out of memory."""

    def __init__(self) -> None:
        super().__init__()
        self.freed = 0

    def matmul(self, *a, **k):
        raise OutOfMemoryError("out of memory allocating 1,073,741,824 bytes")

    def get_default_memory_pool(self):
        outer = self

        class _Pool:
            def free_all_blocks(self):
                outer.freed += 1

        return _Pool()


def test_a_pass_that_runs_out_of_gpu_memory_runs_on_the_cpu(caplog):
    rng = np.random.default_rng(1)
    K, V = rng.normal(size=(2, 2, 40, 8)).astype(np.float32)
    Q = rng.normal(size=(2, 20, 8)).astype(np.float32)
    ref, ref_out = attention_stats(K, V, Q, 0.3), attend(K, V, Q, 0.3)
    full = _Full()
    token = arrays._current.set(full)
    try:
        with caplog.at_level("WARNING", logger="pyllamaam.arrays"):
            st, out = attention_stats(K, V, Q, 0.3), attend(K, V, Q, 0.3)
    finally:
        arrays._current.reset(token)
    np.testing.assert_array_equal(st.output, ref.output)
    np.testing.assert_array_equal(out[0], ref_out[0])
    assert full.freed == 2 and caplog.text.count("ran out of GPU memory") == 2


def test_a_pass_that_fails_on_the_gpu_runs_on_the_cpu_and_auto_stays_there(monkeypatch, caplog):
    class _Broken(_Full):
        def matmul(self, *a, **k):
            raise RuntimeError("CUDA error: an illegal memory access")

    broken = _Broken()
    monkeypatch.setattr(arrays, "_failed", [])
    monkeypatch.setattr(arrays, "cupy_status", lambda: (broken, "CuPy stand-in"))
    assert arrays.resolve("auto", offloaded=True) == "cupy"
    K, V, Q = np.ones((1, 4, 2), np.float32), np.ones((1, 4, 2), np.float32), np.ones((1, 3, 2), np.float32)
    token = arrays._current.set(broken)
    try:
        with caplog.at_level("WARNING", logger="pyllamaam.arrays"):
            out, logm = attend(K, V, Q, 1.0)
    finally:
        arrays._current.reset(token)
    np.testing.assert_array_equal(out, attend(K, V, Q, 1.0)[0])
    assert "failed on the GPU (RuntimeError: CUDA error: an illegal memory access)" in caplog.text
    assert arrays.resolve("auto", offloaded=True) == "numpy"  # for good, in this process
    assert arrays.resolve("cupy", offloaded=True) == "cupy"  # asked for by name: still tried


@pytest.mark.native
def test_a_bad_choice_is_a_config_error_and_changes_nothing(tiny_models):
    m = tiny_models["llama"]
    with m.session(n_ctx=256) as s:
        s.prefill([1, *range(10, 200)])
        before, n = s.snapshot(), s.n_cells
        with pytest.raises(ConfigError, match="arrays must be one of"):
            s.compact(ratio=4, arrays="gpu")
        assert s.snapshot() == before and s.n_cells == n
        rep = s.compact(ratio=4, arrays="numpy", max_kl=float("inf"), max_attention_error=float("inf"))
        assert rep.arrays == "numpy" and not rep.fell_back
