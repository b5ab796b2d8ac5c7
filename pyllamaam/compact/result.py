"""Results of the kernel: one head, or every KV head of one layer."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Index of a padding slot (no key; its beta is -inf and its value 0).
PAD = -1


@dataclass(frozen=True)
class CompactedHead:
    """A compacted (layer, KV head).

    Attributes
    ----------
    indices : ndarray, int64, [t]
        Kept keys as indices into the T input keys, ascending; ``PAD`` (-1) marks a
        padding slot at the end.
    beta : ndarray, float64, [t]
        Post-scale logit bias of each slot, exactly as the runtime should apply it;
        ``-inf`` for padding.
    values : ndarray, float32, [t, d]
        C2 (0 for padding).
    """

    indices: np.ndarray
    beta: np.ndarray
    values: np.ndarray

    @property
    def kept(self) -> np.ndarray:
        """Boolean mask [t] of slots holding a key."""
        return self.indices != PAD

    def keys(self, K: np.ndarray) -> np.ndarray:
        """C1 = the kept keys of ``K`` [T, d] as [t, d] (zeros in padding slots)."""
        return np.where(self.kept[:, None], K[np.where(self.kept, self.indices, 0)], 0)


@dataclass(frozen=True)
class CompactedLayer:
    """Every KV head of one layer, padded to a common slot count.

    Attributes
    ----------
    indices : ndarray, int64, [H, t]
    beta : ndarray, float64, [H, t]
    values : ndarray, float32, [H, t, d]
        As in :class:`CompactedHead`, one row per KV head.
    zero_weights : ndarray, int, [H]
        Keys NNLS left at zero weight in the last solve (before the policy applied).
    fallback_heads : tuple of int
        Heads whose fitted values were rejected and replaced by the original values
        (only with ``on_bad_values="original"``).
    timings : dict of str to float
        Seconds spent in each stage: ``scores``, ``select``, ``beta``, ``values``.
    """

    indices: np.ndarray
    beta: np.ndarray
    values: np.ndarray
    zero_weights: np.ndarray
    fallback_heads: tuple[int, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def kept(self) -> np.ndarray:
        """Boolean mask [H, t] of slots holding a key."""
        return self.indices != PAD

    @property
    def keys_kept(self) -> np.ndarray:
        """Keys kept per head, [H]."""
        return self.kept.sum(axis=1)

    def head(self, h: int) -> CompactedHead:
        """The result of KV head ``h``."""
        return CompactedHead(self.indices[h], self.beta[h], self.values[h])

    def keys(self, K: np.ndarray) -> np.ndarray:
        """C1 from ``K`` [H, T, d] as [H, t, d] (zeros in padding slots)."""
        safe = np.where(self.kept, self.indices, 0)
        C1 = np.take_along_axis(K, safe[:, :, None], axis=1)
        return np.where(self.kept[:, :, None], C1, 0)
