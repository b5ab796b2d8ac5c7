"""compact(): extract -> queries -> select -> fit -> write -> verify, with the rollback around them.

One module per stage, each with a ``run(c)`` on the :class:`~.state.Compaction` the stages hand
on; :func:`~.run.compact` lists them (run.py). The math lives in :mod:`pyllamaam.compact`, the
query sources in :mod:`pyllamaam.queries`, the split of the cache into sinks, span and recent
window in :mod:`pyllamaam.kvsplit`; a session is reached through :class:`pyllamaam.host.Host`
(DESIGN.md section 2).

    plan.py      the arguments resolved and checked before the cache is touched
    extract.py   the rollback copy, its arrays, the split
    queries.py   the reference queries (or those captured in advance: reference_queries)
    select.py    whole units chosen for every head and layer
    fit.py       per head: keys, biases, values; the guards
    write.py     the compacted cells into the live session
    verify.py    the gates on the cache as written
    auto.py      automatic compaction
"""

from __future__ import annotations

from .auto import AUTO_SPAN_SCORE, auto_prefill, auto_settings
from .options import (
    AM_SELECTOR,
    BUDGETS_DIR,
    ON_POLICY_GROUPS,
    PIPELINE_DEFAULTS,
    QUERY_OPTIONS,
    SHARED_EVICTIONS,
    SHIPPED_BUDGETS_BY_DEFAULT,
    SPAN_SCORES,
)
from .plan import default_queries, shipped_budgets
from .queries import reference_queries
from .refs import ReferenceQueries
from .run import compact
from .verify import mean_kl

__all__ = [
    "AM_SELECTOR", "AUTO_SPAN_SCORE", "BUDGETS_DIR", "ON_POLICY_GROUPS", "PIPELINE_DEFAULTS", "QUERY_OPTIONS",
    "SHARED_EVICTIONS", "SHIPPED_BUDGETS_BY_DEFAULT", "SPAN_SCORES", "ReferenceQueries", "auto_prefill",
    "auto_settings", "compact", "default_queries", "mean_kl", "reference_queries", "shipped_budgets",
]
