"""``"self-study"``: queries from the model's own short texts about the context.

For each prompt, the model reads it after the context and writes a short greedy answer; the
queries of prompt and answer are kept. Every pass runs on a scratch continuation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError
from ._scratch import room

if TYPE_CHECKING:
    from ..host import Host

SELFSTUDY_PROMPTS = (
    "\n\nQuestion: What is the text above about? Summarize it.\nAnswer:",
    "\n\nQuestion: List the names, numbers and facts stated in the text above.\nAnswer:",
    "\n\nQuestion: Write a question a reader could answer from the text above, then answer it.\nAnswer:",
)


def selfstudy_queries(
    session: Host,
    span: tuple[int, int],
    *,
    selfstudy_prompts: tuple[str, ...] = SELFSTUDY_PROMPTS,
    selfstudy_tokens: int = 48,
    snapshot: bytes | None = None,
    **_: Any,
) -> dict[int, np.ndarray]:
    """Queries of prompts and greedy answers, ``{layer: [n, n_head, head_dim]}``; ``snapshot``:
    the session's current state, where the caller holds it."""
    out: dict[int, list[np.ndarray]] = {}
    for prompt in selfstudy_prompts:
        ptoks = session.model.tokenize(prompt)
        if len(ptoks) + selfstudy_tokens > room(session):
            raise ConfigError(f"self-study needs {len(ptoks) + selfstudy_tokens} free cells, {room(session)} free")
        with session.scratch(snapshot), session.capturing() as got:  # each scratch restores the same state
            session.generate(ptoks, max_tokens=selfstudy_tokens)
            for il, qs in got.items():
                out.setdefault(il, []).append(np.concatenate(qs))
    return {il: np.concatenate(qs) for il, qs in sorted(out.items())}
