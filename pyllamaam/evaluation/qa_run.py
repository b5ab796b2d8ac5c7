"""Run the QA suite (:mod:`.qa`): models x lengths x seeds x methods x ratios, resumable.

One JSON line per (model, length, seed, method, ratio, cache type) goes to ``qa_cells.jsonl``
with every question's result, the continuation ΔNLL against the f16 full cache, the KV bytes
and the compaction's seconds; a rerun skips the lines already there. :func:`summarize` turns the
lines into accuracy with 95% intervals, relative to the full cache, as JSON, a markdown table and
a plot.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .. import memory
from ..errors import ConfigError
from . import fidelity, qa
from .plots import EVICTIONS, F16, panel, pyplot, save

#: Method name -> Session.compact keyword arguments (None: the full cache). ``task`` is filled in
#: per question for the question-aware methods (one compaction per question).
QA_METHODS: dict[str, dict[str, Any] | None] = {
    "full": None,
    "default": {},  # Session.compact's defaults, whatever they are
    "question": {"task": True},  # question-aware: the question's own queries choose the cells
    # compact(memory=M) from the session's cache (f16 by default): types, cells and method from the
    # shipped table; only with --memories
    "memory": {"memory": True},
    "memory-question": {"memory": True, "task": True},
    "sentences": memory.METHODS["sentences"],  # methods compact(memory=) may pick
    "repeat-sentences": memory.METHODS["repeat-sentences"],
    "surprisal-sentences": memory.METHODS["surprisal-sentences"],
    "am-perhead": {"method": "am", "spans": 0.0, "recent": 0.5, "queries": "repeat"},  # per-head keys + fit
    # whole sentences ranked by the whole text repeated, 0.9 of the budget, and the fit of the rest
    "am-repeat-spans": {"method": "am", "spans": 0.9, "span_score": "repeat", "queries": "repeat"},
    "kvzip": {"method": "kvzip", "queries": "repeat"},
    "chunkkv": {"method": "chunkkv"},  # scored by the context's last tokens read again (ChunkKV)
    "chunkkv-repeat": {"method": "chunkkv", "queries": "repeat"},
    "snapkv": {"method": "snapkv"},
    "window": {"method": "window"},
}


@dataclass
class QASpec:
    models: list[str] = field(default_factory=lambda: ["smollm2-135m"])
    n_tokens: list[int] = field(default_factory=lambda: [1024])
    ratios: list[float] = field(default_factory=lambda: [4.0, 10.0])
    methods: list[str] = field(default_factory=lambda: list(QA_METHODS))
    seeds: list[int] = field(default_factory=lambda: [100])
    continuation: int = 64
    n_threads: int | None = None
    options: dict[str, Any] = field(default_factory=dict)  # extra Session.compact options (tuning)
    # KV cache types, "K/V" or one name for both (llama.cpp's -ctk/-ctv); all but f16 run with
    # flash attention, which a quantized V needs
    caches: list[str] = field(default_factory=lambda: [F16])
    # memory targets (x fewer KV bytes than the f16 full cache) instead of cell ratios: each cache
    # type's cell ratio is chosen to land on them
    memories: list[float] = field(default_factory=list)

    def cells(self) -> list[Cell]:
        """Every (method, ratio, cache, memory) of a document, the full caches once per type."""
        out = []
        for cache in self.caches:
            for method in self.methods:
                if method == "full":
                    out.append(Cell(method, 0.0, cache, 0.0))
                elif self.memories:
                    out += [Cell(method, 0.0, cache, m) for m in self.memories]
                else:
                    out += [Cell(method, r, cache, 0.0) for r in self.ratios]
        return out

    def check(self) -> None:
        bad = [m for m in self.methods if m not in QA_METHODS]
        if bad:
            raise ConfigError(f"unknown QA method(s) {bad}; known: {', '.join(QA_METHODS)}")
        for c in self.caches:
            cache_types(c)



def cache_types(cache: str) -> tuple[str, str]:
    """``"q8_0/q4_0"`` -> ("q8_0", "q4_0"); ``"q8_0"`` -> ("q8_0", "q8_0")."""
    from ..kvtypes import BY_NAME

    k, _, v = cache.partition("/")
    v = v or k
    bad = [t for t in (k, v) if t not in BY_NAME]
    if bad:
        raise ConfigError(f"unknown KV cache type(s) {bad} in {cache!r}; known: {', '.join(BY_NAME)}")
    return k, v


class Cell(NamedTuple):
    method: str
    ratio: float  # cell ratio (0: the full cache, or set by ``memory``)
    cache: str = F16
    memory: float = 0.0  # x fewer bytes than the f16 full cache, when the cell is addressed by bytes


def _key(model: str, n: int, seed: int, cell: Cell) -> str:
    size = f"mem{cell.memory:g}" if cell.memory else f"{cell.ratio:g}"
    key = f"{model}|{n}|{seed}|{cell.method}|{size}"
    return key if cell.cache == F16 else f"{key}|{cell.cache}"


def run_qa(spec: QASpec, out: Path, progress: bool = True) -> Path:
    """Run every missing cell; returns the path of ``qa_cells.jsonl``."""
    from tqdm import tqdm

    from ..engine import load_model

    spec.check()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "qa_cells.jsonl"
    done = {json.loads(line)["key"] for line in path.read_text().splitlines()} if path.exists() else set()
    plan = [(m, n, s) for m in spec.models for n in spec.n_tokens for s in spec.seeds]
    cells = spec.cells()
    bar = tqdm(total=len(plan) * len(cells), disable=not progress, unit="cell", desc="qa")
    for model_name, n, seed in plan:
        todo = [c for c in cells if _key(model_name, n, seed, c) not in done]
        bar.update(len(cells) - len(todo))
        if not todo:
            continue
        with load_model(model_name) as model:
            for rec in _run_document(model, model_name, n, seed, todo, spec):
                with path.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
                bar.update(1)
    bar.close()
    return path


def build_document(model: Any, n_tokens: int, seed: int) -> qa.Document:
    """A QA document whose text tokenizes to about ``n_tokens`` with ``model``'s tokenizer."""
    n_chars, size = 4 * n_tokens, qa.sizes(n_tokens)
    for _ in range(2):
        doc = qa.make_document(seed, n_chars, **size)
        n_chars = int(n_chars * n_tokens / len(model.tokenize(doc.text)))
    return qa.make_document(seed, n_chars, **size)


