"""Per-head guards: a fitted head that is worse than a safe variant on held-out queries is replaced."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from pyllamaam.compact import compact_layer
from pyllamaam.compact.synthetic import synthetic_layer
from pyllamaam.guards import VARIANTS, guard_layer, span_sum_errors


def _layer(seed=0):
    L = synthetic_layer(H=3, T=512, n=256, d=32, seed=seed)
    res = compact_layer(L.K, L.V, L.Q_fit, 64, L.scale)
    return L, res


def test_a_good_fit_is_kept_and_errors_are_reported_for_every_variant():
    L, res = _layer()
    g = guard_layer(L.K, L.V, L.Q_test, L.scale, res)
    assert g.errors.shape == (len(VARIANTS), 3) and np.isfinite(g.errors).all()
    # on structured data the fit beats plain eviction of the same keys (mass and output)
    assert (g.errors[0] < g.errors[VARIANTS.index("evict")]).all()
    assert (g.choice == 0).all()
    assert g.layer is res


def test_a_corrupted_head_falls_back_and_only_that_head_changes():
    L, res = _layer(1)
    bad = res.values.copy()
    bad[1] = bad[1] * -3.0 + 5.0  # head 1's values ruined
    broken = replace(res, values=bad)
    g = guard_layer(L.K, L.V, L.Q_test, L.scale, broken)
    assert g.choice[1] != 0 and g.choice[0] == 0 and g.choice[2] == 0
    np.testing.assert_array_equal(g.layer.values[[0, 2]], bad[[0, 2]])
    assert g.errors[g.choice[1], 1] < 0.5 * g.errors[0, 1]
    assert np.isfinite(g.layer.values).all()


def test_span_sum_error_counts_mass_as_well_as_output():
    out0 = np.ones((1, 4, 2))
    logm0 = np.zeros((1, 4))
    assert span_sum_errors(out0, logm0, out0, logm0)[0] == 0
    # the same output with half the mass is 50% wrong in the span's sum
    assert np.isclose(span_sum_errors(out0, logm0, out0, logm0 + np.log(0.5))[0], 0.5)
