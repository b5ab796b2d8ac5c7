"""Per-head guards on a fitted layer, chosen on held-out queries (DESIGN.md section 8).

A least-squares fit of C2 can overfit the reference queries. For every (layer, KV head) the
fitted result competes with safer variants on queries the fit never saw:

- ``"fit"``: the Attention Matching result as fitted (beta, C2);
- ``"shrink"``: the fitted beta with values shrunk halfway toward the kept keys' original values;
- ``"original"``: the fitted beta with the original values (lambda = 1);
- ``"evict"``: the kept keys with their original values and no fitted bias (plain eviction).

The criterion is the relative error of the span's *unnormalized* attention sum
``sum_k exp(logit_ik) v_k`` (output and mass together), since the span shares its softmax with
the cells around it; a variant wins only where it beats the fit by a margin.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .compact._attention import attend
from .compact.result import CompactedLayer

#: Variants in order of preference; the first is the fit itself.
VARIANTS = ("fit", "shrink", "original", "evict")


@dataclass(frozen=True)
class GuardResult:
    """The guarded layer and, per KV head, the variant kept and the errors of each variant."""

    layer: CompactedLayer
    choice: np.ndarray  # [H] index into VARIANTS
    errors: np.ndarray  # [len(VARIANTS), H] on the choice rows


def span_sum_errors(out0: np.ndarray, logm0: np.ndarray, out: np.ndarray, logm: np.ndarray) -> np.ndarray:
    """Per head: ||m O - m0 O0|| / ||m0 O0|| over rows, with masses relative to the original."""
    w = np.exp(np.clip(logm - logm0, -700, 700))[:, :, None]
    num = np.linalg.norm((w * out - out0).reshape(len(out0), -1), axis=1)
    return num / np.maximum(np.linalg.norm(out0.reshape(len(out0), -1), axis=1), 1e-300)


def guard_layer(
    K: np.ndarray,
    V: np.ndarray,
    Q: np.ndarray,
    scale: float,
    res: CompactedLayer,
    prior: np.ndarray | None = None,
    *,
    margin: float = 0.02,
) -> GuardResult:
    """Choose, per head, the variant with the smallest held-out error (the fit unless another
    one is better by more than ``margin`` relative).

    Parameters
    ----------
    K, V : ndarray, [H, T, d]
        The original span.
    Q : ndarray, [H, n, d]
        Held-out queries, not used by the fit.
    scale : float
    res : CompactedLayer
        The fitted layer.
    prior : ndarray or None, [H, T]
        The bias the span already carried.
    """
    H = K.shape[0]
    kept = res.kept
    if Q.shape[1] == 0 or not kept.any():
        return GuardResult(res, np.zeros(H, dtype=int), np.zeros((len(VARIANTS), H)))
    # float32: the margin between variants is relative, 2%, far above float32's resolution
    out0, logm0 = attend(K, V, Q, scale, prior, np.float32)
    safe = np.where(kept, res.indices, 0)
    V_orig = np.where(kept[:, :, None], np.take_along_axis(V, safe[:, :, None], axis=1), 0).astype(np.float32)
    base = np.zeros(kept.shape) if prior is None else np.take_along_axis(prior, safe, axis=1)
    beta_evict = np.where(kept, base, -np.inf)
    C1 = res.keys(K)
    cands = [
        (res.beta, res.values),
        (res.beta, (0.5 * (res.values.astype(np.float64) + V_orig)).astype(np.float32)),
        (res.beta, V_orig),
        (beta_evict, V_orig),
    ]
    errs = np.empty((len(cands), H))
    for i, (beta, vals) in enumerate(cands):
        live = kept.any(axis=1)
        out, logm = attend(C1, vals, Q, scale, np.where(live[:, None], beta, 0.0), np.float32)
        errs[i] = span_sum_errors(out0, logm0, out, logm)
    best = np.argmin(errs, axis=0)
    choice = np.where(errs[best, np.arange(H)] < (1 - margin) * errs[0], best, 0)
    if not choice.any():
        return GuardResult(res, choice, errs)
    beta = np.stack([cands[c][0][h] for h, c in enumerate(choice)])
    vals = np.stack([cands[c][1][h] for h, c in enumerate(choice)])
    return GuardResult(replace(res, beta=beta, values=vals), choice, errs)