def ask(session: Any, model: Any, q: qa.Question) -> dict[str, Any]:
    """One question on the session's cache (left unchanged)."""
    prompt = model.tokenize(q.prompt())
    if not q.options:
        res = fidelity.answer_check(session, prompt, model.tokenize(" " + q.answer))
        return {"kind": q.kind, "answer": q.answer, "correct": res["correct"], "prediction": res["prediction"],
                "answer_nll": res["answer_nll"]}
    lls = []
    for opt in q.options:
        toks = model.tokenize(" " + opt)
        logits = session.eval_logits(prompt + toks[:-1])[len(prompt) - 1 :]
        lls.append(-float(fidelity.nll_rows(logits, toks).sum()))
    pick = q.options[int(np.argmax(lls))]
    return {"kind": q.kind, "answer": q.answer, "correct": pick == q.answer, "prediction": pick}


def answer_positions(model: Any, toks: list[int], answers: list[str]) -> list[np.ndarray]:
    """Per answer, the positions of the tokens that spell its first occurrence in the text of
    ``toks`` (fed from position 0); empty where their pieces do not spell it."""
    pieces = [model.detokenize([t]) for t in toks]
    lens = np.array([len(p) for p in pieces])
    ends, text = np.cumsum(lens), "".join(pieces)
    out = []
    for answer in answers:
        i = text.find(answer)
        out.append(np.flatnonzero((ends > i) & (ends - lens < i + len(answer))) if i >= 0 else np.zeros(0, np.int64))
    return out


def _mark_kept(results: list[dict[str, Any]], where: list[np.ndarray], verbatim: list[list[int]]) -> None:
    """Mark each result ``kept``: its answer's tokens all lie in the compaction's verbatim ranges."""
    for r, pos in zip(results, where, strict=True):
        if len(pos):
            r["kept"] = bool(all(any(a <= p <= b for a, b in verbatim) for p in pos.tolist()))


@dataclass
class _Doc:
    """One document's tokens and what every cell of it is measured against: the f16 full cache's
    continuation logits and its K and V bytes (what llama.cpp's f16 cache holds: no bias)."""

    doc: qa.Document
    toks: list[int]
    where: list[np.ndarray]
    cont: list[int]
    full: np.ndarray | None = None
    f16_bytes: int = 0


