"""One compaction's state, handed from stage to stage (:mod:`pyllamaam.pipeline.run`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .. import kvsplit
from ..compact.result import CompactedLayer
from ..kv import KVState
from ..progress import Progress
from ..report import CompactionReport
from .plan import Plan

if TYPE_CHECKING:
    from ..host import Host


@dataclass
class Cut:
    """Where the cells go: the user's split, the split fitted, the cells kept (``t``, without
    sinks and ``keep_last``), how many of them are kept exact (``extra``), and which: the user's
    span indices kept exact in every head (``exact``: the chunks chosen by option ``spans``;
    None: the plain recent window)."""

    user: kvsplit.Split
    split: kvsplit.Split
    t: int
    extra: int
    exact: np.ndarray | None
    evict: dict[int, CompactedLayer] | None = None  # a selection kept as it is (nothing to fit)


@dataclass
class Compaction:
    """Everything one :func:`~pyllamaam.pipeline.compact` call knows, stage by stage: what it was
    asked (``plan``, ``sizes``), the cache as it was (``blob``, ``n_cells0``: the rollback copy;
    ``kv``: its arrays), where the cells go (``cut``), the reference queries, the fits, and the
    report it returns."""

    session: Host
    plan: Plan
    sizes: tuple  # keep_first, keep_last, ratio, target_cells
    rep: CompactionReport
    tell: Progress
    verify: bool = True
    blob: bytes = b""
    n_cells0: int = 0
    kv: KVState | None = None
    cut: Cut | None = None
    # the full cache's logits on the probes the gates read again after the write (verify.py)
    probes: tuple = ()
    probe_seconds: float = 0.0
    span: tuple[int, int] = (0, 0)  # first and last position of the span the queries cover
    candidates: np.ndarray | None = None  # the units the repeat pass reads (span_score "cache+repeat")
    Q: dict[int, np.ndarray] = field(default_factory=dict)  # reference queries per layer
    fitted: dict[int, CompactedLayer] = field(default_factory=dict)
    held_q: dict[int, np.ndarray] = field(default_factory=dict)  # held-out queries left for verify
    written: bytes | None = None  # the state as written, where it was read back
