"""A scratch continuation: run forward passes after the context, then restore it exactly."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ..errors import PyllamaamError
from ..retype import convert_section, swa_heads

if TYPE_CHECKING:
    from ..host import Host
    from ..kv import KVState

log = logging.getLogger(__name__)


@contextmanager
def scratch(session: Host, snapshot: bytes | None = None) -> Iterator[Host]:
    """Snapshot the session, yield it, restore the snapshot (state blob and bookkeeping).

    ``snapshot``: the session's current state, where the caller holds it (each snapshot is a
    copy of the whole cache: 0.3 s at 4K tokens on SmolLM2). Auto-compaction and context-query
    capture are paused inside: scratch passes are not context.
    """
    blob = session._snapshot() if snapshot is None else snapshot
    n_cells, tokens, last = session._n_cells, list(session._tokens), session._last_logits
    auto, ctxq = session._auto, session._ctx_queries
    session._auto, session._ctx_queries = None, None
    try:
        yield session
    finally:
        session._auto, session._ctx_queries = auto, ctxq
        # the blob is this context's own state: no second copy is taken to roll back to
        session._write_blob(blob, n_cells, old=blob)
        session._tokens, session._last_logits = tokens, last


@contextmanager
def flash_twin(session: Host, n_new: int, kv: KVState | None = None) -> Iterator[Host | None]:
    """A temporary copy of ``session`` that uses flash attention, with room for ``n_new`` more
    tokens, for a long scratch pass; the session itself is not touched. ``kv``: the session's
    :meth:`~pyllamaam.engine.Session.get_kv`, where the caller holds it.

    A scratch pass attends from every new token to the whole context, and llama.cpp's CPU
    attention without flash costs most of it: on SmolLM2 a pass over half of a 4K-token context
    ran in 0.65 of the time with flash attention. An iSWA session's copy receives its
    sliding-window cache too, in the V layout flash attention reads. Yields None where no copy
    serves (the session uses flash attention already, or its memory is neither a plain KV cache
    nor iSWA) or where one cannot be made; the caller then runs on the session in :func:`scratch`.
    """
    layout = session.memory_layout
    plain = layout == "kv" and len(session.compact_layers()) == len(session.layers)
    if session.flash_attn or not (plain or layout == "iswa"):
        yield None
        return
    twin = None
    try:
        kv = session.get_kv() if kv is None else kv
        if layout == "iswa":  # the sliding-window section, V untransposed as flash attention keeps it
            types = (session.kv_type_k, session.kv_type_v)
            kv = dataclasses.replace(kv, tail=convert_section(kv.tail, swa_heads(session.layers), types, types,
                                                              v_trans=False))
        twin = session.model.session(
            n_ctx=session.n_cells + n_new + 1,
            flash_attn=True,
            n_threads=session.n_threads,
            kv_type_k=session.kv_type_k,
            kv_type_v=session.kv_type_v,
            n_batch=session.n_batch,
        )
        twin._write_kv(kv)  # not kept through the pass
        twin._tokens = list(session._tokens)
    except PyllamaamError as err:  # no flash attention here, or no memory for a copy
        log.info("scratch pass on the session itself: no flash-attention copy (%s)", err)
        if twin is not None:
            twin.close()
        yield None
        return
    try:
        yield twin
    finally:
        twin.close()


def room(session: Host) -> int:
    """Cells free for a scratch pass."""
    return session.n_ctx - session.n_cells