def _run_document(model, model_name, n, seed, cells, spec):
    doc = build_document(model, n, seed)
    toks = model.tokenize(doc.text, add_bos=model.info["add_bos"])
    d = _Doc(doc, toks, answer_positions(model, toks, [q.answer for q in doc.questions]),
             model.tokenize(doc.continuation)[: spec.continuation + 1])
    for cache in dict.fromkeys([F16, *(c.cache for c in cells)]):  # f16 first: the reference
        k, v = cache_types(cache)
        # quantized caches need flash attention for V; f16 keeps the session's default
        fa = {} if cache == F16 else {"flash_attn": True}
        with model.session(n_ctx=2 * len(toks) + 512, n_threads=spec.n_threads, kv_type_k=k, kv_type_v=v, **fa) as s:
            clock = time.perf_counter()
            s.prefill(toks)
            prefill_s = time.perf_counter() - clock
            if cache == F16:
                d.full, d.f16_bytes = fidelity.continuation_logits(s, d.cont), s.kv_bytes_f16()
            base = {"model": model_name, "n_tokens": len(toks), "seed": seed, "prefill_seconds": prefill_s}
            if cache != F16:
                base["cache"] = cache
            shared: dict[str, Any] = {}  # repeat queries, one pass per session for the methods that name it
            for cell in [c for c in cells if c.cache == cache]:
                rec = {"key": _key(model_name, n, seed, cell), **base, "method": cell.method, "ratio": cell.ratio}
                size: dict[str, Any] = {"ratio": cell.ratio}
                if (QA_METHODS[cell.method] or {}).get("memory"):  # the knob decides types and cells
                    out = _run_cell(s, model, d, cell.method, {"memory": cell.memory}, spec, shared)
                    yield {**rec, "memory": cell.memory, "ratio": s.n_cells / out["cells"], **out}
                    continue
                if cell.memory:  # as many cells as fit in the f16 full cache's bytes / memory
                    # as compact(memory=): a cache left without a fitted bias (eviction, whole
                    # sentences) holds K and V only, so its budget and bytes count no bias storage
                    biased = _fits_bias(s, cell.method, spec)
                    cap_fit, cap_free = memory.budget_cells(s, d.f16_bytes / cell.memory)
                    cap = cap_fit if biased else cap_free
                    rec.update(memory=cell.memory, ratio=s.n_cells / max(cap, 1), bias_storage=biased)
                    size = {"target_cells": cap}
                    if not biased:  # a table method falling through to the default fits a bias
                        size["through_cells"] = cap_fit
                    if cap < memory.min_cells():  # the first and last cells alone take more
                        yield {**rec, "questions": [], "skipped": f"{cap} cells fit in the budget"}
                        continue
                    if cap >= s.n_cells:  # the type alone is already that small
                        yield {**rec, **_run_cell(s, model, d, "full", {}, spec, shared)}
                        continue
                yield {**rec, **_run_cell(s, model, d, cell.method, size, spec, shared)}


