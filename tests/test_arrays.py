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
        assert why


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
