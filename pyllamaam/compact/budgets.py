"""Nonuniform head budgets: proportions per (layer, KV head) -> integer keys per head.

Proportions are stored as JSON ``{"L{layer}H{kvhead}": p}`` summing to 1. In llama.cpp a
cell holds K/V of every layer and head, so a compacted prefix needs ``max t`` cells and
heads with fewer keys pad with beta = -inf: a plan reports both keys kept and cells used,
and a per-head cap keeps the cell count (the memory) down.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError

_KEY = re.compile(r"^L(\d+)H(\d+)$")


@dataclass(frozen=True)
class BudgetPlan:
    """Integer budgets of every (layer, KV head).

    Attributes
    ----------
    budgets : ndarray, int64, [L, H]
    span : int
        Tokens T of the compacted span (per head).
    """

    budgets: np.ndarray
    span: int

    @property
    def keys_kept(self) -> int:
        """Total keys kept over all layers and heads."""
        return int(self.budgets.sum())

    @property
    def cells_used(self) -> int:
        """Cells the compacted span occupies: the largest budget."""
        return int(self.budgets.max())

    @property
    def key_ratio(self) -> float:
        """Compaction ratio in keys: ``L * H * T / keys_kept``."""
        return self.budgets.size * self.span / max(1, self.keys_kept)

    @property
    def cell_ratio(self) -> float:
        """Compaction ratio in cells (memory): ``T / cells_used``."""
        return self.span / max(1, self.cells_used)


def uniform_proportions(n_layer: int, n_head_kv: int) -> np.ndarray:
    """Equal proportions, [L, H], summing to 1."""
    return np.full((n_layer, n_head_kv), 1.0 / (n_layer * n_head_kv))


def proportions_array(props: Mapping[str, float], n_layer: int, n_head_kv: int) -> np.ndarray:
    """Proportions as an [L, H] array; every head must be present, sum must be 1."""
    out = np.full((n_layer, n_head_kv), np.nan)
    for key, p in props.items():
        m = _KEY.match(key)
        if m is None:
            raise ConfigError(f"bad head key {key!r}; expected 'L<layer>H<kvhead>'")
        layer, head = int(m[1]), int(m[2])
        if layer >= n_layer or head >= n_head_kv:
            raise ConfigError(f"head key {key!r} outside {n_layer} layers x {n_head_kv} heads")
        out[layer, head] = _proportion(key, p)
    if np.isnan(out).any():
        missing = [f"L{i}H{j}" for i, j in zip(*np.nonzero(np.isnan(out)), strict=True)]
        raise ConfigError(f"head budgets miss {missing[:5]}{'...' if len(missing) > 5 else ''}")
    if not math.isclose(out.sum(), 1.0, abs_tol=1e-3):
        raise ConfigError(f"head proportions must sum to 1, got {out.sum():.6f}")
    return out / out.sum()


def load_head_budgets(path: str | Path) -> dict[str, float]:
    """Read ``{"L{l}H{h}": p}`` from a JSON file (keys and values checked)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read head budgets {path}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"head budgets {path}: expected a JSON object")
    for key, p in data.items():
        if _KEY.match(key) is None:
            raise ConfigError(f"bad head key {key!r} in {path}")
        _proportion(key, p)
    return {k: float(v) for k, v in data.items()}


def save_head_budgets(path: str | Path, proportions: np.ndarray) -> None:
    """Write an [L, H] array of proportions as ``{"L{l}H{h}": p}`` JSON."""
    p = np.asarray(proportions, dtype=np.float64)
    if p.ndim != 2 or not np.isfinite(p).all() or (p < 0).any() or p.sum() <= 0:
        raise ConfigError("proportions must be a finite non-negative [L, H] array")
    p = p / p.sum()
    data = {f"L{i}H{j}": float(p[i, j]) for i in range(p.shape[0]) for j in range(p.shape[1])}
    Path(path).write_text(json.dumps(data, indent=1) + "\n")


def allocate_budgets(
    proportions: np.ndarray,
    span: int,
    ratio: float,
    *,
    cap: int | None = None,
    min_keys: int = 1,
) -> BudgetPlan:
    """Integer budgets proportional to ``proportions`` summing exactly to the target.

    The target is ``round(L * H * span / ratio)`` keys. Water-filling: heads that
    would exceed ``cap`` get ``cap`` and the rest is shared among the others by
    proportion; then largest remainders round to integers without breaking the cap.

    Parameters
    ----------
    proportions : ndarray, [L, H]
    span : int
        Tokens T per head in the compacted span.
    ratio : float
        Compaction ratio in keys (> 0).
    cap : int or None
        Largest budget of one head (default ``span``); sets the cells used.
    min_keys : int
        Smallest budget of one head.

    Returns
    -------
    BudgetPlan

    Raises
    ------
    ConfigError
        Bad arguments, or a target that ``min_keys`` and ``cap`` cannot meet.
    """
    p = np.asarray(proportions, dtype=np.float64)
    if p.ndim != 2 or p.size == 0 or not np.isfinite(p).all() or (p < 0).any() or p.sum() <= 0:
        raise ConfigError("proportions must be a finite non-negative [L, H] array")
    if not (isinstance(span, (int, np.integer)) and span >= 1):
        raise ConfigError(f"span must be an integer >= 1, got {span!r}")
    if not (math.isfinite(ratio) and ratio > 0):
        raise ConfigError(f"ratio must be finite and > 0, got {ratio!r}")
    cap = int(span) if cap is None else int(cap)
    if not 0 <= min_keys <= cap <= span:
        raise ConfigError(f"need 0 <= min_keys ({min_keys}) <= cap ({cap}) <= span ({span})")
    total = round(p.size * span / ratio)
    if not p.size * min_keys <= total <= p.size * cap:
        raise ConfigError(
            f"target {total} keys does not fit {p.size} heads within [{min_keys}, {cap}] each"
        )
    x = _water_fill(p.ravel() / p.sum(), float(total), float(min_keys), float(cap))
    b = np.floor(x + 1e-9).astype(np.int64)
    short = total - int(b.sum())
    if short >= 0:  # largest remainders first
        room = np.flatnonzero(b < cap)
        b[room[np.argsort(-(x[room] - b[room]), kind="stable")][:short]] += 1
    else:  # rounding overshoot: smallest remainders give back
        room = np.flatnonzero(b > min_keys)
        b[room[np.argsort(x[room] - b[room], kind="stable")][:-short]] -= 1
    return BudgetPlan(b.reshape(p.shape), int(span))


def _water_fill(p: np.ndarray, total: float, lo: float, hi: float) -> np.ndarray:
    """Continuous ``clip(lam * p, lo, hi)`` summing to ``total`` (bisection on lam)."""
    a, b = 0.0, 1.0
    while np.clip(b * p, lo, hi).sum() < total:
        b *= 2.0
        if b > 1e300:  # only reachable with total = size * hi
            return np.full(p.shape, hi)
    for _ in range(200):
        mid = (a + b) / 2
        a, b = (mid, b) if np.clip(mid * p, lo, hi).sum() < total else (a, mid)
    return np.clip(b * p, lo, hi)


def _proportion(key: str, p: object) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or p < 0:
        raise ConfigError(f"proportion of {key} must be a finite number >= 0, got {p!r}")
    return float(p)
