"""Beta: non-negative least squares on the attention-mass equation.

For the kept keys C1 of one head, with the same row shift ``m_i`` on both sides::

    Phi_ij = exp(scale * q_i . C1_j - m_i)            [n, t]
    y_i    = sum_k exp(scale * q_i . K_k + prior_k - m_i)   (AttentionStats.mass)
    min_w ||Phi w - y||_2   subject to  w >= 0  (or exp(lo) <= w <= exp(hi))
    beta = log w

Two solvers reach the same optimum: ``"active-set"`` (scipy's Lawson-Hanson NNLS, or BVLS
with bounds; exact, one head at a time) and ``"pgd"`` (accelerated projected gradient
on the column-scaled normal equations, batched over heads; the default, much faster at
t of several hundred). The kernel runs ``pgd`` with a small iteration budget (see
``FitOptions.nnls_max_iter``): every iterate is feasible (w >= 0), and on the
near-singular Grams at t of several hundred the early-stopped solution predicted
held-out attention at least as well as the exact optimum (synthetic data; to be
re-checked on real caches).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import lsq_linear, nnls

from ..errors import CompactionError, ConfigError

SOLVERS = ("pgd", "active-set")
#: ``pgd`` keeps its Gram matrix in float32 for tolerances at least this loose.
F32_GRAM_TOL = 1e-6


@dataclass(frozen=True)
class WeightFit:
    """Result of :func:`fit_weights`.

    Attributes
    ----------
    w : ndarray, float64, [H, t]
        Weights ``exp(beta)``; 0 in masked slots.
    iterations : ndarray, int, [H]
        Solver iterations per head (0 for the active-set solver).
    converged : ndarray, bool, [H]
    """

    w: np.ndarray
    iterations: np.ndarray
    converged: np.ndarray


def phi_matrix(
    Q: np.ndarray,
    C1: np.ndarray,
    scale: float,
    shift: np.ndarray,
    dtype: type = np.float64,
) -> np.ndarray:
    """``Phi = exp(scale * Q C1^T - shift)``.

    Parameters
    ----------
    Q : ndarray, [H, n, d]
    C1 : ndarray, [H, t, d]
    scale : float
    shift : ndarray, [H, n]
    dtype : numpy dtype
        float64 (default) or float32 (what the kernel uses: entries are <= 1 when
        ``shift`` is the row maximum over a superset of C1).

    Returns
    -------
    ndarray, [H, n, t]
    """
    L = np.matmul(Q, C1.transpose(0, 2, 1)).astype(dtype, copy=False)
    L *= L.dtype.type(scale)
    L -= shift[:, :, None].astype(dtype, copy=False)
    return np.exp(L, out=L)


@dataclass
class NormalEquations:
    """The NNLS problem in the column-scaled form the ``pgd`` solver iterates on.

    ``P = Phi D^-1`` has unit columns (D = column norms), ``G = P^T P`` (unit
    diagonal, entries >= 0), ``b = P^T y``; in ``u = D w`` the problem is
    ``min 1/2 u^T G u - b^T u``. Built once per head batch; a refill round replaces
    only the changed columns (:meth:`replace`) instead of rebuilding G.

    Attributes
    ----------
    P : ndarray, float32, [H, n, t]
    D : ndarray, float64, [H, t]
        0 for masked slots and for columns that underflowed (those get w = 0).
    G : ndarray, float32 or float64, [H, t, t]
    b : ndarray, float64, [H, t]
    y : ndarray, float64, [H, n]
    """

    P: np.ndarray
    D: np.ndarray
    G: np.ndarray
    b: np.ndarray
    y: np.ndarray

    @classmethod
    def build(
        cls, Phi: np.ndarray, y: np.ndarray, mask: np.ndarray, gram: type = np.float32
    ) -> NormalEquations:
        """Column-scale ``Phi`` [H, n, t] and form G and b (``gram`` = G's dtype)."""
        H, n, t = Phi.shape
        P = np.array(Phi, dtype=gram, copy=True)
        P *= mask[:, None, :]
        D = np.sqrt(np.einsum("hnt,hnt->ht", P, P, dtype=np.float64))
        P *= np.divide(1.0, D, out=np.zeros_like(D), where=D > 0).astype(gram)[:, None, :]
        y = np.asarray(y, dtype=np.float64)
        b = np.einsum("hnt,hn->ht", P, y.astype(gram), dtype=np.float64)
        # One 2-D product per head: numpy turns P.T @ P into a BLAS syrk (half the
        # flops of the stacked gemm); the Gram is the kernel's largest product.
        G = np.empty((H, t, t), dtype=gram)
        for h in range(H):
            np.matmul(P[h].T, P[h], out=G[h])
        return cls(P, D, G, b, y)

    def replace(self, h: int, slots: np.ndarray, cols: np.ndarray) -> None:
        """Replace columns ``slots`` of head ``h`` by ``cols`` [n, k] (unscaled Phi)."""
        c = np.asarray(cols, dtype=self.P.dtype)
        d = np.sqrt(np.einsum("nk,nk->k", c, c, dtype=np.float64))
        c = c * np.divide(1.0, d, out=np.zeros_like(d), where=d > 0).astype(c.dtype)
        self.P[h][:, slots] = c
        self.D[h, slots] = d
        rows = c.T @ self.P[h]  # [k, t]: new rows of G, new columns by symmetry
        self.G[h][slots, :] = rows
        self.G[h][:, slots] = rows.T
        self.b[h, slots] = c.T.astype(np.float64) @ self.y[h]

    def weights(self, u: np.ndarray) -> np.ndarray:
        """``w = u / D`` (0 where D = 0)."""
        return np.divide(u, self.D, out=np.zeros_like(u), where=self.D > 0)


def fit_weights(
    Phi: np.ndarray,
    y: np.ndarray,
    mask: np.ndarray,
    *,
    bounds: tuple[float, float] | None = None,
    solver: str = "pgd",
    max_iter: int = 1000,
    tol: float = 1e-5,
    w0: np.ndarray | None = None,
) -> WeightFit:
    """Solve the (bounded) NNLS ``min ||Phi w - y||, w >= 0`` for every head.

    Parameters
    ----------
    Phi : ndarray, float64, [H, n, t]
    y : ndarray, float64, [H, n]
    mask : ndarray, bool, [H, t]
        Slots that hold a key; the others get w = 0.
    bounds : (lo, hi) or None
        Bounds on beta (``w`` in ``[exp(lo), exp(hi)]``); None means ``w >= 0``.
    solver : {"pgd", "active-set"}
    max_iter : int
        Iteration cap of the ``pgd`` solver.
    tol : float
        ``pgd`` stops when the projected-gradient step is below ``tol`` relative to w.
    w0 : ndarray or None, [H, t]
        Warm start of the ``pgd`` solver (e.g. the previous refill round's weights,
        0 in refilled slots); None starts from the best uniform weight.

    Returns
    -------
    WeightFit
    """
    if solver not in SOLVERS:
        raise ConfigError(f"nnls solver must be one of {SOLVERS}, got {solver!r}")
    if solver == "active-set":
        lo, hi = _bounds(bounds)
        return _active_set(Phi, y, mask, lo, hi)
    gram = np.float32 if tol >= F32_GRAM_TOL else np.float64
    ne = NormalEquations.build(Phi, y, mask, gram)
    return solve_pgd(ne, bounds=bounds, max_iter=max_iter, tol=tol, w0=w0)


def _bounds(bounds: tuple[float, float] | None) -> tuple[float, float]:
    if bounds is None:
        return 0.0, np.inf
    return float(np.exp(bounds[0])), float(np.exp(bounds[1]))


def _active_set(Phi, y, mask, lo, hi) -> WeightFit:
    H, _, t = Phi.shape
    w = np.zeros((H, t))
    for h in range(H):
        cols = np.flatnonzero(mask[h])
        A = Phi[h][:, cols]
        if lo == 0.0 and hi == np.inf:
            w[h, cols] = nnls(A, y[h], maxiter=50 * max(1, cols.size))[0]
        else:
            res = lsq_linear(A, y[h], bounds=(lo, hi), method="bvls")
            w[h, cols] = np.clip(res.x, lo, hi)
    return WeightFit(w, np.zeros(H, dtype=int), np.ones(H, dtype=bool))


def solve_pgd(
    ne: NormalEquations,
    *,
    bounds: tuple[float, float] | None = None,
    max_iter: int = 1000,
    tol: float = 1e-5,
    w0: np.ndarray | None = None,
) -> WeightFit:
    """FISTA with adaptive restart on ``u = D w`` (unit-diagonal Gram), batched over heads.

    The iterations are memory-bound matrix-vector products with G, so G is float32
    (half the traffic) when ``tol`` is above float32's resolution; b and the iterates
    stay float64. Parameters as for :func:`fit_weights`.
    """
    lo, hi = _bounds(bounds)
    G, b, D = ne.G, ne.b, ne.D
    H, t = D.shape
    live = D > 0  # a column that underflowed to 0 carries no mass: w = 0 there
    L = _perron_bound(G) * 1.01 + 1e-30
    ulo = np.where(live, D * lo, 0.0)
    uhi = np.where(live, D, 0.0) * hi if np.isfinite(hi) else np.where(live, np.inf, 0.0)
    if w0 is None:
        # Start from the best uniform weight (every kept key stands for the same mass):
        # u = c D with c = argmin ||c P D - y|| = D.b / D^T G D.
        c = np.einsum("ht,ht->h", D, b) / np.maximum(
            np.einsum("ht,ht->h", D, _matvec(G, D)), 1e-300
        )
        u = np.clip(c[:, None] * D, ulo, uhi)
    else:
        u = np.clip(np.asarray(w0, dtype=np.float64) * D, ulo, uhi)
    z, u_prev, k = u.copy(), u.copy(), np.ones(H)
    iters = np.zeros(H, dtype=int)
    done = np.zeros(H, dtype=bool)
    for it in range(1, max_iter + 1):
        g = _matvec(G, z) - b
        # A converged head stays put, so a head's result does not depend on its batch.
        u = np.where(done[:, None], u_prev, np.clip(z - g / L[:, None], ulo, uhi))
        step = np.abs(u - u_prev).max(axis=1)
        # Adaptive restart when momentum points uphill (O'Donoghue & Candes).
        restart = np.einsum("hi,hi->h", z - u, u - u_prev) > 0
        k_next = np.where(restart, 1.0, (1 + np.sqrt(1 + 4 * k * k)) / 2)
        mom = np.where(restart, 0.0, (k - 1) / k_next)
        z = u + mom[:, None] * (u - u_prev)
        iters = np.where(done, iters, it)
        done |= step <= tol * np.maximum(np.abs(u).max(axis=1), 1e-300)
        u_prev, k = u, k_next
        if done.all():
            break
    w = np.where(live, ne.weights(u), 0.0)
    if not np.isfinite(w).all():
        raise CompactionError("NNLS produced non-finite weights")
    return WeightFit(w, iters, done)


def _perron_bound(G: np.ndarray, steps: int = 5) -> np.ndarray:
    """Upper bound on the largest eigenvalue of each non-negative G (Collatz-Wielandt)."""
    x = np.ones(G.shape[:2], dtype=G.dtype)
    bound = np.full(G.shape[0], np.inf)
    for _ in range(steps):
        Gx = _matvec(G, x)
        ratio = np.divide(Gx, x, out=np.zeros_like(Gx), where=x > 0)
        bound = np.minimum(bound, ratio.max(axis=1))
        x = Gx / np.maximum(Gx.max(axis=1, keepdims=True), 1e-300) + 1e-12
    return bound.astype(np.float64)


def _matvec(G: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``G x`` per head, [H, t, t] x [H, t] -> [H, t] float64.

    numpy's own loop, not a stacked BLAS gemv: on a busy machine a multi-threaded BLAS
    call per tiny product spends far more time waking threads than computing (measured
    40x slower at t = 800 with two cores shared).
    """
    return np.einsum("hij,hj->hi", G, x.astype(G.dtype, copy=False)).astype(np.float64)


def weights_to_beta(w: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``beta = log w`` in kept slots, ``-inf`` elsewhere (padding)."""
    with np.errstate(divide="ignore"):
        return np.where(mask, np.log(np.where(mask, w, 1.0)), -np.inf)
