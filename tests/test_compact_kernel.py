"""Invariants of the Attention Matching kernel on structured synthetic data."""

from __future__ import annotations

import numpy as np
import pytest

from pyllamaam.compact import (
    PAD,
    CompactedLayer,
    attend,
    attention_errors,
    available_methods,
    compact_head,
    compact_layer,
)
from pyllamaam.compact.synthetic import synthetic_layer
from pyllamaam.errors import CompactionError, ConfigError
from pyllamaam.evaluation import baselines  # noqa: F401  (registers the evaluation's baselines)

# One line per method, the library's and the evaluation's baselines: adding a method adds a row
# to every matrix test.
METHODS = [
    ("attn-rms", {}),
    ("attn-mean", {}),
    ("hybrid", {"window": 16}),
    ("snapkv", {"window": 16}),
    ("window", {"n_sink": 2}),
    ("random", {}),
    ("keep", {"keep": np.arange(0, 256, 3)}),
]


@pytest.fixture(scope="module")
def layer():
    return synthetic_layer(H=3, T=256, n=384, d=32, seed=3)


def evict(res: CompactedLayer, V: np.ndarray) -> CompactedLayer:
    """The same kept keys with original values and beta = 0."""
    safe = np.where(res.kept, res.indices, 0)
    values = np.take_along_axis(V, safe[:, :, None], 1)
    beta = np.where(res.kept, 0.0, -np.inf)
    return CompactedLayer(res.indices, beta, values, res.zero_weights)


def test_matrix_covers_every_method():
    assert sorted(m for m, _ in METHODS) == sorted(available_methods())


@pytest.mark.parametrize(("method", "opts"), METHODS, ids=[m for m, _ in METHODS])
def test_every_method_returns_valid_shapes(layer, method, opts):
    t = 40
    res = compact_layer(layer.K, layer.V, layer.Q_fit, t, layer.scale, method=method, **opts)
    H, T, d = layer.K.shape
    assert res.indices.shape == (H, t) and res.beta.shape == (H, t)
    assert res.values.shape == (H, t, d) and res.values.dtype == np.float32
    for h in range(H):
        kept = res.indices[h][res.kept[h]]
        assert np.all((kept >= 0) & (kept < T))
        assert np.all(np.diff(kept) > 0), "kept indices unique and ascending"
        assert np.all(res.indices[h][~res.kept[h]] == PAD)
        assert np.all(res.kept[h][: kept.size]), "padding only at the end"
    assert np.isfinite(res.beta[res.kept]).all()
    assert np.all(res.beta[~res.kept] == -np.inf)
    assert np.isfinite(res.values).all()
    assert set(res.timings) == {"scores", "select", "beta", "values"}


@pytest.mark.parametrize("method", ["attn-rms", "attn-mean"])
def test_keeping_every_key_reproduces_attention_with_zero_beta(method):
    L = synthetic_layer(H=2, T=48, n=96, d=16, seed=5)
    res = compact_layer(
        L.K, L.V, L.Q_fit, 48, L.scale, method=method, ridge_target="original", nnls_tol=1e-9
    )
    np.testing.assert_allclose(res.beta, 0.0, atol=1e-3)
    err = attention_errors(L.K, L.V, L.Q_test, L.scale, res)
    assert err.output.max() < 1e-3 and err.mass.max() < 1e-3


@pytest.mark.parametrize("method", ["attn-rms", "attn-mean"])
@pytest.mark.parametrize("ratio", [4, 10])
def test_am_beats_eviction_of_the_same_keys(layer, method, ratio):
    K, V, s = layer.K, layer.V, layer.scale
    res = compact_layer(
        K, V, layer.Q_fit, 256 // ratio, s, method=method, mass_weighting="relative"
    )
    ev = evict(res, V)
    # Output on held-out queries.
    am_err = attention_errors(K, V, layer.Q_test, s, res)
    ev_err = attention_errors(K, V, layer.Q_test, s, ev)
    assert np.all(am_err.output <= ev_err.output)
    # Mass on the fitted queries: the relative NNLS objective, for which beta = 0 is feasible.
    _, logm = attend(K, V, layer.Q_fit, s)
    for r in (res, ev):
        _, logmc = attend(r.keys(K), r.values, layer.Q_fit, s, r.beta)
        r.__dict__["objective"] = (np.expm1(logmc - logm) ** 2).sum(axis=1)
    assert np.all(res.objective <= ev.objective * (1 + 1e-6))


@pytest.mark.parametrize("policy", ["refill", "drop", "floor"])
def test_zero_weight_policies(layer, policy):
    res = compact_layer(
        layer.K, layer.V, layer.Q_fit, 100, layer.scale, zero_weights=policy, beta_floor=-7.0
    )
    assert np.isfinite(res.beta[res.kept]).all()
    if policy == "floor":
        assert res.kept.all() and res.beta.min() >= -7.0 - 1e-9
    if policy == "drop":
        assert np.all(res.keys_kept == 100 - res.zero_weights)


