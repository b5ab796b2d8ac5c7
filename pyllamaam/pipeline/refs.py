"""Reference queries captured once for several compactions of the same cache."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ReferenceQueries:
    """Reference queries captured once and reusable by several :func:`compact` calls.

    Made by :func:`reference_queries` (``Session.reference_queries``) for one state of the
    cache and one compactable span; ``compact(queries=ref)`` checks that the cache still has
    the same cells and span (e.g. after ``Session.restore``) and skips the capture pass.
    """

    spec: str
    span: tuple[int, int]  # first and last position of the compactable span
    n_cells: int
    queries: dict[int, np.ndarray]  # {layer: [n_tokens, n_head, head_dim]}
    seconds: float  # what the capture cost

