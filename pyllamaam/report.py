"""CompactionReport: what one compaction did, how long each stage took, how good it is."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

STAGES = ("queries", "extract", "fit", "write", "verify")


@dataclass
class CompactionReport:
    """The outcome of :meth:`Session.compact`.

    Attributes
    ----------
    method, queries : what was asked for.
    cells_before, cells_after : cells of the compactable cache (all of it, sinks and window too).
    span_before, span_after : cells of the compacted span (``ratio = span_before / span_after``).
    keys_kept : keys kept over all (layer, KV head) slots of the span (padding excluded).
    budgets : the head budgets used: ``"uniform"`` or the budgets file (or ``"given"`` for a mapping).
    on_policy : layer groups fitted in order (queries re-captured before each group after the first).
    ratio : the achieved cell ratio over the span.
    seconds : per stage (queries, extract, fit, write, verify; retype after a move to other cache types).
    attention_error : mean relative attention-output error on held-out queries (None if unknown).
    kl : mean KL(before || after) of next-token distributions on the probe (nats; None if unknown).
    tail_kl : the same on the continuation probe: the context's last tokens (after the span, kept
        exact) read again, whose predictions show what the next tokens will see (None if unknown,
        or on a memory that cannot drop its last cells).
    fell_back : True when the original cache was restored; ``reason`` says why.
    guards : how often each per-head guard fired (:mod:`pyllamaam.guards`): heads kept as
        fitted (``fit``), shrunk (``shrink``), given original values (``original``) or evicted
        plainly (``evict``); NNLS zero-weight keys left; heads whose fitted values were rejected.
    verbatim : the positions kept as they were (key, value and bias) in every compacted layer and
        KV head, as inclusive ``[first, last]`` ranges in position order: the first and last cells and the
        whole sentences chosen for the span. A fact is answered from the compacted cache about as
        well as from the full one when its tokens are in here, and rarely otherwise
        (:meth:`Session.kept_text <pyllamaam.engine.Session.kept_text>` gives their text). Empty
        when the compaction fell back (the cache is then unchanged).
    bytes_before, bytes_after : bytes of K, V and bias storage of the compactable cache's cells
        in the session's cache types (:meth:`Session.kv_bytes <pyllamaam.engine.Session.kv_bytes>`).
    bytes_f16 : bytes of an f16 K and V cache, without bias, of the whole context (one cell per
        position), as plain llama.cpp would hold it; ``bytes_ratio_f16`` = bytes_f16 / bytes_after.
    memory : for ``compact(memory=...)``: the target, the cache types moved to, the method and the
        table entry (model, target measured) that chose them, where a pick ranked by surprisal got
        it (``"surprisal"``: "recorded" or "read again"), and whether the cache kept its bias
        storage (``"bias_storage"``: False where nothing fitted holds a bias); None otherwise.
    arrays : where the attention passes of the array stages ran: "numpy" (the CPU) or "cupy" (a
        CUDA GPU; option ``arrays``, :mod:`pyllamaam.compact.arrays`).
    """

    method: str
    queries: str
    cells_before: int = 0
    cells_after: int = 0
    span_before: int = 0
    span_after: int = 0
    keys_kept: int = 0
    budgets: str = "uniform"
    on_policy: int = 1
    ratio: float = 1.0
    n_queries: int = 0
    layers: list[int] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    attention_error: float | None = None
    attention_error_worst: float | None = None
    kl: float | None = None
    tail_kl: float | None = None
    fell_back: bool = False
    reason: str = ""
    guards: dict[str, int] = field(default_factory=dict)
    verbatim: list[list[int]] = field(default_factory=list)
    bytes_before: int = 0
    bytes_after: int = 0
    bytes_f16: int = 0
    memory: dict | None = None
    arrays: str = "numpy"

    @property
    def verbatim_cells(self) -> int:
        """Cells in :attr:`verbatim`."""
        return sum(b - a + 1 for a, b in self.verbatim)

    @property
    def bytes_ratio_f16(self) -> float | None:
        """How many times fewer bytes than the full f16 cache (None if unknown)."""
        return self.bytes_f16 / self.bytes_after if self.bytes_after else None

    @property
    def total_seconds(self) -> float:
        return float(sum(self.seconds.values()))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["total_seconds"] = self.total_seconds
        d["verbatim_cells"] = self.verbatim_cells
        d["bytes_ratio_f16"] = self.bytes_ratio_f16
        return d

    def to_json(self, **kw: object) -> str:
        return json.dumps(self.to_dict(), **kw)

    def __str__(self) -> str:
        # a method that ran no reference queries (whole sentences by the cache's own scores) names none
        asked = self.n_queries or self.fell_back
        head = f"compaction {self.method} / " + (f"queries {self.queries}" if asked else "no reference queries")
        if self.memory:
            m = self.memory
            head += f" / memory {m['target']:g}x: {m['kv_type_k']}/{m['kv_type_v']} cache, {m['method']}"
            if m.get("surprisal"):
                head += f" (surprisal {m['surprisal']})"
            if m.get("bias_storage") is False:
                head += ", no bias storage"
        if self.on_policy > 1:
            head += f" / on-policy in {self.on_policy} layer groups"
        if self.budgets != "uniform":
            head += f" / budgets {Path(self.budgets).name if self.budgets != 'given' else 'given'}"
        head += ": "
        if self.fell_back:
            head += f"FELL BACK ({self.reason}); the cache is unchanged"
        else:
            head += (
                f"{self.cells_before} -> {self.cells_after} cells "
                f"(span {self.span_before} -> {self.span_after}, {self.ratio:.1f}x), "
                f"{self.keys_kept} keys kept; {self.verbatim_cells} cells verbatim in every head "
                f"({len(self.verbatim)} passages)"
            )
            if self.bytes_after:
                head += (
                    f"; {_size(self.bytes_before)} -> {_size(self.bytes_after)} of KV storage, "
                    f"{self.bytes_ratio_f16:.1f}x fewer bytes than the full f16 cache"
                )
        err = "n/a" if self.attention_error is None else f"{self.attention_error:.3f}"
        if self.attention_error_worst is not None:
            err += f" (worst layer {self.attention_error_worst:.3f})"
        kl = "n/a" if self.kl is None else f"{self.kl:.4f} nats"
        if self.tail_kl is not None:
            kl += f"; continuation probe KL {self.tail_kl:.4f} nats"
        times = ", ".join(f"{k} {v:.2f}s" for k, v in self.seconds.items())
        guards = ""
        if self.guards:
            guards = "\n  head guards: " + ", ".join(f"{k} {v}" for k, v in self.guards.items())
        return (
            f"{head}\n  held-out attention error {err}; probe KL {kl}\n"
            f"  {self.n_queries} reference queries; {times} (total {self.total_seconds:.2f}s"
            f"{'; attention passes on the GPU' if self.arrays == 'cupy' else ''}){guards}"
        )


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