def test_refill_keeps_more_keys_than_drop():
    L = synthetic_layer(H=3, T=400, n=64, d=16, seed=11)
    drop = compact_layer(L.K, L.V, L.Q_fit, 150, L.scale, zero_weights="drop")
    refill = compact_layer(L.K, L.V, L.Q_fit, 150, L.scale, zero_weights="refill")
    assert drop.zero_weights.sum() > 0, "data must produce zero weights"
    assert refill.keys_kept.sum() > drop.keys_kept.sum()


def test_beta_bounds_are_respected(layer):
    res = compact_layer(layer.K, layer.V, layer.Q_fit, 30, layer.scale, beta_bounds=(-1.0, 1.0))
    assert res.beta[res.kept].min() >= -1.0 - 1e-9 and res.beta[res.kept].max() <= 1.0 + 1e-9


def test_float16_beta_is_exactly_representable(layer):
    res = compact_layer(layer.K, layer.V, layer.Q_fit, 30, layer.scale, beta_dtype="float16")
    b = res.beta[res.kept]
    assert np.array_equal(b.astype(np.float16).astype(np.float64), b)


def test_two_identical_cells_equal_one_cell_with_log2_bias(layer):
    K, V, Q = layer.K[:1, :20], layer.V[:1, :20], layer.Q_fit[:1]
    Kd, Vd = np.concatenate([K, K[:, :1]], 1), np.concatenate([V, V[:, :1]], 1)
    bias = np.zeros((1, 20))
    bias[0, 0] = np.log(2.0)
    out1, m1 = attend(Kd, Vd, Q, layer.scale)
    out2, m2 = attend(K, V, Q, layer.scale, bias)
    np.testing.assert_allclose(out1, out2, atol=1e-10)
    np.testing.assert_allclose(m1, m2, atol=1e-10)


def test_minus_inf_bias_equals_deleting_the_cell(layer):
    K, V, Q = layer.K[:1, :20], layer.V[:1, :20], layer.Q_fit[:1]
    bias = np.zeros((1, 20))
    bias[0, 7] = -np.inf
    keep = np.arange(20) != 7
    out1, m1 = attend(K, V, Q, layer.scale, bias)
    out2, m2 = attend(K[:, keep], V[:, keep], Q, layer.scale)
    np.testing.assert_allclose(out1, out2, atol=1e-12)
    np.testing.assert_allclose(m1, m2, atol=1e-12)


def test_prior_bias_matches_the_original_cells_under_the_combined_bias():
    # Cells that stand for m copies carry prior bias log m: compacting them must give the
    # fit of compacting the expanded cache (same kept positions).
    L = synthetic_layer(H=2, T=60, n=80, d=16, seed=7)
    mult = np.random.default_rng(0).integers(1, 4, size=60)
    Kd, Vd = np.repeat(L.K, mult, axis=1), np.repeat(L.V, mult, axis=1)
    first = np.concatenate([[0], np.cumsum(mult)[:-1]])
    keep = np.arange(0, 60, 3)
    prior = np.broadcast_to(np.log(mult), (2, 60)).astype(np.float32)
    a = compact_layer(
        L.K,
        L.V,
        L.Q_fit,
        keep.size,
        L.scale,
        method="keep",
        keep=keep,
        prior_bias=prior,
        nnls_tol=1e-10,
        zero_weights="floor",
    )
    b = compact_layer(
        Kd,
        Vd,
        L.Q_fit,
        keep.size,
        L.scale,
        method="keep",
        keep=first[keep],
        nnls_tol=1e-10,
        zero_weights="floor",
    )
    np.testing.assert_array_equal(first[a.indices], b.indices)
    np.testing.assert_allclose(np.exp(a.beta), np.exp(b.beta), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(a.values, b.values, rtol=1e-3, atol=1e-3)


def test_padding_cells_in_the_prior_are_never_kept(layer):
    prior = np.zeros(layer.K.shape[:2], dtype=np.float32)
    prior[:, ::2] = -np.inf
    res = compact_layer(layer.K, layer.V, layer.Q_fit, 200, layer.scale, prior_bias=prior)
    assert np.all(res.indices[res.kept] % 2 == 1)
    assert res.keys_kept.max() <= 128


def test_baselines_keep_original_values_and_prior_bias(layer):
    prior = np.full(layer.K.shape[:2], 0.25, dtype=np.float32)
    res = compact_layer(
        layer.K, layer.V, layer.Q_fit, 20, layer.scale, method="snapkv", prior_bias=prior
    )
    np.testing.assert_array_equal(res.values, evict(res, layer.V).values)
    np.testing.assert_allclose(res.beta, 0.25)


def test_per_head_budgets_pad_to_the_largest(layer):
    res = compact_layer(layer.K, layer.V, layer.Q_fit, np.array([5, 30, 12]), layer.scale)
    assert res.indices.shape == (3, 30)
    assert res.keys_kept.tolist() == [5, 30, 12]


def test_batched_equals_per_head(layer):
    res = compact_layer(layer.K, layer.V, layer.Q_fit, 25, layer.scale)
    for h in range(3):
        one = compact_head(layer.K[h], layer.V[h], layer.Q_fit[h], 25, layer.scale)
        np.testing.assert_array_equal(one.indices, res.indices[h])
        np.testing.assert_allclose(one.beta, res.beta[h], rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(one.values, res.values[h], rtol=1e-4, atol=1e-5)


def test_chunked_scores_equal_one_block(layer):
    a = compact_layer(layer.K, layer.V, layer.Q_fit, 25, layer.scale, max_block=3 * 256 * 7)
    b = compact_layer(layer.K, layer.V, layer.Q_fit, 25, layer.scale)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_allclose(a.values, b.values, rtol=1e-4, atol=1e-5)


def test_unregularized_blowup_is_an_error_not_silent(layer):
    # Regression guard (DESIGN.md section 8): an unregularized value solve returned values
    # 100x the real ones and silently cost +0.5 nats.
    opts = dict(ridge=0.0, max_value_ratio=1e-3)
    with pytest.raises(CompactionError):
        compact_layer(layer.K, layer.V, layer.Q_fit, 25, layer.scale, **opts)
    res = compact_layer(
        layer.K, layer.V, layer.Q_fit, 25, layer.scale, on_bad_values="original", **opts
    )
    assert res.fallback_heads == (0, 1, 2)
    np.testing.assert_array_equal(res.values, evict(res, layer.V).values)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"method": "nope"}, ConfigError),
        ({"bogus": 1}, ConfigError),
        ({"window": 3}, ConfigError),  # belongs to snapkv, not attn-rms
        ({"zero_weights": "ignore"}, ConfigError),
        ({"beta_bounds": (1.0, -1.0)}, ConfigError),
        ({"nnls_solver": "lstsq"}, ConfigError),
        ({"method": "omp"}, ConfigError),  # retired: no suite reports it and it kept fewer answers
        ({"method": "snapkv", "kernel": 4}, ConfigError),
    ],
)
def test_bad_options_raise_config_error(layer, kwargs, error):
    with pytest.raises(error):
        compact_layer(layer.K, layer.V, layer.Q_fit, 10, layer.scale, **kwargs)


