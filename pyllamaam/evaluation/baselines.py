"""Selection methods that only the continuation grid (:mod:`.grid`) reports.

Importing this module registers them with the library's selector registry
(:func:`pyllamaam.compact.register`), so ``Session.compact(method=...)`` takes their names in a
process that imported it; :mod:`.grid` does. The library's ``compact.select`` does not ship them:
no default, pipeline path, CLI or server option uses them.

- ``attn-mean``: H2O-like accumulated attention (the grid's ``h2o``);
- ``hybrid``: attn-rms and snapkv rankings interleaved (the grid's ``am-op3-hybrid``);
- ``random``: uniformly random keys, the floor every method must beat (the grid's ``random``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..compact.select import SelectionInput, Selector, rank_by_score, register
from ..compact.select.attn_rms import AttnRms
from ..compact.select.snapkv import SnapKV


@register
@dataclass(frozen=True)
class AttnMean(Selector):
    """Top keys by the mean over reference queries of softmax(scale Q K^T + prior)."""

    name = "attn-mean"
    scores = ("mean",)

    def rank(self, inp: SelectionInput) -> np.ndarray:
        return rank_by_score(inp.stats.score_mean, inp.valid)


@register
@dataclass(frozen=True)
class Hybrid(Selector):
    """Interleave the attn-rms and snapkv rankings (each key at its better rank).

    attn-rms keeps the keys that the reference queries need on the whole (recall of any part of
    the context); snapkv keeps the keys that the last queries need, max-pooled into runs (what
    the next tokens read). Taking the two rankings in turn keeps both kinds. With the exact
    recent window of ``"am"`` it matched attn-rms on continuation KL and had the lower ΔNLL on
    two of three texts (SmolLM2, 4K tokens, 10x), but it lost the fact of the iterative-compaction
    test (its snapkv half follows the last queries), so attn-rms stays the selection behind
    ``"am"`` (docs/results/ACCEPTANCE.md, now in the git history).

    Parameters
    ----------
    window, kernel : int
        The snapkv part's observation window and max-pool width.
    """

    name = "hybrid"
    scores = ("rms",)
    window: int = 32
    kernel: int = 7

    def rank(self, inp: SelectionInput) -> np.ndarray:
        a = AttnRms().rank(inp)
        b = SnapKV(window=self.window, kernel=self.kernel).rank(inp)
        return interleave(a, b)


@register
@dataclass(frozen=True)
class Random(Selector):
    """Uniformly random ranking drawn from ``numpy.random.default_rng(seed)``."""

    name = "random"
    fits = False

    def rank(self, inp: SelectionInput) -> np.ndarray:
        rng = np.random.default_rng(inp.seed)
        return rank_by_score(rng.random(inp.valid.shape), inp.valid)


def interleave(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Merge two rankings ``[H, T]`` (permutations per row): keys ordered by their better rank,
    ties by the worse one, then by position. Invalid keys stay last when both rankings put them
    last."""
    H, T = a.shape
    rows = np.arange(H)[:, None]
    ra, rb = np.empty_like(a), np.empty_like(b)
    ra[rows, a] = np.arange(T)
    rb[rows, b] = np.arange(T)
    best, worst = np.minimum(ra, rb), np.maximum(ra, rb)
    return np.lexsort((np.broadcast_to(np.arange(T), (H, T)), worst, best), axis=1).astype(np.int64)
