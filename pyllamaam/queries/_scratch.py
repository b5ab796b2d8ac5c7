"""A scratch continuation: run forward passes after the context, then restore it exactly."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..engine import Session


@contextmanager
def scratch(session: Session) -> Iterator[Session]:
    """Snapshot the session, yield it, restore the snapshot (state blob and bookkeeping).

    Auto-compaction and context-query capture are paused inside: scratch passes are not context.
    """
    blob = session._snapshot()
    n_cells, tokens, last = session._n_cells, list(session._tokens), session._last_logits
    auto, ctxq = session._auto, session._ctx_queries
    session._auto, session._ctx_queries = None, None
    try:
        yield session
    finally:
        session._auto, session._ctx_queries = auto, ctxq
        session._write_blob(blob, n_cells)
        session._tokens, session._last_logits = tokens, last


def room(session: Session) -> int:
    """Cells free for a scratch pass."""
    return session.n_ctx - session.n_cells
