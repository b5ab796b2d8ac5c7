"""``"task"``: queries of the upcoming task prompt (Latent Briefing's query source)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError
from ._scratch import room

if TYPE_CHECKING:
    from ..host import Host


def task_queries(
    session: Host, span: tuple[int, int], *, task: str | None = None, snapshot: bytes | None = None, **_: Any
) -> dict[int, np.ndarray]:
    """Queries of ``task`` read after the context, ``{layer: [n, n_head, head_dim]}``; ``snapshot``:
    the session's current state, where the caller holds it."""
    if not task:
        raise ConfigError("queries='task' needs task='the prompt that will follow'")
    toks = session.model.tokenize(task)
    if len(toks) > room(session):
        raise ConfigError(f"the task prompt ({len(toks)} tokens) does not fit in {room(session)} free cells")
    with session.scratch(snapshot):
        return session.capture_queries(toks)
