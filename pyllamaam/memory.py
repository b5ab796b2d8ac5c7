"""Memory targets: the cache types, cell count and method that keep the most answers in a byte budget.

A memory target ``M`` asks for a KV cache ``M`` times smaller in bytes than llama.cpp's f16 cache
of the same positions (K and V, no bias). Bytes, not cells: a quantized cache type shrinks every
cell, compaction shrinks the number of cells, and the two compose. Which mix keeps the most
answers depends on the model, so the choice comes from a table measured by the QA suite and
shipped with the package (``memory_table.json``, written by :func:`write_table`):

    {"source": <the command>, "models": {<model>: {"agnostic": [entry, ...], "task": [...]}},
     "fallback": {"agnostic": [...], "task": [...]}}

each entry ``{"memory": M, "cache": "q8_0/q4_0", "method": "default", "of_full": 0.93, ...}`` the
configuration that kept the most answers at that target. :func:`pick` reads it.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import kvtypes
from .errors import ConfigError

TABLE = Path(__file__).with_name("memory_table.json")

#: The compactions the table may pick, by name: their ``Session.compact`` options (None: no
#: compaction, the cache types alone). "sentences": whole sentences ranked by the cache's own
#: scores fill the whole budget (``span_score="cache"``, ``spans=1``), nothing fitted and no
#: forward pass; a cell of a kept sentence is exact, so in a byte budget it keeps the most
#: answers where the fit's share of the budget would hold fewer sentences (Qwen2.5-0.5B at 8x,
#: SmolLM2-135M at 4x in q4_0). "repeat-sentences": the same with the default's ranking (its
#: repeat pass over the candidates): on Qwen2.5-0.5B at 16x, 16 of 36 tuning answers against the
#: default's 13 and `sentences`' 14 (each fell through to the default on one document).
#: "surprisal-sentences": ranked by the cache's scores and each token's surprisal together
#: (``span_score="cache+surprisal"``: the text read again, about one more prefill, unless the session
#: recorded it while reading, :meth:`Session.record_surprisal`): SmolLM2-135M
#: at 8x / 16x 30 / 20 of 81 tuning answers (best other 23 / 17), Qwen2.5-0.5B at 16x 19 of 36.
METHODS: dict[str, dict[str, Any] | None] = {
    "full": None,
    "default": {},
    "sentences": {"span_score": "cache", "spans": 1.0},
    "repeat-sentences": {"spans": 1.0},
    "surprisal-sentences": {"span_score": "cache+surprisal", "spans": 1.0},
    "question": {},  # with ``task``: question-aware compaction
}
#: the methods the table may pick without a question, and with one
AGNOSTIC = ("full", "default", "sentences", "repeat-sentences", "surprisal-sentences")
TASK = ("full", "question")


@dataclass(frozen=True)
class Choice:
    """What ``compact(memory=M)`` does: the cache types to move to and the compaction method
    (``"full"``: none, the cache types alone), as measured at ``measured_at``."""

    kv_type_k: str
    kv_type_v: str
    method: str
    measured_at: float
    model: str  # the table's model whose measurement this is ("fallback": every model's)


def cells_for(budget_bytes: float, bytes_per_cell: int) -> int:
    """Cells of ``bytes_per_cell`` that fit in ``budget_bytes``."""
    return int(budget_bytes // bytes_per_cell)


def budget_cells(session: Any, budget_bytes: float, kv_type_k: str | None = None,
                 kv_type_v: str | None = None) -> tuple[int, int]:
    """Cells of ``session``'s cache (in ``kv_type_k``/``kv_type_v`` instead, where given) that fit
    in ``budget_bytes``: with bias storage (a fitted cache) and without it (K and V only)."""
    fit, free = (cells_for(budget_bytes, session.kv_bytes(n_cells=1, kv_type_k=kv_type_k, kv_type_v=kv_type_v,
                                                         bias_storage=b)) for b in (True, False))
    return fit, free


def min_cells(keep_first: int = 4, keep_last: int = 32) -> int:
    """The fewest cells a compaction can leave: the verbatim first and last cells and one more."""
    return keep_first + keep_last + 1


def check_target(memory: Any) -> float:
    if isinstance(memory, bool) or not isinstance(memory, (int, float)) or not math.isfinite(memory) or memory < 1:
        raise ConfigError(f"memory must be a number >= 1 (x fewer bytes than the f16 cache), not {memory!r}")
    return float(memory)


def load_table(path: Path = TABLE) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"the memory table {path.name} is missing or unreadable ({err}); "
                          "regenerate it with `make memory-table`") from err


def pick(model: str, memory: float, task: bool, table: dict[str, Any] | None = None) -> Choice:
    """The measured choice for ``model`` (a catalog name; others use the fallback) at the target
    nearest ``memory`` on a log scale (the larger on a tie)."""
    memory = check_target(memory)
    table = load_table() if table is None else table
    kind = "task" if task else "agnostic"
    mine = table.get("models", {}).get(model, {}).get(kind)  # the model's own, else every model's
    name = model if mine else "fallback"
    entries = mine or table.get("fallback", {}).get(kind, [])
    if not entries:
        raise ConfigError(f"the memory table has no {kind} entries for {model!r}")
    best = min(entries, key=lambda e: (abs(math.log(e["memory"] / memory)), -e["memory"]))
    k, _, v = best["cache"].partition("/")
    return Choice(k, v or k, best["method"], float(best["memory"]), name)


def build_table(rows: list[dict[str, Any]], source: str) -> dict[str, Any]:
    """The table from QA summary rows addressed by memory (``pyllamaam eval --suite qa --memories``):
    per model and target, the configuration with the most answers relative to the f16 full cache
    (ties: fewer bytes; the default's unless another keeps :data:`MARGIN` more answers), and a
    fallback: the best mean over the models of the configurations measured on the most models. A
    row where a compaction fell back does not count: the full cache answered, the target missed."""
    out: dict[str, Any] = {"source": source, "models": {}, "fallback": {}}
    for kind, methods in (("agnostic", AGNOSTIC), ("task", TASK)):
        mine = [r for r in rows if r.get("memory") and r["method"] in methods and r.get("of_full") is not None
                and not r.get("fell_back")]
        pooled: dict[tuple, list[dict[str, Any]]] = {}
        for model in sorted({r["model"] for r in mine}):
            entries = []
            for m in sorted({r["memory"] for r in mine if r["model"] == model}):
                cand = [r for r in mine if r["model"] == model and r["memory"] == m]
                if kind == "task" and not any(r["method"] == "question" for r in cand):
                    continue
                entries.append(_entry(_best(cand)))
                for r in cand:
                    pooled.setdefault((m, r["cache"], r["method"]), []).append(r)
            if entries:
                out["models"].setdefault(model, {})[kind] = entries
        fallback = []
        for m in sorted({k[0] for k in pooled}):
            # the configurations measured on the most models (not every model runs every one),
            # the best mean of those, by the same rule as one model's
            here = {k: v for k, v in pooled.items() if k[0] == m}
            most = max(len(v) for v in here.values())
            best = _best([_pool(v) for v in here.values() if len(v) == most])
            fallback.append({"memory": m, "cache": best["cache"], "method": best["method"],
                             "of_full": round(best["of_full"], 3), "models": most})
        out["fallback"][kind] = fallback
    return out


#: answers another method must keep beyond the default's, on the same documents, to replace it
#: in the table: one answer in 27 is inside any interval, and on SmolLM2 at 8x "sentences"
#: kept one more than the default yet lost the demo's planted code, which the default keeps
MARGIN = 2


def _best(cand: list[dict[str, Any]]) -> dict[str, Any]:
    """The row with the most answers (ties: fewer bytes); the default's best row unless the other
    keeps at least :data:`MARGIN` more answers."""
    def key(r):
        return r["of_full"], r.get("bytes_ratio") or 0

    best = max(cand, key=key)
    default = [r for r in cand if r["method"] == "default"]
    if best["method"] == "default" or not default:
        return best
    mine = max(default, key=key)
    return best if _answers(best) - _answers(mine) >= MARGIN else mine


def _answers(r: dict[str, Any]) -> int:
    return round(r["accuracy"] * r["questions"])


def _pool(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One configuration's rows of several models as one row: the mean share of the full cache's
    answers, and the answers and questions of them all."""
    questions = sum(r["questions"] for r in rows)
    return {"cache": rows[0]["cache"], "method": rows[0]["method"],
            "of_full": sum(r["of_full"] for r in rows) / len(rows),
            "accuracy": sum(_answers(r) for r in rows) / questions, "questions": questions}


def _entry(r: dict[str, Any]) -> dict[str, Any]:
    return {"memory": r["memory"], "cache": r["cache"], "method": r["method"], "of_full": round(r["of_full"], 3),
            "accuracy": round(r["accuracy"], 3), "bytes_ratio": round(r["bytes_ratio"], 2),
            "questions": r["questions"], "tokens": r["tokens"]}


def write_table(summary: Path, source: str, path: Path = TABLE) -> dict[str, Any]:
    """Write the table built from a QA summary (qa_summary.json) to ``path``."""
    table = build_table(json.loads(Path(summary).read_text()), source)
    if not table["models"]:
        raise ConfigError(f"{summary} holds no cells addressed by memory (run the QA suite with --memories)")
    path.write_text(json.dumps(table, indent=1) + "\n")
    return table


def check_auto(session: Any, memory: float, task: bool) -> None:
    """Refuse a target that automatic compaction cannot shrink a cache by: the picked types alone
    would already hold every cell in the budget, so the cells would never drop below the limit."""
    choice = _choice(session, check_target(memory), task)
    biased = _fits(session, choice.method, {}, None, None)
    shrink = session.kv_bytes_f16(n_cells=1) / (memory * session.kv_bytes(
        n_cells=1, kv_type_k=choice.kv_type_k, kv_type_v=choice.kv_type_v, bias_storage=biased))
    if shrink >= 1:
        raise ConfigError(f"memory={memory:g} is reached by the {choice.kv_type_k}/{choice.kv_type_v} cache types "
                          "alone: automatic compaction needs a larger target to drop cells")


def _choice(session: Any, target: float, task: bool) -> Choice:
    """The table's pick for the session's model, kept to the session's types where the layout
    cannot move to others (:meth:`Session.retype` moves plain, iSWA and hybrid caches)."""
    from . import catalog

    choice = pick(catalog.name_of(session.model.path) or session.model.arch, target, task)
    if session.memory_layout not in ("kv", "iswa", "hybrid"):
        choice = Choice(session.kv_type_k, session.kv_type_v, choice.method, choice.measured_at, choice.model)
    return choice


def method_options(method: str, options: dict[str, Any], defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``Session.compact`` options of the table's ``method``: the caller's ``options`` win over
    it, and it over ``defaults``."""
    return {**(defaults or {}), **(METHODS.get(method) or {}), **options}


def ranks_by_surprisal(options: dict[str, Any]) -> bool:
    """Whether a compaction with these options ranks sentences by each token's surprisal."""
    return options.get("span_score") == "cache+surprisal"


def wants_surprisal(session: Any, memory: float, task: bool = False) -> bool:
    """Whether ``compact(memory=memory)`` on ``session`` would rank sentences by each token's
    surprisal: then :meth:`Session.record_surprisal` before the prefill spares it reading the text
    again (the CLI, the server and the cost bench turn it on where this says so)."""
    return ranks_by_surprisal(method_options(_choice(session, check_target(memory), task).method, {}))


def compact_with(session: Any, method: str, options: dict[str, Any], defaults: dict[str, Any] | None = None,
                 through_cells: int | None = None, **size: Any) -> tuple[Any, dict | None]:
    """``session.compact(**size)`` with the table's ``method`` (the caller's ``options`` win over
    it, and it over ``defaults``: automatic compaction's span score where the method sets none). A
    method other than the default that fails its gates falls through to the default at the same
    size, as :func:`compact_to` and the QA suite's rows for the table both run it: on
    Qwen2.5-0.5B at 16x "sentences" failed its recall probe on one tuning document in four,
    where giving up the target left the full cache. Returns the report and, where the default
    ran instead, ``{"method": the one that fell through, "reason": why}`` (else None).
    ``through_cells``: the default's ``target_cells`` instead (its fit stores a bias per cell)."""
    rep = session.compact(**size, **method_options(method, options, defaults))
    if not rep.fell_back or method in ("default", "question"):
        return rep, None
    through = {"method": method, "reason": rep.reason}
    if through_cells is not None:
        size = {**size, "target_cells": through_cells}
    return session.compact(**size, **method_options("default", options, defaults)), through


def _fits(session: Any, method: str, options: dict[str, Any], defaults: dict[str, Any] | None,
          task: str | None, **where: Any) -> bool:
    """Whether the table's ``method`` (``"full"``: none) fits a bias per cell: else the cache moves
    to a context without bias storage, as llama.cpp's own (its bytes then hold K and V only)."""
    from .pipeline.plan import fits_bias

    if METHODS.get(method) is None:
        return False
    return fits_bias(session, task=task, **where, **method_options(method, options, defaults))


def holds_bias(session: Any) -> bool:
    """Whether the session's cache holds a non-zero bias (a fitted compaction's beta): read from the
    cache where one may have been written (``Session._maybe_biased``), else False at no cost."""
    if not getattr(session, "bias_storage", True) or not getattr(session, "_maybe_biased", True):
        return False
    if not session.n_cells or not session.can_compact:
        return False
    return session.get_kv().holds_bias()


def compact_to(session: Any, memory: float, *, task: str | None = None, keep_first: int = 4, keep_last: int = 32,
               of_cells: bool = False, defaults: dict[str, Any] | None = None, **options: Any) -> Any:
    """``Session.compact(memory=...)``: the cache left ``memory`` times smaller in bytes than the
    f16 full cache of the same positions, in the cache types and with the method the table picks
    (question-aware when ``task`` is given). Compaction runs first, in the session's own types
    (the fit on the less rounded cache); the move to the picked types follows. When either fails
    the cache is restored as it was and the report says why. ConfigError (nothing changed) when
    the budget cannot hold the sinks and the recent window. ``of_cells``: relative to an f16
    cache of the cells in use instead of every position (automatic compaction); ``defaults``:
    options the table's method overrides (:func:`compact_with`)."""
    from .errors import PyllamaamError
    from .report import CompactionReport

    target = check_target(memory)
    choice = _choice(session, target, task is not None)
    k, v = choice.kv_type_k, choice.kv_type_v
    budget = session.kv_bytes_f16(n_cells=session.n_cells if of_cells else None) / target
    # a cache left without a fitted bias moves to a context without bias storage (K and V only)
    cap_fit, cap_free = budget_cells(session, budget, k, v)
    if cap_free >= session.n_cells:  # the types alone reach the target: no fit
        biased = holds_bias(session)
    else:
        biased = _fits(session, choice.method, options, defaults, task, keep_first=keep_first,
                       keep_last=keep_last) or holds_bias(session)
    cap = cap_fit if biased else cap_free
    floor = min_cells(keep_first, keep_last)
    if cap < floor:
        raise ConfigError(
            f"memory={target:g} leaves room for {cap} cells of {k}/{v}, fewer than the {floor} that the "
            f"first {keep_first} and last {keep_last} cells and one compacted cell need"
        )
    before, recorded = session.kv_bytes(), bool(getattr(session, "surprisal_recorded", False))
    blob, n_cells, types = session.snapshot(), session.n_cells, (session.kv_type_k, session.kv_type_v)
    through = None
    if kvtypes.needs_flash(v) and not session.flash_attn:
        # the moved cache reads beta through flash attention's float16 mask (a quantized V needs
        # flash attention): fit the beta it will apply
        options = {"beta_dtype": "float16", **options}
    if cap < session.n_cells:
        rep, through = compact_with(session, choice.method, options, defaults, through_cells=cap_fit,
                                    target_cells=cap, task=task, keep_first=keep_first, keep_last=keep_last)
    else:  # the types alone reach the target
        rep = CompactionReport(method="none", queries="none", cells_before=n_cells, cells_after=n_cells)
    # "method": the table's name for the compaction that ran (none: the types alone); "instead_of":
    # the table's pick and why it fell through to the default
    rep.memory = {"target": target, "kv_type_k": k, "kv_type_v": v, "method": "none" if cap >= n_cells
                  else "default" if through else choice.method, "table": choice.model,
                  "measured_at": choice.measured_at}
    if through:
        rep.memory["instead_of"] = through
    elif cap < n_cells and ranks_by_surprisal(method_options(choice.method, options, defaults)):
        # where the surprisal came from: the cost differs by a prefill
        rep.memory["surprisal"] = "recorded" if recorded else "read again"
    biased = biased or through is not None  # the default's fit stores a bias
    if not rep.fell_back and ((k, v) != types or biased != getattr(session, "bias_storage", True)):
        clock = time.perf_counter()
        try:
            session.retype(k, v, bias_storage=biased)
        except PyllamaamError as err:
            session.write_state(blob, n_cells)  # the cache as it was, in its own types
            rep.fell_back, rep.reason, rep.verbatim = True, str(err), []
            rep.cells_after = n_cells
        rep.seconds["retype"] = time.perf_counter() - clock  # the move counts in the compaction's cost
    rep.memory["bias_storage"] = getattr(session, "bias_storage", True)
    rep.bytes_before, rep.bytes_after, rep.bytes_f16 = before, session.kv_bytes(), session.kv_bytes_f16()
    return rep
