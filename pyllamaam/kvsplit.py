"""The compactable cache split into its parts, and put back together after a fit.

Cells of the compactable cache, in position order: the first ``keep_first`` (attention sinks)
and the last ``keep_last`` (the recent window, which holds the cell decoding continues after)
stay verbatim; the span between them is what a compaction replaces. Fitted methods move part of
the budget to an exact recent window (option ``recent``): the span they fit is then shorter than
the user's (:func:`splits`). Per layer the span's arrays are ``[H, T, d]`` (the axis order of
:mod:`pyllamaam.compact`); a :class:`~pyllamaam.kv.KVState` is ``[n_cells, H, d]``.

The compacted cells take evenly spaced distinct positions inside the span (:func:`assemble`):
positions only decide masking of later queries (all later), and keys keep their own RoPE phase.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .compact.result import CompactedLayer
from .errors import CompactionError, ConfigError
from .kv import KVState


@dataclass
class Split:
    sinks: np.ndarray  # cell indices into the KVState, position order
    span: np.ndarray
    recent: np.ndarray


def split_cells(kv: KVState, keep_first: int, keep_last: int) -> Split:
    order = np.argsort(kv.positions, kind="stable")
    n = len(order)
    if n <= keep_first + keep_last + 1:
        raise ConfigError(
            f"nothing to compact: {n} cells, keep_first={keep_first} and keep_last={keep_last} "
            "keep them all"
        )
    return Split(order[:keep_first], order[keep_first : n - keep_last], order[n - keep_last :])


def splits(kv, keep_first, keep_last, ratio, target_cells, fits, recent):
    """(the user's split, the split fitted, cells fitted + moved to the window, cells moved)."""
    user = split_cells(kv, keep_first, keep_last)
    t = span_target(len(user.span), ratio, target_cells, keep_first, keep_last)
    extra = recent_extra(t, keep_last, recent) if fits else 0
    return user, (split_cells(kv, keep_first, keep_last + extra) if extra else user), t, extra


def span_of(kv: KVState, split: Split) -> tuple[int, int]:
    pos = kv.positions[split.span]
    return int(pos[0]), int(pos[-1])


def span_target(T: int, ratio, target_cells, keep_first: int, keep_last: int) -> int:
    t = round(T / ratio) if ratio is not None else int(target_cells) - keep_first - keep_last
    if not 1 <= t < T:
        raise ConfigError(
            f"the span has {T} cells; a target of {t} compacted cells is out of range [1, {T})"
        )
    return t


def recent_extra(t: int, keep_last: int, share: float) -> int:
    """Cells moved from the fitted budget ``t`` to the exact recent window, so that the window
    holds ``share`` of ``t + keep_last`` (never fewer than keep_last; the fit keeps >= 1 cell)."""
    if not (isinstance(share, (int, float)) and 0 <= share < 1):
        raise ConfigError(f"recent must be a number in [0, 1), got {share!r}")
    return int(min(max(0, round(share * (t + keep_last)) - keep_last), t - 1))


def span_arrays(kv: KVState, il: int, split: Split) -> tuple[np.ndarray, np.ndarray]:
    K = kv.keys[il][split.span].transpose(1, 0, 2)
    V = kv.values[il][split.span].transpose(1, 0, 2)
    return np.ascontiguousarray(K), np.ascontiguousarray(V)


def span_prior(kv: KVState, il: int, split: Split) -> np.ndarray | None:
    b = kv.bias[il][split.span].T
    return np.ascontiguousarray(b) if np.any(b != 0) else None


def partial(kv: KVState, split: Split, fitted: dict[int, CompactedLayer]) -> KVState:
    """Every cell kept; in fitted layers the span's first slots hold the fit, the rest bias -inf.

    Positions only decide masking and every later query sees the whole span, so the fitted
    slots can sit in any span cells while the layers not yet fitted keep all of theirs.
    """
    out = kv.subset(np.arange(len(kv.positions)))
    for il, res in fitted.items():
        K, _ = span_arrays(kv, il, split)
        t = res.indices.shape[1]
        slots, rest = split.span[:t], split.span[t:]
        out.keys[il][slots] = res.keys(K).transpose(1, 0, 2)
        out.values[il][slots] = res.values.transpose(1, 0, 2)
        out.bias[il][slots] = res.beta.T
        out.bias[il][rest] = -np.inf
    return out


def assemble(kv: KVState, split: Split, fitted: dict[int, CompactedLayer]) -> KVState:
    """Sinks + compacted slots + recent window as one KVState (padding: bias -inf, zeros)."""
    t = max(r.indices.shape[1] for r in fitted.values())
    span_pos = kv.positions[split.span]
    slot_pos = (
        span_pos[np.linspace(0, len(span_pos) - 1, t).round().astype(int)]
        if t > 1
        else span_pos[:1]
    )
    out = kv.subset(np.concatenate([split.sinks, split.recent]))
    ns = len(split.sinks)
    out.positions = np.concatenate(
        [kv.positions[split.sinks], slot_pos, kv.positions[split.recent]]
    ).astype(np.int32)
    for il, res in fitted.items():
        K, _ = span_arrays(kv, il, split)
        H, tl = res.indices.shape
        C1 = np.zeros((t, H, K.shape[2]), np.float32)
        C2 = np.zeros((t, H, res.values.shape[2]), np.float32)
        beta = np.full((t, H), -np.inf, np.float32)
        C1[:tl] = res.keys(K).transpose(1, 0, 2)
        C2[:tl] = res.values.transpose(1, 0, 2)
        beta[:tl] = res.beta.T
        if np.isnan(beta).any() or not np.isfinite(C2).all():
            raise CompactionError(f"layer {il}: non-finite fitted values or NaN bias")
        for name, mid in (("keys", C1), ("values", C2), ("bias", beta)):
            arr = getattr(out, name)[il]
            getattr(out, name)[il] = np.concatenate([arr[:ns], mid, arr[ns:]])
    return out