def _run_cell(s, model, d: _Doc, method: str, size: dict[str, Any], spec: QASpec,
              shared: dict[str, Any]) -> dict[str, Any]:
    """One method compacting to ``size`` (``ratio=``, ``target_cells=`` or ``memory=``) on the
    document in session ``s``, which is left as it was."""
    blob, n, setup = s.snapshot(), len(d.toks), (s.kv_type_k, s.kv_type_v, s.flash_attn)
    size = dict(size)
    through_cells = size.pop("through_cells", None)  # set where the method stores no bias
    kw = QA_METHODS[method]
    if kw is None:
        return {**_score(s, model, d), "cells": s.n_cells, **_bytes(s, d, bias=False)}
    kw = {k: v for k, v in {**kw, **spec.options}.items() if k != "memory"}  # memory= comes in size

    def reset() -> None:  # the cache as it was (compact(memory=) moves it to other types)
        s.retype(*setup, bias_storage=True)
        s.write_state(blob, n)

    if kw.pop("task", False):  # one compaction per question, each from the full cache
        results, secs, cells_after, sizes = [], [], [], []
        for q, pos in zip(d.doc.questions, d.where, strict=True):
            reset()
            rep = s.compact(task=q.prompt(), **size, **kw)
            results.append({**ask(s, model, q), "fell_back": rep.fell_back})
            _mark_kept(results[-1:], [pos], rep.verbatim)
            secs.append(rep.total_seconds)
            cells_after.append(s.n_cells)
            sizes.append(s.kv_bytes())
        reset()
        return {"questions": results, "accuracy": _acc(results), "compaction_seconds": float(np.mean(secs)),
                "cells": int(np.mean(cells_after)), "kv_bytes": int(np.mean(sizes)),
                "bytes_ratio": d.f16_bytes / float(np.mean(sizes))}
    reset()
    capture = 0.0
    if kw.get("queries") == "repeat" and kw.get("on_policy", 1) == 1:
        # one repeat pass serves every method and ratio of the document that names it; its cost is
        # added to each compaction that uses it (the default runs its own passes)
        ropts = {k: v for k, v in kw.items() if k.startswith("repeat_")}
        key = json.dumps(ropts, sort_keys=True)
        if key not in shared:
            shared[key] = s.reference_queries("repeat", **ropts)
        kw["queries"] = shared[key]
        capture = shared[key].seconds
    kw = {k: v for k, v in kw.items() if not (capture and k.startswith("repeat_"))}
    if "target_cells" in size and method in memory.METHODS:  # as compact(memory=) runs a method it picks
        mine = {k: v for k, v in kw.items() if k not in (memory.METHODS[method] or {})}
        rep, through = memory.compact_with(s, method, mine, through_cells=through_cells, **size)
    else:
        rep, through = s.compact(**size, **kw), None
    stages = dict(rep.seconds)
    stages["queries"] = stages.get("queries", 0.0) + capture
    scored = _score(s, model, d)
    _mark_kept(scored["questions"], d.where, rep.verbatim)
    # K and V only where the budget left out the bias (unless the default's fit ran instead)
    biased = through_cells is None or through is not None
    rec = {**scored, "cells": s.n_cells, **_bytes(s, d, bias=biased), "compaction_seconds": rep.total_seconds + capture,
           "stages": stages, "fell_back": rep.fell_back, "reason": rep.reason}
    through = through or (rep.memory or {}).get("instead_of")
    if through:  # the picked method failed its gates: the default ran
        rec["fell_through"] = through["reason"]
    if rep.memory:
        rec["picked"] = f"{rep.memory['kv_type_k']}/{rep.memory['kv_type_v']} {rep.memory['method']}"
        rec["bias_storage"] = rep.memory.get("bias_storage", True)
    reset()
    return rec


def _fits_bias(s, method: str, spec: QASpec) -> bool:
    """Whether ``method`` (a :data:`QA_METHODS` name) leaves a fitted bias in the cache of session
    ``s``: the question-aware ones are taken to (their plan depends on the question)."""
    from ..pipeline.plan import fits_bias

    kw = QA_METHODS[method]
    if kw is None:
        return False
    if kw.get("task") or kw.get("memory"):
        return True
    opts = {k: v for k, v in {**kw, **spec.options}.items() if not k.startswith("repeat_")}
    return fits_bias(s, **opts)


def _bytes(s, d: _Doc, bias: bool = True) -> dict[str, Any]:
    """KV bytes, with the bias storage where compaction uses it; a full cache of any type counts
    K and V only, as llama.cpp stores it."""
    b = s.kv_bytes(detail=True)
    size = b.total if bias else b.k + b.v
    return {"kv_bytes": size, "bytes_ratio": d.f16_bytes / size}


def _acc(results: list[dict[str, Any]]) -> float:
    return sum(r["correct"] for r in results) / max(1, len(results))


def _score(s, model, d: _Doc) -> dict[str, Any]:
    results = [ask(s, model, q) for q in d.doc.questions]
    fid = fidelity.fidelity(d.full, fidelity.continuation_logits(s, d.cont), d.cont[1:])
    return {"questions": results, "accuracy": _acc(results), "delta_nll": fid["delta_nll"], "kl": fid["kl"]}


