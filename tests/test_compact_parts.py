"""NNLS, values, budgets, task scoring and metrics, plus hypothesis property tests."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyllamaam.compact import (
    allocate_budgets,
    attend,
    attention_errors,
    attention_stats,
    compact_layer,
    fit_values,
    fit_weights,
    keep_mask_mad,
    keep_mask_topk,
    load_head_budgets,
    phi_matrix,
    proportions_array,
    save_head_budgets,
    task_position_scores,
    uniform_proportions,
)
from pyllamaam.compact.beta import NormalEquations
from pyllamaam.compact.synthetic import synthetic_layer
from pyllamaam.errors import ConfigError
from pyllamaam.evaluation import baselines  # noqa: F401  (registers the evaluation's "random")

FAST = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def nnls_problem(t=40, seed=0):
    L = synthetic_layer(H=2, T=300, n=120, d=16, seed=seed)
    st_ = attention_stats(L.K, L.V, L.Q_fit, L.scale)
    idx = np.argsort(-st_.score_rms, axis=1)[:, :t]
    C1 = np.take_along_axis(L.K, idx[:, :, None], 1)
    return phi_matrix(L.Q_fit, C1, L.scale, st_.shift), st_.mass


@pytest.mark.parametrize("bounds", [None, (-2.0, 2.0)])
def test_pgd_reaches_the_active_set_optimum(bounds):
    Phi, y = nnls_problem()
    mask = np.ones(Phi.shape[::2], dtype=bool)
    exact = fit_weights(Phi, y, mask, solver="active-set", bounds=bounds).w
    fast = fit_weights(Phi, y, mask, solver="pgd", bounds=bounds, tol=1e-9, max_iter=20000)
    assert fast.converged.all()
    res = lambda w: np.linalg.norm(np.einsum("hnt,ht->hn", Phi, w) - y, axis=1)  # noqa: E731
    np.testing.assert_allclose(res(fast.w), res(exact), rtol=1e-5)
    lo, hi = (0.0, np.inf) if bounds is None else np.exp(bounds)
    assert np.all(fast.w >= lo * (1 - 1e-12)) and np.all(fast.w <= hi * (1 + 1e-12))


def test_default_pgd_is_within_its_stated_tolerance_of_the_optimum():
    # The kernel's defaults (float32 Gram, tol 1e-5, 1000 iterations, relative mass
    # weighting) on a near-square problem with near-duplicate columns (t close to n, as
    # at SmolLM2 scale: n = 1K, t = 800): residual within 2e-4 of the active-set optimum.
    L = synthetic_layer(H=2, T=2048, n=256, d=32, seed=1)
    st_ = attention_stats(L.K, L.V, L.Q_fit, L.scale)
    idx = np.argsort(-st_.score_rms, axis=1)[:, :230]
    C1 = np.take_along_axis(L.K, idx[:, :, None], 1)
    Phi = phi_matrix(L.Q_fit, C1, L.scale, st_.shift) / st_.mass[:, :, None]
    y = np.ones_like(st_.mass)
    mask = np.ones(Phi.shape[::2], dtype=bool)
    exact = fit_weights(Phi, y, mask, solver="active-set").w
    fast = fit_weights(Phi, y, mask).w
    res = lambda w: np.linalg.norm(np.einsum("hnt,ht->hn", Phi, w) - y, axis=1)  # noqa: E731
    assert np.all(fast >= 0)
    np.testing.assert_array_less(res(fast), res(exact) * (1 + 2e-4))


def test_warm_start_reaches_the_same_optimum():
    Phi, y = nnls_problem(seed=2)
    mask = np.ones(Phi.shape[::2], dtype=bool)
    cold = fit_weights(Phi, y, mask, tol=1e-9, max_iter=20000)
    w0 = cold.w.copy()
    w0[:, ::3] = 0.0  # as after a refill round
    warm = fit_weights(Phi, y, mask, tol=1e-9, max_iter=20000, w0=w0)
    assert warm.converged.all()
    res = lambda w: np.linalg.norm(np.einsum("hnt,ht->hn", Phi, w) - y, axis=1)  # noqa: E731
    np.testing.assert_allclose(res(warm.w), res(cold.w), rtol=1e-6)


def test_nnls_satisfies_kkt_and_masks_slots():
    Phi, y = nnls_problem(seed=1)
    mask = np.ones(Phi.shape[::2], dtype=bool)
    mask[0, 5:9] = False
    w = fit_weights(Phi, y, mask, tol=1e-10, max_iter=20000).w
    assert np.all(w >= 0) and np.all(w[~mask] == 0)
    grad = np.einsum("hnt,hn->ht", Phi, np.einsum("hnt,ht->hn", Phi, w) - y)
    scale = np.abs(np.einsum("hnt,hn->ht", Phi, y)).max()
    assert np.all(grad[mask & (w == 0)] >= -1e-5 * scale), "zero weights: gradient >= 0"
    assert np.all(np.abs(grad[w > 0]) <= 1e-4 * scale), "positive weights: gradient ~ 0"


@given(
    H=st.integers(1, 3),
    T=st.integers(2, 60),
    n=st.integers(1, 40),
    d=st.sampled_from([4, 8, 16]),
    frac=st.floats(0.05, 1.0),
    dtype=st.sampled_from([np.float16, np.float32, np.float64]),
    method=st.sampled_from(["attn-rms", "snapkv", "window", "random"]),
    seed=st.integers(0, 2**16),
)
@FAST
def test_any_shape_and_dtype_gives_valid_output(H, T, n, d, frac, dtype, method, seed):
    rng = np.random.default_rng(seed)
    K, V = (rng.standard_normal((H, T, d)).astype(dtype) for _ in range(2))
    Q = rng.standard_normal((H, n, d)).astype(dtype)
    t = max(1, int(frac * T))
    res = compact_layer(K, V, Q, t, d**-0.5, method=method, on_bad_values="original")
    assert res.indices.shape == (H, t) and res.values.shape == (H, t, d)
    assert np.all(res.keys_kept >= 1)
    assert np.isfinite(res.beta[res.kept]).all() and np.all(res.beta[~res.kept] == -np.inf)
    assert np.isfinite(res.values).all()
    err = attention_errors(K, V, Q, d**-0.5, res)
    assert np.isfinite(err.output).all() and np.isfinite(err.mass).all()


@given(
    L=st.integers(1, 6),
    H=st.integers(1, 4),
    span=st.integers(1, 500),
    ratio=st.floats(1.0, 60.0),
    capf=st.floats(1.0, 4.0),
    seed=st.integers(0, 2**16),
)
@FAST
def test_budgets_sum_exactly_and_respect_the_cap(L, H, span, ratio, capf, seed):
    p = np.random.default_rng(seed).dirichlet(np.full(L * H, 0.3)).reshape(L, H)
    cap = min(span, max(1, int(np.ceil(capf * span / ratio))))
    total = round(L * H * span / ratio)
    if not L * H <= total <= L * H * cap:
        with pytest.raises(ConfigError):
            allocate_budgets(p, span, ratio, cap=cap)
        return
    plan = allocate_budgets(p, span, ratio, cap=cap)
    assert plan.keys_kept == total
    assert plan.budgets.min() >= 1 and plan.cells_used <= cap
    assert plan.cells_used == plan.budgets.max()


def test_budgets_follow_proportions_and_water_fill():
    p = np.array([[0.7, 0.1, 0.1, 0.1]])
    plan = allocate_budgets(p, 100, 4.0, cap=40)
    assert plan.budgets.tolist() == [[40, 20, 20, 20]]
    assert plan.key_ratio == 4.0 and plan.cell_ratio == 2.5
    assert allocate_budgets(uniform_proportions(2, 3), 100, 10.0).budgets.tolist() == [[10] * 3] * 2


def test_budget_json_round_trip(tmp_path):
    p = np.arange(1, 7, dtype=float).reshape(2, 3)
    save_head_budgets(tmp_path / "b.json", p)
    loaded = load_head_budgets(tmp_path / "b.json")
    assert set(loaded) == {f"L{i}H{j}" for i in range(2) for j in range(3)}
    np.testing.assert_allclose(proportions_array(loaded, 2, 3), p / p.sum())
    with pytest.raises(ConfigError):
        proportions_array({"L0H0": 1.0}, 2, 3)
    (tmp_path / "bad.json").write_text('{"layer0": 1.0}')
    with pytest.raises(ConfigError):
        load_head_budgets(tmp_path / "bad.json")


def task_scores():
    L = synthetic_layer(H=3, T=200, n=16, d=16, seed=4)
    L2 = synthetic_layer(H=3, T=200, n=16, d=16, seed=5)
    return task_position_scores([(L.K, L.Q_fit, L.scale), (L2.K, L2.Q_fit, L2.scale)])


def test_task_scores_are_one_distribution_over_positions():
    s = task_scores()
    assert s.shape == (200,) and np.all(s >= 0)
    np.testing.assert_allclose(s.sum(), 1.0)


@given(k1=st.floats(-2.0, 10.0), k2=st.floats(-2.0, 10.0))
@FAST
def test_mad_threshold_keeps_more_for_smaller_k(k1, k2):
    s = task_scores()
    lo, hi = sorted((k1, k2))
    a, b = keep_mask_mad(s, lo), keep_mask_mad(s, hi)
    assert np.all(a >= b), "the smaller k keeps a superset"


def test_topk_keeps_exactly_k_best():
    s = task_scores()
    keep = keep_mask_topk(s, 20)
    assert keep.sum() == 20 and s[keep].min() >= s[~keep].max()
    with pytest.raises(ConfigError):
        keep_mask_topk(s, 201)


def test_shared_keep_mask_feeds_the_kernel():
    L = synthetic_layer(H=3, T=200, n=64, d=16, seed=4)
    keep = keep_mask_topk(task_position_scores([(L.K, L.Q_fit, L.scale)]), 30)
    res = compact_layer(L.K, L.V, L.Q_fit, 30, L.scale, method="keep", keep=keep, fit=False)
    for h in range(3):
        assert set(res.indices[h]) == set(np.flatnonzero(keep))


def test_metrics_are_zero_for_the_identity():
    L = synthetic_layer(H=2, T=50, n=30, d=8, seed=2)
    res = compact_layer(L.K, L.V, L.Q_fit, 50, L.scale, method="window")
    err = attention_errors(L.K, L.V, L.Q_test, L.scale, res)
    np.testing.assert_allclose(err.output, 0.0, atol=1e-6)
    np.testing.assert_allclose(err.mass, 0.0, atol=1e-6)
    one = attention_errors(L.K[0], L.V[0], L.Q_test[0], L.scale, res.head(0))
    np.testing.assert_allclose(one.output, err.output[:1])


def test_value_head_dim_may_differ_from_key_head_dim():
    # Regression: the score pass sized the attention output by the key head dim.
    L = synthetic_layer(H=2, T=80, n=40, d=16, seed=8)
    res = compact_layer(L.K, L.V[:, :, :8], L.Q_fit, 10, L.scale)
    assert res.values.shape == (2, 10, 8)


def test_replacing_columns_equals_rebuilding_the_normal_equations():
    # A refill round updates only the replaced rows/columns of G and entries of b.
    Phi, y = nnls_problem(seed=3)
    mask = np.ones(Phi.shape[::2], dtype=bool)
    other, _ = nnls_problem(seed=4)
    slots = np.array([2, 7, 30])
    ne = NormalEquations.build(Phi, y, mask, np.float64)
    ne.replace(1, slots, other[1][:, slots])
    Phi2 = Phi.copy()
    Phi2[1][:, slots] = other[1][:, slots]
    ref = NormalEquations.build(Phi2, y, mask, np.float64)
    for a, b in ((ne.P, ref.P), (ne.D, ref.D), (ne.G, ref.G), (ne.b, ref.b)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_early_stopped_pgd_is_feasible_and_improves_on_the_uniform_start():
    # The kernel's default (30 iterations) is an early-stopped NNLS: still w >= 0, and
    # a strictly better fit than its starting point, the best uniform weight.
    Phi, y = nnls_problem(t=60, seed=5)
    mask = np.ones(Phi.shape[::2], dtype=bool)
    res = lambda w: np.linalg.norm(np.einsum("hnt,ht->hn", Phi, w) - y, axis=1)  # noqa: E731
    w = fit_weights(Phi, y, mask, max_iter=30, tol=1e-4).w
    u = fit_weights(Phi, y, mask, max_iter=1, tol=1e-4).w
    opt = fit_weights(Phi, y, mask, solver="active-set").w
    assert np.all(w >= 0)
    assert np.all(res(w) < res(u)) and np.all(res(w) >= res(opt) * (1 - 1e-9))


@pytest.mark.parametrize("scores", [("rms",), ("mean",), ("max",), ()])
def test_score_subsets_equal_the_full_pass(scores):
    L = synthetic_layer(H=2, T=300, n=50, d=16, seed=6)
    full = attention_stats(L.K, L.V, L.Q_fit, L.scale)
    part = attention_stats(L.K, L.V, L.Q_fit, L.scale, scores=scores, max_block=2 * 300 * 7)
    np.testing.assert_allclose(part.mass, full.mass, rtol=1e-5)
    np.testing.assert_allclose(part.output, full.output, rtol=1e-4, atol=1e-6)
    for name in ("rms", "mean", "max"):
        got, ref = getattr(part, f"score_{name}"), getattr(full, f"score_{name}")
        if name in scores:
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-9)
        else:
            assert got is None


def test_attention_stats_match_float64_attention():
    L = synthetic_layer(H=2, T=400, n=60, d=32, seed=9)
    prior = np.random.default_rng(1).normal(size=(2, 400)).astype(np.float32)
    st_ = attention_stats(L.K, L.V, L.Q_fit, L.scale, prior)
    out, logm = attend(L.K, L.V, L.Q_fit, L.scale, prior)
    np.testing.assert_allclose(st_.output, out, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.log(st_.mass) + st_.shift, logm, rtol=1e-6, atol=1e-5)
    A = np.exp(L.scale * np.einsum("hnd,htd->hnt", L.Q_fit.astype(float), L.K) + prior[:, None])
    A /= A.sum(axis=2, keepdims=True)
    np.testing.assert_allclose(st_.score_rms, np.sqrt((A**2).mean(axis=1)), rtol=1e-4)
    np.testing.assert_allclose(st_.score_mean, A.mean(axis=1), rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(st_.score_max, A.max(axis=1), rtol=1e-4)


def test_float32_attention_matches_float64_with_a_removed_cell():
    L = synthetic_layer(H=2, T=300, n=50, d=32, seed=4)
    bias = np.random.default_rng(2).normal(size=(2, 300))
    bias[:, 7] = -np.inf
    out64, logm64 = attend(L.K, L.V, L.Q_fit, L.scale, bias)
    out32, logm32 = attend(L.K, L.V, L.Q_fit, L.scale, bias, np.float32)
    assert out32.dtype == np.float64 and logm32.dtype == np.float64
    np.testing.assert_allclose(out32, out64, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(logm32, logm64, rtol=1e-6, atol=1e-5)
    res = compact_layer(L.K, L.V, L.Q_fit, 60, L.scale, prior_bias=bias)
    r = attention_errors(L.K, L.V, L.Q_fit, L.scale, res, bias, np.float32)
    r64 = attention_errors(L.K, L.V, L.Q_fit, L.scale, res, bias)
    np.testing.assert_allclose(r.output, r64.output, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("ridge", [1e-2, 1e-6])
def test_value_solve_matches_the_normal_equations(ridge):
    L = synthetic_layer(H=2, T=200, n=120, d=16, seed=10)
    st_ = attention_stats(L.K, L.V, L.Q_fit, L.scale)
    idx = np.argsort(-st_.score_rms, axis=1)[:, :30]
    C1 = np.take_along_axis(L.K, idx[:, :, None], 1)
    V_kept = np.take_along_axis(L.V, idx[:, :, None], 1)
    Phi = phi_matrix(L.Q_fit, C1, L.scale, st_.shift, dtype=np.float32)
    beta = np.random.default_rng(0).normal(scale=0.5, size=(2, 30))
    vf = fit_values(Phi, beta, st_.output, V_kept, ridge=ridge)
    X = Phi.astype(np.float64) * np.exp(beta)[:, None, :]
    X /= X.sum(axis=2, keepdims=True)
    for h in range(2):
        A = X[h].T @ X[h]
        lam = ridge * np.trace(A) / 30
        ref = np.linalg.solve(A + lam * np.eye(30), X[h].T @ st_.output[h])
        np.testing.assert_allclose(vf.values[h], ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())


def test_with_surprisal_sums_the_two_ranks_and_keeps_padding_lowest():
    from pyllamaam.compact.chunks import with_surprisal

    cache = np.array([0.5, 1.9, -1.0, 1.0, 0.1])
    nll = np.array([9.0, 0.1, 50.0, 3.0, 0.2])
    score = with_surprisal(cache, nll)
    assert score[2] == -1.0  # a padding cell, however surprising its token
    # ranks over every cell in [0, 1] each: cell 0 (cache rank 2/4, surprisal rank 3/4) outranks
    # cell 1, the cache's best (4/4) and the most predictable token (0/4)
    np.testing.assert_allclose(score[[0, 1, 3, 4]], [0.5 + 0.75, 1.0 + 0.0, 0.75 + 0.5, 0.25 + 0.25])
