"""Automatic compaction: a session that compacts itself whenever its cells pass a limit."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import CompactionError, ConfigError
from .plan import check_args, check_gate
from .run import compact

if TYPE_CHECKING:
    from ..host import Host


#: ``span_score`` of automatic compactions unless given: a running session compacts a cache that
#: already holds compacted cells, again and again, and there the cache's own scores keep a fact
#: stated once at the start where the repeat pass's ranking loses it. tests/test_iterative.py's
#: setting, four code words and filler offsets (SmolLM2, n_ctx=256, two compactions): the word's
#: mean NLL 0.38 ("cache"), 1.04 (per-head AM, spans=0), 2.77 ("cache+repeat", the one-shot
#: default, which keeps the demo's planted code where "cache" loses it)
AUTO_SPAN_SCORE = "cache"


def auto_settings(
    session: Host, threshold: float | None, ratio: float, options: dict[str, Any]
) -> dict[str, Any] | None:
    """The checked settings of automatic compaction that :func:`auto_prefill` takes (None: off,
    with ``threshold=None``); the session keeps them (:meth:`Session.auto_compact`)."""
    if threshold is None:
        return None
    if not 0 < threshold <= 1:
        raise ConfigError(f"threshold must be in (0, 1], not {threshold!r}")
    check_gate(session)
    check_args(ratio, None, options.get("keep_first", 4), options.get("keep_last", 32))
    if options.get("memory") is not None:
        from .. import memory

        memory.check_auto(session, options["memory"], "task" in options)
    options, defaults = dict(options), {}
    if options.get("method", "am") == "am" and options.get("spans", 1) and not {"task", "span_score"} & set(options):
        # under memory=, the table's method sets its own span score; the automatic one is its default
        (defaults if options.get("memory") is not None else options)["span_score"] = AUTO_SPAN_SCORE
    return {"limit": int(threshold * session.n_ctx), "ratio": ratio, "options": options, "defaults": defaults}


def auto_prefill(session: Host, toks: list[int], auto: dict[str, Any]) -> int:
    """Prefill ``toks`` in pieces, compacting whenever the cells reach the limit of ``auto``
    (:func:`auto_settings`); the session runs them with its own automatic compaction paused."""
    limit = auto["limit"]
    done = 0
    while done < len(toks):
        if session.n_cells >= limit:
            if auto["options"].get("memory") is not None:  # bytes relative to the cells found
                from .. import memory

                opts = {k: v for k, v in auto["options"].items() if k != "memory"}
                rep = memory.compact_to(session, auto["options"]["memory"], of_cells=True,
                                        defaults=auto["defaults"], **opts)
            else:
                rep = compact(session, ratio=auto["ratio"], **auto["options"])
            session.auto_reports.append(rep)
            if rep.fell_back:
                raise CompactionError(f"automatic compaction fell back: {rep.reason}")
            if session.n_cells >= limit:
                raise CompactionError(f"automatic compaction left {session.n_cells} cells (limit {limit})")
        n = min(len(toks) - done, limit - session.n_cells)
        session.prefill(toks[done : done + n])
        done += n
    return len(toks)

