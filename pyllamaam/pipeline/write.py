"""Stage 5, write: the compacted cells assembled and written into the live session; the values
read back as the cache holds them, so that verify measures the cache as written."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING

from .. import kvsplit
from ..compact.result import CompactedLayer
from ..kv import KVState
from .state import Compaction

if TYPE_CHECKING:
    from ..host import Host


def run(c: Compaction) -> None:
    clock = time.perf_counter()
    c.tell("write", 0, 1)
    c.written = write_back(c.session, c.kv, c.plan, c.cut, c.fitted, c.rep, c.blob)
    c.rep.seconds["write"] = time.perf_counter() - clock
    c.tell("write", 1, 1)


def write_back(session, kv, plan, cut, fitted, rep, snapshot: bytes) -> bytes | None:
    """Write the compacted cells back and report what they hold; returns the state written where
    it was read back (else None). ``snapshot``: the state to restore if the write is refused (the
    cache before compaction: :func:`compact` restores it on any failure anyway)."""
    new = kvsplit.assemble(kv, cut.split, fitted)
    session.set_kv(new, old=snapshot)
    written = as_written(session, new, fitted, len(cut.split.sinks))
    T = len(cut.user.span)
    rep.span_before, rep.span_after = T, new.n_cells - len(cut.user.sinks) - len(cut.user.recent)
    rep.ratio = T / max(1, rep.span_after)
    # the exact recent window moved out of the fit is part of the user's span: its keys count
    moved = 0 if plan.fill or cut.exact is not None else cut.extra * sum(
        r.indices.shape[0] for r in fitted.values()
    )
    rep.keys_kept = int(sum(int(r.keys_kept.sum()) for r in fitted.values())) + moved
    rep.cells_after = session.n_cells
    return written


def as_written(session: Host, new: KVState, fitted: dict[int, CompactedLayer], n_sinks: int) -> bytes | None:
    """Each fit's values replaced by what the cache holds, so that verify measures the cache as
    written: f16, bf16 and the quantized types round the fitted float32 values (kept keys are
    copies of cached ones and the bias is stored as F32: both are written exactly). Returns the
    state read back (None where nothing was read)."""
    if session.kv_type_v == "f32":
        return None
    blob = session.snapshot()
    got = session.get_kv(blob)
    at = {int(p): i for i, p in enumerate(got.positions)}
    for il, res in fitted.items():
        rows = [at[int(p)] for p in new.positions[n_sinks : n_sinks + res.indices.shape[1]]]
        fitted[il] = replace(res, values=got.values[il][rows].transpose(1, 0, 2).astype(res.values.dtype))
    return blob

