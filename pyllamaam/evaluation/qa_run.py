"""Run the QA suite (:mod:`.qa`): models x lengths x seeds x methods x ratios, resumable.

One JSON line per (model, length, seed, method, ratio) goes to ``qa_cells.jsonl`` with every
question's result, the continuation ΔNLL against the full cache and the compaction's seconds;
a rerun skips the lines already there. :func:`summarize` turns the lines into accuracy with 95%
intervals, relative to the full cache, as JSON, a markdown table and a plot.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from . import fidelity, qa

#: Method name -> Session.compact keyword arguments (None: the full cache). ``task`` is filled in
#: per question for the question-aware methods (one compaction per question).
QA_METHODS: dict[str, dict[str, Any] | None] = {
    "full": None,
    "default": {},  # Session.compact's defaults, whatever they are
    "question": {"task": True},  # question-aware: the question's own queries choose the cells
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

    def check(self) -> None:
        bad = [m for m in self.methods if m not in QA_METHODS]
        if bad:
            raise ConfigError(f"unknown QA method(s) {bad}; known: {', '.join(QA_METHODS)}")


def _key(model: str, n: int, seed: int, method: str, ratio: float) -> str:
    return f"{model}|{n}|{seed}|{method}|{ratio:g}"


def run_qa(spec: QASpec, out: Path, progress: bool = True) -> Path:
    """Run every missing cell; returns the path of ``qa_cells.jsonl``."""
    from tqdm import tqdm

    from ..engine import load_model

    spec.check()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "qa_cells.jsonl"
    done = {json.loads(line)["key"] for line in path.read_text().splitlines()} if path.exists() else set()
    plan = [(m, n, s) for m in spec.models for n in spec.n_tokens for s in spec.seeds]
    cells = [(me, r) for me in spec.methods for r in ([0.0] if me == "full" else spec.ratios)]
    bar = tqdm(total=len(plan) * len(cells), disable=not progress, unit="cell", desc="qa")
    for model_name, n, seed in plan:
        todo = [c for c in cells if _key(model_name, n, seed, *c) not in done]
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


def _run_document(model, model_name, n, seed, cells, spec):
    doc = build_document(model, n, seed)
    toks = model.tokenize(doc.text, add_bos=model.info["add_bos"])
    where = answer_positions(model, toks, [q.answer for q in doc.questions])
    cont = model.tokenize(doc.continuation)[: spec.continuation + 1]
    with model.session(n_ctx=2 * len(toks) + 512, n_threads=spec.n_threads) as s:
        clock = time.perf_counter()
        s.prefill(toks)
        prefill_s = time.perf_counter() - clock
        blob = s._snapshot()
        full = fidelity.continuation_logits(s, cont)
        shared: dict[str, Any] = {}
        for method, ratio in cells:
            base = {"key": _key(model_name, n, seed, method, ratio), "model": model_name, "n_tokens": len(toks),
                    "seed": seed, "method": method, "ratio": ratio, "prefill_seconds": prefill_s}
            kw = QA_METHODS[method]
            if kw is None:
                yield {**base, **_score(s, model, doc, full, cont), "cells": s.n_cells}
                continue
            kw = {**kw, **spec.options}
            if kw.pop("task", False):  # one compaction per question, each from the full cache
                results, secs, cells_after = [], [], []
                for q, pos in zip(doc.questions, where, strict=True):
                    s._write_blob(blob, len(toks))
                    rep = s.compact(ratio=ratio, task=q.prompt(), **kw)
                    results.append({**ask(s, model, q), "fell_back": rep.fell_back})
                    _mark_kept(results[-1:], [pos], rep.verbatim)
                    secs.append(rep.total_seconds)
                    cells_after.append(s.n_cells)
                s._write_blob(blob, len(toks))
                yield {**base, "questions": results, "accuracy": _acc(results),
                       "compaction_seconds": float(np.mean(secs)), "cells": int(np.mean(cells_after))}
                continue
            s._write_blob(blob, len(toks))
            capture = 0.0
            if kw.get("queries") == "repeat" and kw.get("on_policy", 1) == 1:
                # one repeat pass serves every method and ratio of the document that names it; its
                # cost is added to each compaction that uses it (the default runs its own passes)
                ropts = {k: v for k, v in kw.items() if k.startswith("repeat_")}
                key = json.dumps(ropts, sort_keys=True)
                if key not in shared:
                    shared[key] = s.reference_queries("repeat", **ropts)
                kw["queries"] = shared[key]
                capture = shared[key].seconds
            rep = s.compact(ratio=ratio, **{k: v for k, v in kw.items() if not (capture and k.startswith("repeat_"))})
            stages = dict(rep.seconds)
            stages["queries"] = stages.get("queries", 0.0) + capture
            scored = _score(s, model, doc, full, cont)
            _mark_kept(scored["questions"], where, rep.verbatim)
            rec = {**base, **scored, "cells": s.n_cells,
                   "compaction_seconds": rep.total_seconds + capture, "stages": stages, "fell_back": rep.fell_back,
                   "reason": rep.reason}
            s._write_blob(blob, len(toks))
            yield rec


def _acc(results: list[dict[str, Any]]) -> float:
    return sum(r["correct"] for r in results) / max(1, len(results))


def _score(s, model, doc, full, cont) -> dict[str, Any]:
    results = [ask(s, model, q) for q in doc.questions]
    fid = fidelity.fidelity(full, fidelity.continuation_logits(s, cont), cont[1:])
    return {"questions": results, "accuracy": _acc(results), "delta_nll": fid["delta_nll"], "kl": fid["kl"]}


def load(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarize(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (model, document length, method, ratio): accuracy over every question with its 95%
    interval, the same relative to the full cache on the same documents, mean ΔNLL, KL and
    compaction/prefill."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for c in cells:
        groups.setdefault((c["model"], _length(c), c["method"], c["ratio"]), []).append(c)
    full = {(c["model"], c["n_tokens"], c["seed"]): c for c in cells if c["method"] == "full"}
    rows = []
    for (model, length, method, ratio), cs in sorted(groups.items(), key=lambda kv: (*kv[0][:2], kv[0][3], kv[0][2])):
        qs = [q for c in cs for q in c["questions"]]
        k = sum(q["correct"] for q in qs)
        ref = [full.get((model, c["n_tokens"], c["seed"])) for c in cs]
        ref_k = sum(q["correct"] for r in ref if r for q in r["questions"])
        ref_n = sum(len(r["questions"]) for r in ref if r)
        lo, hi = qa.wilson(k, len(qs))
        row = {
            "model": model, "tokens": length, "method": method, "ratio": ratio, "documents": len(cs),
            "questions": len(qs),
            "accuracy": k / max(1, len(qs)), "ci95": [lo, hi],
            "of_full": (k / ref_k) if ref_k and all(ref) else None,
            "full_accuracy": ref_k / ref_n if ref_n and all(ref) else None,  # on the same documents
            "by_kind": {kind: float(np.mean([q["correct"] for q in qs if q["kind"] == kind]))
                        for kind in sorted({q["kind"] for q in qs})},
            "lengths": sorted({c["n_tokens"] for c in cs}),
        }
        if method != "full":
            d = [c["delta_nll"] for c in cs if c.get("delta_nll") is not None]
            row["delta_nll"] = float(np.mean(d)) if d else None
            row["kl"] = float(np.mean([c["kl"] for c in cs if c.get("kl") is not None])) if d else None
            ratios = [c["compaction_seconds"] / c["prefill_seconds"] for c in cs]
            row["compaction_over_prefill"] = float(np.mean(ratios))
            row["fell_back"] = sum(bool(c.get("fell_back")) for c in cs)
            marked = [q for q in qs if "kept" in q]  # runs that recorded it
            kept = [q for q in marked if q["kept"]]
            row["answers_kept"] = len(kept) / len(marked) if marked else None
            row["accuracy_kept"] = sum(q["correct"] for q in kept) / len(kept) if kept else None
            lost = [q for q in marked if not q["kept"]]
            row["accuracy_not_kept"] = sum(q["correct"] for q in lost) / len(lost) if lost else None
        rows.append(row)
    return rows


def _length(cell: dict[str, Any]) -> int:
    """The document length asked for (the key's), not the tokens it came to."""
    return int(cell["key"].split("|")[1])


def write_report(out: Path) -> dict[str, Any]:
    """qa_summary.json, qa_results.md and one accuracy-vs-ratio plot per model, from qa_cells.jsonl."""
    rows = summarize(load(out / "qa_cells.jsonl"))
    (out / "qa_summary.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["| model | tokens | method | ratio | accuracy (95% CI) | of full | ΔNLL | compaction/prefill "
             "| questions | answers kept verbatim | accuracy kept / not |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "–" if r["method"] == "full" else f"{r['ratio']:g}x"
        lines.append(
            f"| {r['model']} | {r['tokens']} | {r['method']} | {ratio} | "
            f"{r['accuracy']:.2f} ({r['ci95'][0]:.2f}–{r['ci95'][1]:.2f}) | {_fmt(r['of_full'], 2)} | "
            f"{_fmt(r.get('delta_nll'), 3)} | {_fmt(r.get('compaction_over_prefill'), 2)} | {r['questions']} | "
            f"{_fmt(r.get('answers_kept'), 2)} | "
            f"{_fmt(r.get('accuracy_kept'), 2)} / {_fmt(r.get('accuracy_not_kept'), 2)} |"
        )
    (out / "qa_results.md").write_text("\n".join(lines) + "\n")
    (out / "qa_table.md").write_text(headline(rows))
    plots = _plot(rows, out)
    return {"rows": rows, "plots": plots}


#: The eviction baselines the headline compares the default with.
EVICTIONS = ("kvzip", "chunkkv", "snapkv", "window")


def headline(rows: list[dict[str, Any]]) -> str:
    """One table per model and ratio: QA accuracy of the full cache (on the default's documents),
    the default, question-aware compaction and the best eviction baseline; ΔNLL and
    compaction/prefill of the default and that baseline; the default's questions."""
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
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    names = []
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
            ax.set_xscale("log")
            ticks = sorted({r["ratio"] for r in mine if r["method"] != "full"})
            ax.set_xticks(ticks, [f"{t:g}x" for t in ticks])
            ax.minorticks_off()
            ax.set_xlabel("compaction ratio")
            ax.set_ylabel("QA accuracy")
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(f"{model}, {n}-token documents")
            ax.legend(fontsize=7)
        name = f"qa_{model}.png"
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        names.append(name)
    return names
