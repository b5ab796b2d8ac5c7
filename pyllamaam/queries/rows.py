"""Reference queries as fitting rows: grouped by KV head, split into fitted and held-out rows."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..host import Host


def split_queries(
    Q,
    heldout: float,
    max_rows: int,
    session: Host,
    max_held: int | None = None,
):
    """Per layer: (fit, held-out) queries grouped by KV head, [H, n * r, d] each.

    Every ``1/heldout``-th token is held out; the fitted and held-out tokens are sampled evenly
    over all of them, so each source of a mixture weighs as many tokens as it captured."""
    n_tok = len(next(iter(Q.values())))
    if n_tok < 2:
        raise ConfigError(f"only {n_tok} reference query tokens: too few to fit and verify")
    step = max(2, round(1 / heldout)) if heldout > 0 else n_tok + 1
    held = np.arange(n_tok) % step == step - 1
    fit_tok, held_tok = np.flatnonzero(~held), np.flatnonzero(held)

    def pick(t: np.ndarray, cap: int) -> np.ndarray:
        return t[np.linspace(0, len(t) - 1, min(cap, len(t))).round().astype(int)] if len(t) else t

    fit, out = {}, {}
    for il, q in Q.items():
        H, r = session.layers[il]["n_head_kv"], q.shape[1] // session.layers[il]["n_head_kv"]
        cap = max(1, max_rows // r)
        hcap = cap if max_held is None else max(2, max_held // r)
        f, h = pick(fit_tok, cap), pick(held_tok, hcap)
        fit[il], out[il] = group_by_kv_head(q[f], H), group_by_kv_head(q[h], H)
    return fit, out


def group_by_kv_head(q: np.ndarray, H: int) -> np.ndarray:
    """[n, n_head, d] -> [H, n * r, d]: query head j is in KV head j // r (rows token-major)."""
    n, n_head, d = q.shape
    r = n_head // H
    return np.ascontiguousarray(q.reshape(n, H, r, d).transpose(1, 0, 2, 3).reshape(H, n * r, d))
