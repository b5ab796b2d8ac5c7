"""Stage 6, verify: the gates on the cache as written: held-out attention error, the recall (or
question) probe and the continuation probe read again against the full cache's logits, read
before the compaction (:func:`read_probes`). A failed gate raises :class:`GateFailed`, which
:func:`~pyllamaam.pipeline.compact` turns into a rollback."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from .. import kvsplit
from ..compact import attention_errors
from ..compact.parallel import map_layers
from ..errors import ConfigError
from ..kv import KVState
from ..queries.repeat import REPEAT_PROMPT
from ..queries.tail import tail_logits
from .plan import Plan, workers
from .state import Compaction, Cut

if TYPE_CHECKING:
    from ..host import Host


def run(c: Compaction) -> None:
    clock = time.perf_counter()
    c.tell("verify", 0, 1)
    probe, before, tail = c.probes
    check(c.session, c.kv, c.cut.split, c.fitted, c.held_q, probe, before, c.plan.pipe, c.rep, c.verify,
          (*tail, c.written))
    c.rep.seconds["verify"] = time.perf_counter() - clock + c.probe_seconds
    c.tell("verify", 1, 1)


def read(c: Compaction) -> None:
    """The full cache's logits on the probes, before anything changes (counted with verify)."""
    c.probes, c.probe_seconds = read_probes(c.session, c.kv, c.cut, c.plan, c.verify, c.blob)


class GateFailed(Exception):
    """A verification gate failed (internal: always turned into a fallback)."""


def read_probes(session: Host, kv: KVState, cut: Cut, plan: Plan, verify: bool,
                 snapshot: bytes) -> tuple[tuple, float]:
    """The full cache's logits on the recall probe and on the continuation probe (for verify);
    ``snapshot``: the session's current state."""
    pipe = plan.pipe
    clock, tail_before = time.perf_counter(), None
    first = int(kv.positions[cut.split.span][0])
    probe = probe_tokens(session, first, pipe["probe_tokens"], plan.qopts, plan.task) if verify else []
    before = session.eval_logits(probe) if probe else None
    tail_end = int(kv.positions[cut.user.span][-1]) if len(cut.user.span) else session.n_past - 1
    if verify and pipe["tail_probe"]:
        tail_before = tail_logits(session, tail_tokens(pipe["tail_probe"], "tail_probe"), tail_end, snapshot)
    # counted with verify, as is reading them again after
    return (probe, before, (tail_before, tail_end)), time.perf_counter() - clock


def check(session, kv, split, fitted, held_q, probe, before, pipe, rep, verify, tail=(None, 0, None)) -> None:
    """The gates on the written cache; ``tail``: the continuation probe's logits before, the span's
    last position, and the session's current state where it was read (else None)."""
    def one(il: int) -> float:
        K, V = kvsplit.span_arrays(kv, il, split)
        e = attention_errors(
            K, V, held_q[il], session.kq_scale(il), fitted[il], kvsplit.span_prior(kv, il, split), np.float32
        )
        return float(np.mean(e.output))

    layers = [il for il in fitted if il in held_q and held_q[il].shape[1] > 0]
    errs = map_layers(one, layers, workers(session, pipe))
    if errs:
        rep.attention_error, rep.attention_error_worst = float(np.mean(errs)), float(np.max(errs))
    if not verify:
        return
    if errs and not rep.attention_error <= pipe["max_attention_error"]:
        raise GateFailed(
            f"held-out attention error {rep.attention_error:.3f} > gate {pipe['max_attention_error']}"
        )
    if before is not None:
        after = session.eval_logits(probe)
        if not np.isfinite(after).all():
            raise GateFailed("non-finite logits after write-back")
        rep.kl = mean_kl(before, after)
        if not rep.kl <= pipe["max_kl"]:
            raise GateFailed(f"probe KL {rep.kl:.4f} nats > gate {pipe['max_kl']}")
    tail_before, tail_end, snapshot = tail
    if tail_before is not None:
        tail_after = tail_logits(session, len(tail_before), tail_end, snapshot)
        if tail_after is None or not np.isfinite(tail_after).all():
            raise GateFailed("the continuation probe could not be read again after write-back")
        rep.tail_kl = mean_kl(tail_before, tail_after)
        if pipe["max_tail_kl"] is not None and not rep.tail_kl <= pipe["max_tail_kl"]:
            raise GateFailed(f"continuation probe KL {rep.tail_kl:.4f} nats > gate {pipe['max_tail_kl']}")


def probe_tokens(session: Host, first_pos: int, n: int, qopts: dict, task: str | None = None) -> list[int]:
    """The probe of the ``max_kl`` gate: with a question (``task``), the question itself, what the
    compaction was made to serve; else the repeat prompt and the span's first tokens, a recall
    probe of compacted content. (A question-aware compaction keeps what its question reads and
    need not recall the text's start: at 13x on Qwen2.5-0.5B that probe read 3+ nats and rolled
    back 6 of a document's 9 question-aware compactions.)"""
    if task:
        toks = session.model.tokenize(task)
    else:
        toks = session.model.tokenize(qopts.get("repeat_prompt", REPEAT_PROMPT))
        toks += session.tokens[first_pos : first_pos + n]
    return toks[: max(0, session.n_ctx - session.n_cells)]


def tail_tokens(n, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError(f"{name} must be an integer >= 0 (tokens), not {n!r}")
    return n


def mean_kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    """Mean over rows of KL(softmax(p) || softmax(q)), nats, in float64.

    Per row, shifted by its maximum (no overflow) to ``z``, with ``S = sum(exp(z))``:
    ``KL = exp(zp) . (zp - zq) / Sp - log Sp + log Sq``, two exponentials of the vocabulary. One
    row at a time, so the float64 buffers stay small and are reused: whole log-softmax matrices
    took 0.25 s a probe on Gemma-3's 262K-token vocabulary, mostly in fresh memory, this 0.05 s."""
    kl = np.empty(len(p_logits))
    for i, (p, q) in enumerate(zip(p_logits, q_logits, strict=True)):
        zp = p.astype(np.float64)
        zp -= zp.max()
        zq = q.astype(np.float64)
        zq -= zq.max()
        ep = np.exp(zp)
        sp = ep.sum()
        log_sq = np.log(np.exp(zq).sum())
        zp -= zq
        kl[i] = ep.dot(zp) / sp - np.log(sp) + log_sq
    return float(kl.mean())
