"""``"lookahead"``: the queries of the model's own greedy continuation of the context.

What the next tokens will read is best guessed by letting the model write them: on a scratch
continuation it continues the context greedily for ``lookahead_tokens`` tokens, and the queries
of those tokens are kept (pseudo queries from a short look ahead, as in Lookahead Q-Cache,
arXiv 2505.20334). A continuation that copies text from the context reads that text's keys,
which the context's own last tokens (``"tail"``) have not read yet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError
from ._scratch import room, scratch

if TYPE_CHECKING:
    from ..engine import Session


def lookahead_tokens_of(session: Session, n: int) -> list[int]:
    """Greedy next tokens after the context, feeding each; an end-of-generation token is passed
    over for the next likeliest (the look ahead reads on where a text could end). Runs on the
    live session: call it inside a scratch."""
    out: list[int] = []
    for _ in range(n):
        logits = session.logits()
        top = np.argpartition(-logits, 16)[:16]
        for tok in top[np.argsort(-logits[top], kind="stable")].tolist():
            if not session.model.is_eog(tok):
                break
        session.prefill([int(tok)])
        out.append(int(tok))
    return out


def lookahead_queries(
    session: Session, span: tuple[int, int], *, lookahead_tokens: int = 64, **_: Any
) -> dict[int, np.ndarray]:
    """Queries of ``lookahead_tokens`` greedily generated tokens,
    ``{layer: [n, n_head, head_dim]}``."""
    n = lookahead_tokens
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"lookahead_tokens must be an integer >= 1, not {n!r}")
    if n > room(session):
        raise ConfigError(f"queries='lookahead' needs {n} free cells, {room(session)} free")
    with scratch(session):
        session._capture = {}
        try:
            lookahead_tokens_of(session, n)
            got = session._capture
        finally:
            session._capture = None
    return {il: np.concatenate(qs) for il, qs in sorted(got.items())}
