"""The plan of one compaction: its arguments resolved and checked before the cache is touched."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import queries as qsources
from ..compact import available_methods
from ..compact.select import SELECTORS
from ..errors import ConfigError, UnsupportedLayout
from .options import (
    AM_SELECTOR,
    BUDGETS_DIR,
    CACHE_SCORED,
    ON_POLICY_GROUPS,
    PIPELINE_DEFAULTS,
    QUERY_OPTIONS,
    SHARED_EVICTIONS,
    SHIPPED_BUDGETS_BY_DEFAULT,
    SPAN_SCORES,
)
from .refs import ReferenceQueries

if TYPE_CHECKING:
    from ..host import Host


@dataclass
class Plan:
    """One :func:`compact` call's arguments, resolved and checked before the cache is touched."""

    layers: list[int]
    selector: str
    fits: bool
    qspec: str
    given: ReferenceQueries | None
    task: str | None
    budgets: Any
    pipe: dict[str, Any]  # PIPELINE_DEFAULTS, as given
    qopts: dict[str, Any]  # options of the query sources
    options: dict[str, Any]  # kernel options
    fill: bool  # head budgets whose heads fill the cells with exact recent windows
    shared: str | None = None  # one of SHARED_EVICTIONS


def make_plan(session, ratio, target_cells, method, queries, keep_first, keep_last, budgets, task, options) -> Plan:
    layers = check_gate(session)
    if task and method == "am" and queries is None and not options.get("fit"):
        # a known question: whole sentences chosen by its own queries, kept exactly (a fit on a few
        # question queries cannot serve the rest of the text). On the QA tuning documents it kept
        # the answers at 10x (above the full cache's accuracy) for a quarter of a prefill's time
        method = "chunkkv"
    shared = method if method in SHARED_EVICTIONS else None
    if shared and options.get("fit"):
        raise ConfigError(f"method {method!r} is an eviction: it fits nothing (use method='am' with spans=)")
    selector = "window" if shared else selector_of(method)
    if task and queries is None:  # a known question: its own queries choose what to keep
        queries = "task"
    if queries is None:
        queries = "repeat" if shared == "kvzip" else default_queries(
            session, options.get("fit", SELECTORS[selector].fits), keep_last
        )
    given = queries if isinstance(queries, ReferenceQueries) else None
    qspec = given.spec if given else "+".join(qsources.parse_spec(queries))
    spans_given, tail_given = "spans" in options, "max_tail_kl" in options
    pipe = {k: options.pop(k, v) for k, v in PIPELINE_DEFAULTS.items()}
    if task and not tail_given:
        # a compaction for one question serves that question (the max_kl probe reads it), not the
        # text's continuation: at 13x on Qwen2.5 the continuation probe read 3.05-3.10 nats and
        # rolled back 8 of one document's 9 compactions whose question probe read 0.3-0.6
        pipe["max_tail_kl"] = None
    qopts = {k: options.pop(k) for k in QUERY_OPTIONS if k in options}
    if session.flash_attn:  # flash attention adds beta through its float16 mask: fit the beta it applies
        options.setdefault("beta_dtype", "float16")
    check_args(ratio, target_cells, keep_first, keep_last)
    fits = options.get("fit", SELECTORS[selector].fits)
    if isinstance(budgets, str) and budgets == "shipped":
        budgets = shipped_budgets(session)
        if budgets is None:
            raise ConfigError(
                f"no head budgets are shipped for {session.model.path.name} (only for the catalog models "
                f"with a file in {BUDGETS_DIR}); make them with `pyllamaam budgets compute MODEL`"
            )
    elif budgets is None:  # fitted methods: the model's shipped budgets; eviction keeps every head alike
        budgets = (shipped_budgets(session) if SHIPPED_BUDGETS_BY_DEFAULT and fits else None) or "uniform"
    if pipe["max_attention_error"] is None:
        pipe["max_attention_error"] = 0.9 if fits else float("inf")
    fill = fits and pipe["budget_cells"] == "fill" and not uniform(budgets)
    if not (isinstance(pipe["spans"], (int, float)) and 0 <= pipe["spans"] <= 1):
        raise ConfigError(f"spans must be a number in [0, 1], not {pipe['spans']!r}")
    if pipe["chunk"] != "sentence" and not (isinstance(pipe["chunk"], int) and pipe["chunk"] >= 1):
        raise ConfigError(f"chunk must be 'sentence' or an integer >= 1 (cells), not {pipe['chunk']!r}")
    keep_mask = selector == "keep" or "keep" in options
    if pipe["spans"] and (shared or not fits or fill or keep_mask or not uniform(budgets)):
        if spans_given:
            raise ConfigError("spans= serves fitted methods with uniform budgets and no keep mask")
        pipe["spans"] = 0.0  # the default serves the plain fit only
    if pipe["pin"] is not None:
        if not isinstance(pipe["pin"], str) or not pipe["pin"]:
            raise ConfigError(f"pin must be a non-empty regular expression, not {pipe['pin']!r}")
        try:
            pipe["pin"] = re.compile(pipe["pin"])
        except re.error as err:
            raise ConfigError(f"pin is not a valid regular expression: {err}") from None
        if not (pipe["spans"] or shared == "chunkkv"):
            raise ConfigError("pin= needs whole-sentence selection: method 'am' with spans > 0, 'chunkkv' "
                              "or a question (not per-head cells)")
    if pipe["span_score"] not in SPAN_SCORES:
        raise ConfigError(f"span_score must be one of {', '.join(SPAN_SCORES)}, not {pipe['span_score']!r}")
    for name in ("span_candidates", "fit_repeat"):
        if not (isinstance(pipe[name], (int, float)) and 0 < pipe[name] <= 1):
            raise ConfigError(f"{name} must be a number in (0, 1], not {pipe[name]!r}")
    if pipe["spans"] and pipe["span_score"] in CACHE_SCORED and "repeat" in qspec.split("+") and given is None:
        if pipe["fit_repeat"] < 1:
            qopts.setdefault("repeat_max_tokens", pipe["fit_repeat"])
    if shared or (pipe["spans"] and pipe["on_policy"] is None):
        pipe["on_policy"] = 1  # the cells are chosen once, on the queries of the whole cache
    if pipe["on_policy"] is None:  # re-capture needs a forward-pass source run by this call
        forward = fits and given is None and qspec != "context"
        pipe["on_policy"] = min(ON_POLICY_GROUPS, len(layers)) if forward else 1
    return Plan(layers, selector, fits, qspec, given, task, budgets, pipe, qopts, options, fill, shared)


