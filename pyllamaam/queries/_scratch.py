"""A scratch continuation: run forward passes after the context, then restore it exactly."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ..errors import PyllamaamError

if TYPE_CHECKING:
    from ..host import Host
    from ..kv import KVState

log = logging.getLogger(__name__)


@contextmanager
def flash_twin(session: Host, n_new: int, kv: KVState | None = None) -> Iterator[Host | None]:
    """A temporary copy of ``session`` that uses flash attention, with room for ``n_new`` more
    tokens, for a long scratch pass (:meth:`Session.twin <pyllamaam.engine.Session.twin>`); the
    session itself is not touched. ``kv``: the session's ``get_kv()``, where the caller holds it.

    A scratch pass attends from every new token to the whole context, and llama.cpp's CPU
    attention without flash costs most of it: on SmolLM2 a pass over half of a 4K-token context
    ran in 0.65 of the time with flash attention. Yields None where no copy serves (the session
    uses flash attention already) or where none can be made (its memory is neither a plain KV
    cache nor iSWA, no flash attention here, no memory for a copy); the caller then runs on the
    session in :meth:`Session.scratch <pyllamaam.engine.Session.scratch>`.
    """
    if session.flash_attn:
        yield None
        return
    try:
        twin = session.twin(n_new, flash_attn=True, kv=kv)
    except PyllamaamError as err:
        log.info("scratch pass on the session itself: no flash-attention copy (%s)", err)
        yield None
        return
    try:
        yield twin
    finally:
        twin.close()


def room(session: Host) -> int:
    """Cells free for a scratch pass."""
    return session.n_ctx - session.n_cells
