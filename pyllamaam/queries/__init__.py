"""Reference query sources for compaction.

A source returns ``{layer: Q}`` with Q float32 ``[n_tokens, n_head, head_dim]``: the q that
attention really used (captured by the query probe, in the basis of the stored keys). Every
source except ``"context"`` runs forward passes on a scratch continuation of the sequence and
restores the session exactly afterwards (``Session.scratch``).

Sources: ``"context"`` (captured during prefill, free), ``"repeat"`` (a repeat-the-text pass),
``"self-study"`` (the model's own short texts about the context), ``"task"`` (the upcoming task
prompt), ``"tail"`` (the context's last tokens read again: what the next tokens need); a mixture is
``"repeat+context"``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError
from .context import context_queries
from .repeat import repeat_queries
from .selfstudy import selfstudy_queries
from .tail import tail_queries
from .task import task_queries

if TYPE_CHECKING:
    from ..host import Host

Source = Callable[..., dict[int, np.ndarray]]

SOURCES: dict[str, Source] = {
    "context": context_queries,
    "repeat": repeat_queries,
    "self-study": selfstudy_queries,
    "task": task_queries,
    "tail": tail_queries,
}

__all__ = ["SOURCES", "Queries", "collect", "parse_spec"]


class Queries(dict):
    """``{layer: Q}`` of a query spec, with ``parts``: the token count of each source in the
    order they are concatenated."""

    def __init__(self, q: dict[int, np.ndarray], parts: list[int]) -> None:
        super().__init__(q)
        self.parts = list(parts)


def parse_spec(spec: str) -> list[str]:
    """``"repeat+context"`` -> ``["repeat", "context"]`` (checked)."""
    names = [s.strip() for s in str(spec).split("+") if s.strip()]
    if not names:
        raise ConfigError("queries must name at least one source")
    bad = [n for n in names if n not in SOURCES]
    if bad:
        raise ConfigError(f"unknown query source(s) {bad}; known: {', '.join(SOURCES)} (mix with '+')")
    return names


def collect(session: Host, spec: str, span: tuple[int, int], **kw: Any) -> Queries:
    """Queries of every source in ``spec`` concatenated per layer.

    Parameters
    ----------
    session : the session (unchanged afterwards).
    spec : source names joined by ``+``.
    span : (first, last) position of the compactable span (inclusive).
    **kw : options of the sources (``task``, ``repeat_prompt``, ``max_room`` ...); ``snapshot``
        and ``kv``: the session's current state and its ``get_kv()``, where the caller holds them
        (the sources' scratch passes and flash-attention copies then do not read them again).

    Returns
    -------
    :class:`Queries`; ``parts`` holds each source's token count.
    """
    out: dict[int, list[np.ndarray]] = {}
    parts: list[int] = []
    for name in parse_spec(spec):
        got = SOURCES[name](session, span, **kw)
        for il, q in got.items():
            out.setdefault(il, []).append(q)
        parts.append(len(next(iter(got.values()))) if got else 0)
    return Queries({il: qs[0] if len(qs) == 1 else np.concatenate(qs) for il, qs in out.items()}, parts)
