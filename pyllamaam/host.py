"""What the compaction pipeline and the query sources use of a session.

:class:`~pyllamaam.engine.Session` is the one implementation; the pipeline and the query sources
are written against this protocol instead, so that the engine depends on them and not the other
way round (no import circle: ``engine -> pipeline -> queries -> host``)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import numpy as np

from .kv import KVState


class Host(Protocol):
    """A live llama.cpp context with one sequence, as the pipeline reads, decodes and rewrites it.

    Public names only: the session's bookkeeping (tokens fed, cells in use, last logits, capture
    and automatic-compaction modes) stays inside it; :meth:`scratch` and :meth:`twin` are how a
    query source runs passes that must leave the session as it was."""

    model: Any  # tokenize / detokenize, path, info
    layers: list[dict[str, Any]]  # per model layer: flags, n_head, n_head_kv, head_dim_k/v, kq_scale
    n_ctx: int  # cells the context holds
    n_threads: int  # CPU threads of a decode
    flash_attn: bool  # whether attention runs as flash attention (V untransposed in the state)
    kv_type_k: str  # cache type of K
    kv_type_v: str  # cache type of V
    bias_storage: bool  # whether the context stores a bias per cell and KV head
    auto_reports: list[Any]  # reports of the automatic compactions, appended to as they run

    @property
    def tokens(self) -> list[int]:
        """The tokens fed, by position (a copy)."""
    @property
    def n_cells(self) -> int:
        """Cells in use in the compactable cache."""
    @property
    def n_past(self) -> int:
        """The next position (one past the last token's)."""
    @property
    def memory_layout(self) -> str:
        """``"kv"``, ``"iswa"``, ``"hybrid"``, ...: the kind of memory llama.cpp keeps."""
    @property
    def can_compact(self) -> bool:
        """Whether the memory can be compacted at all."""
    @property
    def gate_reason(self) -> str:
        """Why not, where it cannot."""

    def compact_layers(self) -> list[int]:
        """Model layers whose cells live in the compactable cache."""
    def kq_scale(self, il: int) -> float:
        """The scale of layer ``il``'s attention scores."""
    def prefill(self, text_or_token_ids: str | Sequence[int]) -> int:
        """Feed text or token ids; returns the count."""
    def eval_logits(self, token_ids: Sequence[int]) -> np.ndarray:
        """Logits after each of ``token_ids`` appended, the session unchanged."""
    def token_nll(self, n: int | None = None) -> np.ndarray:
        """Each token's negative log-likelihood given the tokens before it, the session unchanged."""
    def generate(self, prompt: str | Sequence[int] = "", max_tokens: int = 128, **kw: Any) -> str:
        """Feed ``prompt`` and decode greedily."""
    def capture_queries(self, text_or_token_ids: str | Sequence[int]) -> dict[int, np.ndarray]:
        """Prefill and return each layer's queries."""
    def capturing(self) -> AbstractContextManager[dict[int, list[np.ndarray]]]:
        """Collect each layer's queries of every decode inside the block."""
    def context_queries(self) -> dict[int, np.ndarray]:
        """The queries kept while the context was prefilled (empty where none were)."""
    def drop_last(self, n: int) -> bool:
        """Remove the last ``n`` tokens from the cache; False where the memory cannot."""
    def scratch(self, snapshot: bytes | None = None) -> AbstractContextManager[Host]:
        """Passes after the context inside the block, then the session restored exactly."""
    def twin(self, n_new: int, flash_attn: bool = True, kv: KVState | None = None) -> Host:
        """A new session holding a copy of this one's cells and tokens (the caller closes it)."""
    def close(self) -> None:
        """Free the context."""
    def snapshot(self) -> bytes:
        """The whole state as llama.cpp serializes it (a copy of the cache)."""
    def write_state(self, blob: bytes, n_cells: int, old: bytes | None = None) -> None:
        """Write back a snapshot holding ``n_cells`` cells (restoring ``old`` if refused)."""
    def get_kv(self, snapshot: bytes | None = None) -> KVState:
        """The compactable cells as float32 arrays (of ``snapshot`` where given)."""
    def set_kv(self, state: KVState, old: bytes | None = None) -> None:
        """Check and write ``state`` back (restoring ``old`` if refused)."""
    def kv_bytes(self, detail: bool = False, n_cells: int | None = None, kv_type_k: str | None = None,
                 kv_type_v: str | None = None, bias_storage: bool | None = None) -> Any:
        """Bytes of the cache in its types."""
    def retype(self, kv_type_k: str | None = None, kv_type_v: str | None = None, flash_attn: bool | None = None,
               *, bias_storage: bool | None = None) -> None:
        """Move the cache to another context (types, flash attention, bias storage), unchanged on failure."""
    def kv_bytes_f16(self, n_cells: int | None = None) -> int:
        """Bytes of the same cells in an f16 cache."""
