"""compact(): the stages in order, with the rollback around them."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..compact import arrays
from ..errors import ConfigError, StateError
from ..progress import Progress, ProgressCallback
from ..report import CompactionReport
from . import extract, fit, select, write
from . import queries as queries_stage
from . import verify as verify_stage
from .plan import make_plan, uniform, writes_bias
from .refs import ReferenceQueries
from .state import Compaction

if TYPE_CHECKING:
    from ..host import Host

log = logging.getLogger("pyllamaam.pipeline")


def compact(
    session: Host,
    ratio: float | None = None,
    target_cells: int | None = None,
    method: str = "am",
    queries: str | ReferenceQueries | None = None,
    keep_first: int = 4,
    keep_last: int = 32,
    budgets: Mapping[str, float] | str | Path | None = None,
    task: str | None = None,
    verify: bool = True,
    progress: ProgressCallback | None = None,
    **options: Any,
) -> CompactionReport:
    """Compact ``session``'s cache in place; see :meth:`Session.compact` and :mod:`pyllamaam.progress`."""
    plan = make_plan(session, ratio, target_cells, method, queries, keep_first, keep_last, budgets, task, options)
    if not getattr(session, "bias_storage", True) and writes_bias(plan):
        try:  # the fit's beta needs a context that stores it; the cells move there first
            session.retype(bias_storage=True)
        except StateError as err:  # the session is unchanged
            rep = _report(session, plan, method)
            rep.fell_back, rep.cells_after, rep.reason = True, session.n_cells, str(err)
            rep.bytes_after = rep.bytes_before
            log.warning("compaction fell back, cache unchanged: %s", err)
            return rep
    c = Compaction(session, plan, (keep_first, keep_last, ratio, target_cells), _report(session, plan, method),
                   Progress(progress), verify)
    backend = arrays.resolve(plan.pipe["arrays"], getattr(session.model, "n_gpu_layers", 0) > 0)
    extract.run(c)  # the rollback copy, its arrays, the split
    verify_stage.read(c)  # the full cache's logits on the probes the gates read again
    c.rep.arrays = backend
    try:
        with arrays.use(backend):
            queries_stage.run(c)
            select.run(c)
            fit.run(c)
            write.run(c)
            verify_stage.run(c)
    except ConfigError:
        session.write_state(c.blob, c.n_cells0)
        raise
    except BaseException as err:  # crash-safe: whatever happened, the original cache returns
        session.write_state(c.blob, c.n_cells0)
        if not isinstance(err, Exception):
            raise
        c.rep.fell_back, c.rep.cells_after, c.rep.verbatim = True, c.n_cells0, []
        c.rep.reason = str(err) if isinstance(err, verify_stage.GateFailed) else f"{type(err).__name__}: {err}"
        log.warning("compaction fell back, cache restored: %s", c.rep.reason)
    c.rep.bytes_after = session.kv_bytes()
    return c.rep


def _report(session: Host, plan: Any, method: str) -> CompactionReport:
    rep = CompactionReport(
        method=plan.shared or method, queries=plan.qspec, layers=plan.layers, cells_before=session.n_cells
    )
    rep.on_policy = plan.pipe["on_policy"]
    rep.budgets = "uniform" if uniform(plan.budgets) else (
        str(plan.budgets) if isinstance(plan.budgets, (str, Path)) else "given"
    )
    rep.bytes_before, rep.bytes_f16 = session.kv_bytes(), session.kv_bytes_f16()
    return rep