def writes_bias(plan: Plan) -> bool:
    """Whether the compaction may write a non-zero bias: a fit does; whole sentences filling the
    whole budget (``spans=1``), a question's sentences and the evictions keep cells as they are."""
    return bool(plan.fits and not plan.shared and plan.pipe["spans"] < 1)


def fits_bias(session: Host, method: str = "am", queries: Any = None, keep_first: int = 4, keep_last: int = 32,
              budgets: Any = None, task: str | None = None, **options: Any) -> bool:
    """:func:`writes_bias` of the plan that ``compact(...)`` with these arguments would make;
    nothing runs and the session is untouched."""
    options = {k: v for k, v in options.items() if k not in ("verify", "progress", "ratio", "target_cells")}
    return writes_bias(make_plan(session, 2.0, None, method, queries, keep_first, keep_last, budgets, task, options))


def default_queries(session: Host, fits: bool, keep_last: int) -> str:
    """The query source of ``queries=None``: ``"repeat"`` for fitted methods; for the eviction
    baselines, which fit nothing, the context's last tokens read again (``"tail"``: SnapKV's
    observation window, a pass of ``keep_last`` tokens instead of the whole text), or
    ``"repeat"`` where they cannot be read again (a recurrent state, ``keep_last < 2``)."""
    if fits or session.memory_layout not in ("kv", "iswa") or keep_last < 2:
        return "repeat"
    return "tail"


def shipped_budgets(session: Host) -> Path | None:
    """The budgets file shipped for ``session``'s model, if it is a catalog model that has one."""
    from ..catalog import name_of

    name = name_of(session.model.path)
    path = BUDGETS_DIR / f"{name}.json" if name else None
    return path if path is not None and path.is_file() else None


def check_gate(session: Host) -> list[int]:
    if not session.can_compact:
        raise UnsupportedLayout(f"cannot compact a {session.memory_layout!r} memory: {session.gate_reason}")
    layers = session.compact_layers()
    if not layers:
        raise UnsupportedLayout(f"the {session.memory_layout!r} memory has no compactable attention layers")
    return layers


def selector_of(method: str) -> str:
    sel = AM_SELECTOR if method == "am" else method
    if sel not in available_methods():
        raise ConfigError(f"unknown method {method!r}; known: am, {', '.join(available_methods())}")
    return sel


def check_args(ratio, target_cells, keep_first, keep_last) -> None:
    if (ratio is None) == (target_cells is None):
        raise ConfigError("give exactly one of ratio= and target_cells=")
    if ratio is not None:
        check_ratio(ratio)
    if keep_first < 0 or keep_last < 1:
        raise ConfigError("keep_first must be >= 0 and keep_last >= 1 (the last cell must stay)")


def check_ratio(ratio) -> None:
    if not (isinstance(ratio, (int, float)) and ratio > 1):
        raise ConfigError(f"ratio must be a number > 1, not {ratio!r}")


def uniform(budgets) -> bool:
    return budgets is None or (isinstance(budgets, str) and budgets == "uniform")


def workers(session: Host, pipe: dict[str, Any]) -> int:
    """Threads of the array stages: option ``fit_threads``, else the session's n_threads (the
    threads its forward passes use, so ``n_threads`` sets the cost of the whole compaction)."""
    n = pipe["fit_threads"]
    return max(1, int(session.n_threads if n is None else n))

