"""Seeded synthetic attention data with the structure real caches have.

Clustered keys (unequal cluster sizes), a few heavy-hitter keys every query attends to
(sinks), queries near some keys, values correlated with clusters. Used by the tests and
the kernel benchmark; not a model of any particular network.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SyntheticLayer:
    """Arrays of one layer: K, V [H, T, d]; Q_fit, Q_test [H, n, d]; scale."""

    K: np.ndarray
    V: np.ndarray
    Q_fit: np.ndarray
    Q_test: np.ndarray
    scale: float


def synthetic_layer(
    H: int = 3,
    T: int = 512,
    n: int = 256,
    d: int = 64,
    *,
    clusters: int = 16,
    heavy: int = 4,
    seed: int = 0,
) -> SyntheticLayer:
    """Structured random K, V and two independent query sets (fit / held-out).

    Parameters
    ----------
    H, T, n, d : int
        KV heads, keys, queries per set, head dim.
    clusters : int
        Key clusters; sizes follow a Zipf-like law.
    heavy : int
        Heavy-hitter keys (position 0 and random others).
    seed : int

    Returns
    -------
    SyntheticLayer (float32 arrays)
    """
    rng = np.random.default_rng(seed)
    scale = 1.0 / np.sqrt(d)
    centers = rng.standard_normal((H, clusters, d)) * 1.5
    p = 1.0 / np.arange(1, clusters + 1)
    labels = rng.choice(clusters, size=(H, T), p=p / p.sum())
    K = np.take_along_axis(centers, labels[:, :, None], 1) + 0.7 * rng.standard_normal((H, T, d))
    sink = rng.standard_normal((H, 1, d))
    sink /= np.linalg.norm(sink, axis=2, keepdims=True)
    hh = np.concatenate([[0], rng.choice(np.arange(1, T), size=max(0, heavy - 1), replace=False)])
    K[:, hh] += 6.0 * sink
    vmeans = rng.standard_normal((H, clusters, d))
    V = np.take_along_axis(vmeans, labels[:, :, None], 1) + rng.standard_normal((H, T, d))

    def queries() -> np.ndarray:
        near = rng.integers(0, T, size=(H, n))
        Qn = np.take_along_axis(K, near[:, :, None], 1)
        return 0.8 * Qn + 1.5 * sink + 0.8 * rng.standard_normal((H, n, d))

    f32 = np.float32
    return SyntheticLayer(
        K.astype(f32), V.astype(f32), queries().astype(f32), queries().astype(f32), float(scale)
    )
