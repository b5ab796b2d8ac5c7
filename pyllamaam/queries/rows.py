"""Reference queries as fitting rows: grouped by KV head, split into fitted and held-out rows."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..engine import Session


def split_queries(
    Q,
    heldout: float,
    max_rows: int,
    session: Session,
    max_held: int | None = None,
    mix: str = "pooled",
):
    """Per layer: (fit, held-out) queries grouped by KV head, [H, n * r, d] each.

    Every ``1/heldout``-th token of each source is held out. ``mix="pooled"`` samples the
    fitted and held-out tokens evenly over all sources, so each source weighs as many tokens
    as it captured; ``"balanced"`` gives every source of a mixture an equal share of the rows
    (a short source's rows repeat: integer weights), e.g. 144 self-study tokens against a
    4K-token repeat pass."""
    n_tok = len(next(iter(Q.values())))
    if n_tok < 2:
        raise ConfigError(f"only {n_tok} reference query tokens: too few to fit and verify")
    if mix not in ("pooled", "balanced"):
        raise ConfigError(f"mix must be 'pooled' or 'balanced', not {mix!r}")
    parts = [p for p in getattr(Q, "parts", [n_tok]) if p > 0]
    if sum(parts) != n_tok or mix == "pooled":
        parts = [n_tok]
    step = max(2, round(1 / heldout)) if heldout > 0 else n_tok + 1
    bounds = np.cumsum([0, *parts])
    local = np.concatenate([np.arange(n) for n in parts])
    held = local % step == step - 1
    fit_tok = [np.flatnonzero(~held[a:b]) + a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    held_tok = [np.flatnonzero(held[a:b]) + a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def pick(toks: list[np.ndarray], cap: int) -> np.ndarray:
        if len(toks) == 1:
            t = toks[0]
            return (
                t[np.linspace(0, len(t) - 1, min(cap, len(t))).round().astype(int)] if len(t) else t
            )
        share = max(1, cap // len(toks))  # equal rows per source, short sources repeated
        out = [t[np.linspace(0, len(t) - 1, share).round().astype(int)] for t in toks if len(t)]
        return np.concatenate(out) if out else toks[0]

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
