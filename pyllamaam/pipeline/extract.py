"""Stage 1, extract: the state read once (the rollback copy) and parsed into arrays, and the
cells split into sinks, span and recent window."""

from __future__ import annotations

import time

from .. import kvsplit
from ..kv import KVState
from .plan import Plan
from .state import Compaction, Cut


def run(c: Compaction) -> None:
    clock = time.perf_counter()
    c.tell("extract", 0, 1)
    # one read of the state: the rollback copy, parsed into the arrays, and the scratch passes'
    # and the flash-attention copy's starting state (each read copies the whole cache)
    c.blob, c.n_cells0 = c.session.snapshot(), c.session.n_cells
    c.kv = c.session.get_kv(c.blob)
    c.cut = first_cut(c.kv, c.plan, c.sizes)
    c.rep.seconds["extract"] = time.perf_counter() - clock
    c.tell("extract", 1, 1)


def first_cut(kv: KVState, plan: Plan, sizes: tuple) -> Cut:
    """The split of ``kv``'s cells (the exact chunks of option ``spans`` come later)."""
    keep_first, keep_last, ratio, target_cells = sizes
    pipe = plan.pipe
    user, split, t, extra = kvsplit.splits(kv, keep_first, keep_last, ratio, target_cells, plan.fits, pipe["recent"])
    if plan.fill or plan.shared or pipe["spans"]:
        # the queries and the fit cover the user's span
        split = user
    return Cut(user, split, t, extra, None)