def load(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarize(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (model, document length, method, ratio, cache type): accuracy over every question with
    its 95% interval, the same relative to the f16 full cache on the same documents, the KV bytes
    relative to that cache, mean ΔNLL, KL and compaction/prefill."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for c in cells:
        if c.get("skipped"):  # a budget the method cannot reach
            continue
        # cells addressed by memory reach it with a cell ratio of their own per document
        ratio = 0.0 if c.get("memory") else c["ratio"]
        key = (c["model"], _length(c), c["method"], ratio, c.get("cache", F16), c.get("memory", 0.0))
        groups.setdefault(key, []).append(c)
    full = {(c["model"], c["n_tokens"], c["seed"]): c for c in cells if c["method"] == "full" and "cache" not in c}
    rows = []
    order = sorted(groups.items(), key=lambda kv: (*kv[0][:2], kv[0][4] != F16, kv[0][4], kv[0][3], kv[0][2]))
    for (model, length, method, ratio, cache, target), cs in order:
        qs = [q for c in cs for q in c["questions"]]
        k = sum(q["correct"] for q in qs)
        ref = [full.get((model, c["n_tokens"], c["seed"])) for c in cs]
        ref_k = sum(q["correct"] for r in ref if r for q in r["questions"])
        ref_n = sum(len(r["questions"]) for r in ref if r)
        lo, hi = qa.wilson(k, len(qs))
        sizes = [c["bytes_ratio"] for c in cs if c.get("bytes_ratio")]
        row = {
            "model": model, "tokens": length, "method": method, "cache": cache, "memory": target,
            "ratio": ratio or float(np.mean([c["ratio"] for c in cs])),
            "documents": len(cs), "questions": len(qs),
            "accuracy": k / max(1, len(qs)), "ci95": [lo, hi],
            "of_full": (k / ref_k) if ref_k and all(ref) else None,
            "full_accuracy": ref_k / ref_n if ref_n and all(ref) else None,  # on the same documents
            # x fewer KV bytes than the f16 full cache (runs that recorded it)
            "bytes_ratio": float(np.mean(sizes)) if sizes else None,
            "by_kind": {kind: float(np.mean([q["correct"] for q in qs if q["kind"] == kind]))
                        for kind in sorted({q["kind"] for q in qs})},
            "lengths": sorted({c["n_tokens"] for c in cs}),
        }
        if method != "full":
            d = [c["delta_nll"] for c in cs if c.get("delta_nll") is not None]
            row["delta_nll"] = float(np.mean(d)) if d else None
            row["kl"] = float(np.mean([c["kl"] for c in cs if c.get("kl") is not None])) if d else None
            ratios = [c.get("compaction_seconds", 0.0) / c["prefill_seconds"] for c in cs]  # 0: types alone
            row["compaction_over_prefill"] = float(np.mean(ratios))
            # compactions rolled back: whole cells, or single questions of the question-aware methods
            row["fell_back"] = sum(bool(c.get("fell_back")) for c in cs) + sum(bool(q.get("fell_back")) for q in qs)
            row["fell_through"] = sum(bool(c.get("fell_through")) for c in cs)  # the table's pick, then the default
            marked = [q for q in qs if "kept" in q]  # runs that recorded it
            kept = [q for q in marked if q["kept"]]
            row["answers_kept"] = len(kept) / len(marked) if marked else None
            row["accuracy_kept"] = sum(q["correct"] for q in kept) / len(kept) if kept else None
            lost = [q for q in marked if not q["kept"]]
            row["accuracy_not_kept"] = sum(q["correct"] for q in lost) / len(lost) if lost else None
        elif cache != F16:
            d = [c["delta_nll"] for c in cs if c.get("delta_nll") is not None]
            row["delta_nll"] = float(np.mean(d)) if d else None
        rows.append(row)
    return rows


def _length(cell: dict[str, Any]) -> int:
    """The document length asked for (the key's), not the tokens it came to."""
    return int(cell["key"].split("|")[1])


def write_report(out: Path) -> dict[str, Any]:
    """qa_summary.json, qa_results.md and one accuracy-vs-ratio plot per model, from qa_cells.jsonl."""
    rows = summarize(load(out / "qa_cells.jsonl"))
    (out / "qa_summary.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["| model | tokens | method | ratio | cache | bytes vs f16 | accuracy (95% CI) | of full | ΔNLL "
             "| compaction/prefill | questions | answers kept verbatim | accuracy kept / not |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "–" if r["method"] == "full" else f"{r['ratio']:g}x"
        size = "–" if r.get("bytes_ratio") is None else f"{r['bytes_ratio']:.1f}x fewer"
        lines.append(
            f"| {r['model']} | {r['tokens']} | {r['method']} | {ratio} | {r.get('cache', F16)} | {size} | "
            f"{r['accuracy']:.2f} ({r['ci95'][0]:.2f}–{r['ci95'][1]:.2f}) | {_fmt(r['of_full'], 2)} | "
            f"{_fmt(r.get('delta_nll'), 3)} | {_fmt(r.get('compaction_over_prefill'), 2)} | {r['questions']} | "
            f"{_fmt(r.get('answers_kept'), 2)} | "
            f"{_fmt(r.get('accuracy_kept'), 2)} / {_fmt(r.get('accuracy_not_kept'), 2)} |"
        )
    (out / "qa_results.md").write_text("\n".join(lines) + "\n")
    (out / "qa_table.md").write_text(headline(rows))
    plots = _plot(rows, out)
    if any(r["memory"] for r in rows):
        from . import qa_memory

        (out / "qa_memory.md").write_text(qa_memory.table(rows))
        plots += qa_memory.plot(rows, out)
    return {"rows": rows, "plots": plots}


def headline(rows: list[dict[str, Any]]) -> str:
    """One table per model and ratio: QA accuracy of the full cache (on the default's documents),
    the default, question-aware compaction and the best eviction baseline; ΔNLL and
    compaction/prefill of the default and that baseline; the default's questions. f16 caches only
    (the view by bytes is :mod:`.qa_memory`'s)."""
    rows = [r for r in rows if r["cache"] == F16]
    by = {(r["model"], r["tokens"], r["method"], r["ratio"]): r for r in rows}
    out = ["| model | tokens | ratio | full | default | question-aware | best eviction | ΔNLL default / eviction "
           "| compaction/prefill default / eviction | questions |", "|---|---|---|---|---|---|---|---|---|---|"]
    for model, n in sorted({(r["model"], r["tokens"]) for r in rows}):
        full = by.get((model, n, "full", 0.0))
        mine = [r for r in rows if (r["model"], r["tokens"]) == (model, n) and r["method"] != "full"]
        for ratio in sorted({r["ratio"] for r in mine}):
            d, q = by.get((model, n, "default", ratio)), by.get((model, n, "question", ratio))
            ev = [by[(model, n, m, ratio)] for m in EVICTIONS if (model, n, m, ratio) in by]
            best = max(ev, key=lambda r: (r["accuracy"], -(r.get("delta_nll") or 0)), default=None)

            def acc(r: dict[str, Any] | None) -> str:
                return "–" if r is None else f"{r['accuracy']:.2f}"

            ref = acc(full) if d is None or d.get("full_accuracy") is None else f"{d['full_accuracy']:.2f}"
            out.append(
                f"| {model} | {n} | {ratio:g}x | {ref} | {acc(d)} | {acc(q)} | "
                f"{'–' if best is None else best['method'] + ' ' + acc(best)} | "
                f"{_fmt(d and d.get('delta_nll'), 3)} / {_fmt(best and best.get('delta_nll'), 3)} | "
                f"{_fmt(d and d.get('compaction_over_prefill'), 2)} / "
                f"{_fmt(best and best.get('compaction_over_prefill'), 2)} | {'–' if d is None else d['questions']} |"
            )
    return "\n".join(out) + "\n"


def _fmt(x: float | None, digits: int) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _plot(rows: list[dict[str, Any]], out: Path) -> list[str]:
    plt = pyplot()
    if plt is None:
        return []
    names = []
    rows = [r for r in rows if r["cache"] == F16]  # by cells; the view by bytes is qa_memory's
    for model in sorted({r["model"] for r in rows}):
        lengths = sorted({r["tokens"] for r in rows if r["model"] == model})
        methods = sorted({r["method"] for r in rows if r["model"] == model} - {"full"})
        color = {m: f"C{i % 10}" for i, m in enumerate(methods)}  # one color per method in every panel
        fig, axes = plt.subplots(1, len(lengths), figsize=(6.4 * len(lengths), 4.2), squeeze=False)
        for ax, n in zip(axes[0], lengths, strict=True):
            mine = [r for r in rows if (r["model"], r["tokens"]) == (model, n)]
            full = [r for r in mine if r["method"] == "full"]
            if full:
                ax.axhline(full[0]["accuracy"], color="k", ls="--", lw=1, label="full cache")
            for method in sorted({r["method"] for r in mine} - {"full"}):
                pts = sorted((r["ratio"], r["accuracy"], *r["ci95"]) for r in mine if r["method"] == method)
                x, y, lo, hi = (np.array(v) for v in zip(*pts, strict=True))
                ax.errorbar(x, y, yerr=[y - lo, hi - y], marker="o", capsize=3, label=method, color=color[method])
            ticks = sorted({r["ratio"] for r in mine if r["method"] != "full"})
            panel(ax, ticks, "compaction ratio", f"{model}, {n}-token documents")
        names.append(save(plt, fig, out / f"qa_{model}.png"))
    return names
