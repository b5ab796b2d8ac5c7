"""``omp``: greedy mass pursuit (orthogonal matching pursuit on the mass equation).

With ``Phi_j = exp(scale * Q k_j - m)`` (the column of key j) and the mass target y,
repeatedly add the ``keys_per_step`` keys whose normalized columns correlate best with
the residual ``y - Phi_S w``. Between NNLS refits (every ``refit_every`` steps) the
residual is updated by one matching-pursuit step per new key. Slower than the
``attn-*`` scores (one n x T block per head is kept in memory), usually better.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..beta import fit_weights
from .base import SelectionInput, Selector, check_positive_int, rank_by_score, register

# exp() argument cap: a key whose raw logit exceeds the shifted row max by this much
# (possible only under a very negative prior bias) would overflow float32.
_EXP_CAP = 80.0


@register
@dataclass(frozen=True)
class OMP(Selector):
    """Greedy mass pursuit.

    Parameters
    ----------
    keys_per_step : int
        Keys added per greedy step, default 4.
    refit_every : int
        Steps between NNLS refits of the selected weights, default 4.
    """

    name = "omp"
    scores = ("rms",)
    keys_per_step: int = 4
    refit_every: int = 4

    def __post_init__(self) -> None:
        check_positive_int("omp", "keys_per_step", self.keys_per_step)
        check_positive_int("omp", "refit_every", self.refit_every)

    def rank(self, inp: SelectionInput) -> np.ndarray:
        base = rank_by_score(inp.stats.score_rms, inp.valid)
        out = np.empty_like(base)
        for h in range(base.shape[0]):
            picked = self._pursue(inp, h)
            rest = base[h][~np.isin(base[h], picked)]
            out[h] = np.concatenate([picked, rest])
        return out

    def _pursue(self, inp: SelectionInput, h: int) -> np.ndarray:
        t = int(inp.t[h])
        y = inp.stats.mass[h]
        L = np.matmul(inp.Q[h], inp.K[h].T)  # [n, T] float32
        L *= np.float32(inp.scale)
        L -= inp.stats.shift[h][:, None].astype(np.float32)
        P = np.exp(np.minimum(L, _EXP_CAP), out=L)
        P[:, ~inp.valid[h]] = 0.0
        sq = np.einsum("nt,nt->t", P, P, dtype=np.float64)
        norms = np.sqrt(sq)
        avail = inp.valid[h] & (norms > 0)
        picked: list[int] = []
        r = y.copy()
        step = 0
        while len(picked) < t and avail.any():
            corr = (r.astype(np.float32) @ P) / np.where(avail, norms, 1.0)
            corr[~avail] = -np.inf
            k = min(self.keys_per_step, t - len(picked), int(avail.sum()))
            new = np.argpartition(-corr, k - 1)[:k]
            new = new[np.argsort(-corr[new], kind="stable")]
            new = new[corr[new] > 0]
            if new.size == 0:  # nothing left explains residual mass
                break
            picked.extend(int(j) for j in new)
            avail[new] = False
            step += 1
            if step % self.refit_every == 0:
                r = self._refit(P, y, picked)
            else:
                for j in new:
                    c = max(0.0, float(P[:, j] @ r) / sq[j])
                    r -= c * P[:, j]
        return np.asarray(picked, dtype=np.int64)

    @staticmethod
    def _refit(P: np.ndarray, y: np.ndarray, picked: list[int]) -> np.ndarray:
        Phi = P[:, picked].astype(np.float64)[None]
        w = fit_weights(Phi, y[None], np.ones((1, len(picked)), dtype=bool)).w[0]
        return y - Phi[0] @ w