def test_bad_inputs_raise_typed_errors(layer):
    K, V, Q, s = layer.K, layer.V, layer.Q_fit, layer.scale
    bad = K.copy()
    bad[0, 3, 1] = np.nan
    with pytest.raises(CompactionError):
        compact_layer(bad, V, Q, 10, s)
    with pytest.raises(CompactionError):
        compact_layer(K, V, Q, 10, s, prior_bias=np.full(K.shape[:2], np.nan))
    with pytest.raises(ConfigError):
        compact_layer(K, V, Q, 10_000, s)
    with pytest.raises(ConfigError):
        compact_layer(K, V, Q[:, :, :5], 10, s)
    with pytest.raises(ConfigError):
        compact_layer(K, V, Q, 10, -1.0)
    with pytest.raises(ConfigError):
        compact_layer(K.astype(np.int32), V, Q, 10, s)


def test_peak_memory_stays_under_one_score_block_per_head():
    # Regression: the score pass allocated the next logit block while the previous one
    # was still alive (peak above one n x T float32 block per head).
    import tracemalloc

    from pyllamaam.cli_bench_kernel import peak_memory

    assert tracemalloc.is_tracing() is False
    mem = peak_memory(T=2048, d=32, n=512, H=3, t=200)
    assert mem["peak_per_head_in_blocks"] <= 1.0


def test_layers_fitted_in_threads_equal_the_sequential_fit():
    from pyllamaam.compact.parallel import map_layers
    from pyllamaam.compact.synthetic import synthetic_layer as _syn

    layers = [_syn(H=2, T=256, n=64, d=16, seed=s) for s in range(4)]

    def fit(L):
        return compact_layer(L.K, L.V, L.Q_fit, 32, L.scale)

    seq = map_layers(fit, layers, workers=1)
    par = map_layers(fit, layers, workers=2)
    for a, b in zip(seq, par, strict=True):
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_allclose(a.values, b.values, rtol=1e-5, atol=1e-6)


def test_an_error_in_one_layer_thread_propagates():
    from pyllamaam.compact.parallel import map_layers

    def fit(i):
        if i == 2:
            raise CompactionError("layer 2 failed")
        return i

    with pytest.raises(CompactionError, match="layer 2"):
        map_layers(fit, range(4), workers=2)


def test_keeping_every_key_reproduces_attention_with_default_options():
    # regression: values shrunk toward zero left 8-19% output error with t = T; the default now
    # shrinks toward the original values, so nothing changes when nothing is dropped
    from pyllamaam.compact import attention_errors, compact_head
    from pyllamaam.compact.synthetic import synthetic_layer

    L = synthetic_layer(H=1, T=256, n=256, seed=3)
    r = compact_head(L.K[0], L.V[0], L.Q_fit[0], 256, L.scale)
    e = attention_errors(L.K[0], L.V[0], L.Q_test[0], L.scale, r)
    assert float(e.output.max()) < 1e-3
    assert float(e.mass.max()) < 1e-3
