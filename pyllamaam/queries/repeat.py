"""``"repeat"``: queries from a pass that repeats the context after it.

The model reads a "repeat the previous text" prompt and then the span's own tokens, at
positions that continue after the context; the queries of the repeated tokens look back at the
context the way a reader recalling it would (DESIGN.md section 8: the best source we measured).
The pass runs on a flash-attention copy of the session where that is faster; on the session
itself, when the span does not fit in the free cells it is repeated in chunks, one scratch pass
each.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError
from ._scratch import flash_twin, room

if TYPE_CHECKING:
    from ..host import Host

REPEAT_PROMPT = "\n\nRepeat the previous text verbatim.\n\n"


def spread_pieces(toks: list[int], budget: int, piece: int) -> list[int]:
    """At most ``budget`` tokens of ``toks`` as contiguous pieces of about ``piece`` tokens,
    evenly spread from start to end and concatenated (the repeat pass reads them in order, so
    every part of a long context gets recall queries, not only its head)."""
    if budget < 1 or piece < 1:
        raise ConfigError(f"repeat_max_tokens and repeat_piece must be >= 1, not {budget}, {piece}")
    if len(toks) <= budget:
        return list(toks)
    k = max(1, -(-budget // piece))
    size = budget // k
    starts = np.linspace(0, len(toks) - size, k).round().astype(int)
    return [t for s in starts for t in toks[s : s + size]]


def repeat_queries(
    session: Host,
    span: tuple[int, int],
    *,
    repeat_prompt: str = REPEAT_PROMPT,
    repeat_max_tokens: float | None = None,
    repeat_piece: int = 256,
    repeat_positions: Any = None,
    repeat_flash: bool = True,
    snapshot: bytes | None = None,
    kv: Any = None,
    **_: Any,
) -> dict[int, np.ndarray]:
    """Queries of the repeated span tokens, ``{layer: [n, n_head, head_dim]}``; with
    ``repeat_positions`` (context positions, in order), the tokens at those positions only.

    With ``repeat_flash`` (the default) a session without flash attention runs the pass on a
    flash-attention copy of itself (:func:`flash_twin`), in one piece whatever its free cells.
    ``snapshot`` and ``kv``: the session's current state and its ``get_kv()``, where the caller
    holds them (they are not read again)."""
    tokens = session.tokens
    if repeat_positions is None:
        toks = tokens[span[0] : span[1] + 1]
    else:
        toks = [tokens[int(p)] for p in repeat_positions]
    if repeat_max_tokens is not None and 0 < repeat_max_tokens < 1:  # a share of the span
        repeat_max_tokens = max(1, round(repeat_max_tokens * len(toks)))
    if repeat_max_tokens is not None and len(toks) > repeat_max_tokens:
        toks = spread_pieces(toks, repeat_max_tokens, repeat_piece)
    prompt = session.model.tokenize(repeat_prompt) if repeat_prompt else []
    with flash_twin(session, len(prompt) + len(toks), kv) if repeat_flash else nullcontext() as twin:
        if twin is not None:
            if prompt:
                twin.prefill(prompt)
            return twin.capture_queries(toks)
    chunk = room(session) - len(prompt)
    if chunk < 16:
        raise ConfigError(
            f"queries='repeat' needs free cells for a scratch pass: {room(session)} free of "
            f"{session.n_ctx} (use a larger n_ctx, a lower auto_compact threshold or queries='context')"
        )
    out: dict[int, list[np.ndarray]] = {}
    for i in range(0, len(toks), chunk):
        with session.scratch(snapshot):  # each scratch restores the same state
            if prompt:
                session.prefill(prompt)
            for il, q in session.capture_queries(toks[i : i + chunk]).items():
                out.setdefault(il, []).append(q)
    return {il: np.concatenate(qs) for il, qs in out.items()}
