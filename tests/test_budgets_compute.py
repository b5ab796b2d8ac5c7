"""Head sensitivity curves and the greedy exchange solver behind `pyllamaam budgets compute`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pyllamaam import tiny
from pyllamaam.budgets_compute import compute_budgets, exchange_solve
from pyllamaam.compact import load_head_budgets


def test_exchange_moves_keys_to_sensitive_heads_and_keeps_the_total_and_cap():
    ratios = [5.0, 10.0, 20.0]
    curves = np.array([[[0.01, 0.02, 0.04], [0.2, 0.5, 1.0]], [[0.0, 0.001, 0.002], [0.05, 0.1, 0.2]]])
    b = exchange_solve(curves, ratios, span=1000, target=10.0, cap=2.0)
    assert b.shape == (2, 2)
    assert b.sum() == pytest.approx(4 * 100)
    assert b.max() <= 200 + 1e-9
    assert b[0, 1] > 100 and b[1, 0] < 100  # the most sensitive head gains, the flattest loses


def test_exchange_with_equal_curves_stays_uniform():
    curves = np.tile(np.array([0.1, 0.2, 0.4]), (3, 2, 1))
    b = exchange_solve(curves, [5.0, 10.0, 20.0], span=500, target=10.0)
    assert np.allclose(b, 50)


@pytest.mark.native
def test_compute_budgets_on_a_tiny_model_writes_usable_budgets(tmp_path, tiny_dir):
    path = str(tiny.tiny_model_path("llama", tiny_dir))
    out = tmp_path / "b.json"
    keys = compute_budgets(path, tmp_path / "k.json", target=4.0, progress=False, mode="keys", n_tokens=160,
                           ratios=(2.0, 4.0), cont=16)
    curves = np.asarray(keys["dnll"])
    assert curves.shape == (len(keys["layers"]), keys["n_head_kv"], 2) and np.isfinite(curves).all()
    info = compute_budgets(path, out, target=4.0, progress=False, n_tokens=400, cont=16)  # mode="fill"
    props = load_head_budgets(out)
    assert len(props) == info["n_head_kv"] * len(info["layers"]) and sum(props.values()) == pytest.approx(1)
    curves = np.asarray(info["dnll"])
    assert curves.shape == (len(info["layers"]), info["n_head_kv"], len(info["keys"])) and np.isfinite(curves).all()
    assert max(info["keys"]) == info["t"] and min(info["keys"]) < info["t_fit"] < info["t"]
    assert np.asarray(info["budgets"]).mean() == pytest.approx(info["t_fit"])
    assert json.loads((tmp_path / "b.json.curves.json").read_text())["target"] == 4.0
    import pyllamaam

    with pyllamaam.load_model(path) as m, m.session(n_ctx=512) as s:
        s.prefill([int(x) for x in np.random.default_rng(0).integers(10, 500, 200)])
        rep = s.compact(ratio=4, budgets=out, queries="repeat", max_kl=float("inf"), max_attention_error=float("inf"))
        assert not rep.fell_back, rep.reason


@pytest.mark.native
def test_budgets_keep_the_requested_cell_ratio_or_the_uniform_keys(tmp_path, tiny_models):
    import pyllamaam  # noqa: F401

    m = tiny_models["llama"]
    with m.session(n_ctx=512) as s:
        s.prefill([int(x) for x in np.random.default_rng(1).integers(10, 500, 200)])
        layers, H = s.compact_layers(), s.layers[s.compact_layers()[0]]["n_head_kv"]
        props = {f"L{il}H{h}": (4.0 if (il, h) == (layers[0], 0) else 1.0) for il in layers for h in range(H)}
        total = sum(props.values())
        props = {k: v / total for k, v in props.items()}
        blob, n = s.snapshot(), s.n_cells
        lenient = {"max_kl": float("inf"), "max_attention_error": float("inf"), "queries": "repeat"}
        uni = s.compact(ratio=4, budgets="uniform", **lenient)
        s.write_state(blob, n)
        by_ratio = s.compact(ratio=4, budgets=props, **lenient)
        s.write_state(blob, n)
        by_keys = s.compact(ratio=4, budgets=props, budget_cells="keys", **lenient)
        assert by_ratio.cells_after == uni.cells_after  # cells shrink by the ratio asked for
        assert by_ratio.keys_kept < uni.keys_kept  # ... so the other heads hold fewer keys
        assert by_keys.cells_after > uni.cells_after  # same keys, more cells
        assert abs(by_keys.keys_kept - uni.keys_kept) <= 0.05 * uni.keys_kept


def test_fill_solve_keeps_the_uniform_total_within_the_measured_range():
    from pyllamaam.budgets_compute import fill_solve

    keys = [10, 20, 40, 60, 80]
    flat = np.array([0.05, 0.05, 0.05, 0.05, 0.05])  # a head the fit barely changes
    steep = np.array([0.9, 0.5, 0.2, 0.1, 0.05])  # a head that needs its fitted keys
    b = fill_solve(np.array([[flat, steep]]), keys, t_fit=40)
    assert b.sum() == pytest.approx(80) and b.min() >= 10 and b.max() <= 80
    assert b[0, 1] > 40 > b[0, 0]
    with pytest.raises(Exception, match="outside the measured range"):
        fill_solve(np.array([[flat]]), keys, t_fit=5)


@pytest.mark.native
def test_fill_budgets_keep_every_cell_full_and_the_window_exact(tiny_models):
    import pyllamaam  # noqa: F401

    m = tiny_models["llama"]
    with m.session(n_ctx=512) as s:
        s.prefill([int(x) for x in np.random.default_rng(2).integers(10, 500, 240)])
        layers, H = s.compact_layers(), s.layers[s.compact_layers()[0]]["n_head_kv"]
        props = {f"L{il}H{h}": (3.0 if (il, h) == (layers[0], 0) else 1.0) for il in layers for h in range(H)}
        total = sum(props.values())
        props = {k: v / total for k, v in props.items()}
        kv0 = s.get_kv()
        blob, n = s.snapshot(), s.n_cells
        lenient = {"max_kl": float("inf"), "max_attention_error": float("inf"), "queries": "repeat", "guard": False}
        uni = s.compact(ratio=4, budgets="uniform", **lenient)
        s.write_state(blob, n)
        rep = s.compact(ratio=4, budgets=props, **lenient)  # budget_cells="fill" is the default
        assert not rep.fell_back, rep.reason
        assert rep.cells_after == uni.cells_after  # the cells shrink by the ratio asked for
        span_cells = rep.cells_after - 4 - 32
        full = span_cells * H * len(layers)
        assert 0.95 * full <= rep.keys_kept <= full and 0.95 * full <= uni.keys_kept <= full  # about every cell
        kv = s.get_kv()
        low = layers[-1]  # a head with a small budget: a larger exact window than uniform's
        order = np.argsort(kv0.positions, kind="stable")
        last = order[len(order) - 32 - 12 : len(order) - 32]  # the span's last 12 cells
        K = kv.keys[low][4 : 4 + span_cells, 0]
        V = kv.values[low][4 : 4 + span_cells, 0]
        B = kv.bias[low][4 : 4 + span_cells, 0]
        for c in last:  # each is kept verbatim, with bias 0
            hit = np.flatnonzero(np.all(K == kv0.keys[low][c, 0], axis=1))
            assert len(hit) == 1 and np.array_equal(V[hit[0]], kv0.values[low][c, 0]) and B[hit[0]] == 0
        s.write_state(blob, n)
        with pytest.raises(pyllamaam.ConfigError, match="budget_cells"):
            s.compact(ratio=4, budgets=props, budget_cells="nope", **lenient)
        assert s.n_cells == n


@pytest.mark.native
def test_shipped_budgets_are_found_for_catalog_models_and_refused_clearly_elsewhere(tiny_models, smollm2):
    import pyllamaam
    from pyllamaam import pipeline

    with smollm2.session(n_ctx=512) as s:
        path = pipeline.shipped_budgets(s)
        assert path is not None and path.name == "smollm2-135m.json"
        props = load_head_budgets(path)
        assert len(props) == 30 * 3 and sum(props.values()) == pytest.approx(1)
    with tiny_models["llama"].session(n_ctx=256) as s:
        s.prefill([int(x) for x in np.random.default_rng(3).integers(10, 500, 120)])
        n, blob = s.n_cells, s.snapshot()
        assert pipeline.shipped_budgets(s) is None
        with pytest.raises(pyllamaam.ConfigError, match="no head budgets are shipped"):
            s.compact(ratio=4, budgets="shipped")
        assert s.n_cells == n and s.snapshot() == blob
        # the default stays uniform (pipeline.SHIPPED_BUDGETS_BY_DEFAULT, from the continuation grid)
        rep = s.compact(ratio=4, queries="repeat", max_kl=float("inf"), max_attention_error=float("inf"))
        assert rep.budgets == "uniform" and not rep.fell_back
