"""``"tail"``: the queries of the context's own last tokens, read again on the current cache.

The next tokens read the context the way its last tokens did, so these queries are the
observation window of SnapKV-style selection (what a continuation needs), and they can be
captured again after part of the cache was compacted (on-policy), unlike the queries of the
prefill: the last ``tail_tokens`` cells are dropped on a scratch copy and decoded again at
their own positions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..host import Host


def tail_queries(
    session: Host, span: tuple[int, int], *, tail_tokens: int = 32, snapshot: bytes | None = None, **_: Any
) -> dict[int, np.ndarray]:
    """Queries of the last ``tail_tokens`` tokens of the context, ``{layer: [n, n_head, head_dim]}``.

    Only tokens after the compactable span are read again (they sit one per cell at their own
    positions), so at most ``n_past - 1 - span[1]`` of them. ``snapshot``: the session's current
    state, where the caller holds it.
    """
    if isinstance(tail_tokens, bool) or not isinstance(tail_tokens, int) or tail_tokens < 1:
        raise ConfigError(f"tail_tokens must be an integer >= 1, not {tail_tokens!r}")
    n_past = session.n_past
    tokens = session.tokens
    n = min(tail_tokens, n_past - 1 - span[1], len(tokens))
    if n < 1:
        raise ConfigError("queries='tail' needs tokens after the compactable span (keep_last >= 2)")
    with session.scratch(snapshot):
        if not session.drop_last(n):
            raise ConfigError(f"this memory cannot drop its last {n} cells to read them again")
        return session.capture_queries(tokens[-n:])


def tail_logits(session: Host, n: int, after: int, snapshot: bytes | None = None) -> np.ndarray | None:
    """Next-token logits of the context's last ``n`` tokens read again on the cache as it is
    (float32 [n, n_vocab]): what the continuation probe compares before and after a compaction.

    Only tokens at positions past ``after`` (the compactable span's last position) are read again,
    so at most ``n_past - 1 - after``; None when fewer than 1 would be, or when the memory cannot
    drop its last cells (recurrent state). The session is unchanged. ``snapshot``: its current
    state, where the caller holds it.
    """
    tokens = session.tokens
    n = min(n, session.n_past - 1 - after, len(tokens))
    if n < 1:
        return None
    with session.scratch(snapshot):
        if not session.drop_last(n):
            return None
        return session.eval_logits(tokens[-n:])
