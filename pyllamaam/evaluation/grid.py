"""The quality grid: methods x ratios x models x context lengths x seeds, resumable.

Each context (model, length, seed) is prefilled once with its queries captured; every
(method, ratio) cell restores that state from a file, compacts, and is scored on the task
questions and on the true continuation. One JSON line per finished cell goes to
``cells.jsonl``; a rerun skips the cells already there.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..pipeline import PIPELINE_DEFAULTS
from . import baselines, fidelity, tasks

#: Method name -> keyword arguments of Session.compact (None: the full cache, not compacted).
#: Eviction baselines read the queries captured during prefill (SnapKV's observation window,
#: H2O's accumulated attention), so they need no extra pass. The selectors that only this grid
#: reports live in :mod:`.baselines`, registered when it is imported.
METHODS: dict[str, dict[str, Any] | None] = {
    "full": None,
    # the paper's plain AM: uniform budgets, repeat queries, every layer fitted at once; the am-*
    # variants below change one thing from it (on_policy=1 pinned, as when they were measured)
    "am": {"method": "am", "queries": "repeat", "on_policy": 1},
    # Session.compact's defaults, whatever they are (the default query source is repeat)
    "default": {"method": "am"},
    # the model's shipped head budgets (budget_cells="fill": equal cells and keys as am)
    "am-budgets": {"method": "am", "queries": "repeat", "budgets": "shipped", "on_policy": 1},
    "am-context": {"method": "am", "queries": "context"},
    # queries from the model's own answers to 3 prompts about the context (48 tokens each)
    "am-selfstudy": {"method": "am", "queries": "self-study", "on_policy": 1},
    "am-mix": {"method": "am", "queries": "repeat+self-study", "on_policy": 1},
    # on-policy refit: 3 layer groups fitted in order, each later group's queries re-captured
    "am-op2": {"method": "am", "queries": "repeat", "on_policy": 2},
    "am-op3": {"method": "am", "queries": "repeat", "on_policy": 3},
    "am-op3-budgets": {"method": "am", "queries": "repeat", "on_policy": 3, "budgets": "shipped"},
    "am-op3-mix": {"method": "am", "queries": "repeat+self-study", "on_policy": 3},
    "am-op3-selfstudy": {"method": "am", "queries": "self-study", "on_policy": 3},
    # on-policy refits with the span fitted in pieces of 512 cells (keys spread over the span)
    "am-op3-chunk": {"method": "am", "queries": "repeat", "on_policy": 3, "chunk_tokens": 512},
    # on-policy refits repeating evenly spread pieces of 512 tokens of the text (a cheaper pass)
    "am-op3-r512": {"method": "am", "queries": "repeat", "on_policy": 3, "repeat_max_tokens": 512},
    # on-policy refits with the hybrid keys (attn-rms and the repeat pass's last-window snapkv
    # rankings interleaved) instead of attn-rms alone
    "am-op3-hybrid": {"method": baselines.Hybrid.name, "queries": "repeat", "on_policy": 3},
    # on-policy refits whose queries add the context's last 256 tokens read again (forward reading,
    # as the next tokens read) to the repeat pass (~10% of the rows at 2K)
    "am-op3-rtail": {"method": "am", "queries": "repeat+tail", "tail_tokens": 256, "on_policy": 3},
    # on-policy refits with a smaller exact recent window (option recent; the default is 0.5)
    "am-op3-rec0.3": {"method": "am", "queries": "repeat", "on_policy": 3, "recent": 0.3},
    "am-op3-rec0.4": {"method": "am", "queries": "repeat", "on_policy": 3, "recent": 0.4},
    # and larger ones: a copy in the continuation reads an exact recent token, the fit cannot
    "am-op3-rec0.8": {"method": "am", "queries": "repeat", "on_policy": 3, "recent": 0.8},
    "am-op3-rec0.9": {"method": "am", "queries": "repeat", "on_policy": 3, "recent": 0.9},
    # on-policy refits on 4x the fitted query rows (max_queries, 2048 rows per KV head by default:
    # 512 tokens of Gemma-3's 4 query heads, an eighth of a 4K repeat pass)
    "am-op3-q8k": {"method": "am", "queries": "repeat", "on_policy": 3, "max_queries": 8192},
    # on-policy refits on the repeat pass plus the prefill's own queries (fixed: not re-captured)
    "am-op3-rctx": {"method": "am", "queries": "repeat+context", "on_policy": 3},
    # SnapKV's keys (the repeat pass's last window, max-pooled) with the Attention Matching fit
    "am-snapkv": {"method": "snapkv", "queries": "repeat", "fit": True, "on_policy": 1},
    "snapkv": {"method": "snapkv", "queries": "context"},
    "h2o": {"method": baselines.AttnMean.name, "queries": "context", "fit": False},
    "window": {"method": "window", "queries": "context"},
    "random": {"method": baselines.Random.name, "queries": "context"},
}
# every named variant keeps the per-head selection and exact recent window it was measured with
# (no shared spans); only "default" follows Session.compact's defaults as they are now
for _name, _kw in METHODS.items():
    if _kw is not None and _name != "default":
        _kw.setdefault("spans", 0.0)
#: Methods that keep original keys and values (the eviction baselines AM is compared to).
EVICTION = ("snapkv", "h2o", "window", "random")


@dataclass
class GridSpec:
    """What to run; every field is recorded with the results."""

    models: list[str] = field(default_factory=lambda: ["smollm2-135m"])
    n_tokens: list[int] = field(default_factory=lambda: [1024, 2048])
    ratios: list[float] = field(default_factory=lambda: [2, 5, 10, 20, 50])
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    kinds: list[str] = field(default_factory=lambda: list(tasks.KINDS))
    continuation: int = 64  # tokens of true continuation for KL / NLL
    keep_first: int = 4
    keep_last: int = 32
    n_threads: int | None = None

    def check(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ConfigError(f"unknown method(s) {bad}; known: {', '.join(METHODS)}")
        if any(r <= 1 for r in self.ratios):
            raise ConfigError("ratios must be > 1")
        for k in self.kinds:
            tasks.make_task(k, 0)

    def cells(self) -> Iterator[tuple[str, int, int, str, float]]:
        """(model, n_tokens, seed, method, ratio); the full cache has ratio 1."""
        for model in self.models:
            for n in self.n_tokens:
                for seed in self.seeds:
                    for method in self.methods:
                        for ratio in [1.0] if method == "full" else self.ratios:
                            yield model, n, seed, method, float(ratio)


def cell_key(model: str, n: int, seed: int, method: str, ratio: float) -> str:
    return f"{model}|{n}|{seed}|{method}|{float(ratio):g}"


def load_cells(path: Path) -> list[dict[str, Any]]:
    """The finished cells in a results JSONL (a torn last line is ignored)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _model_name(name: str) -> str | None:
    return None if name in ("smollm2-135m", "default") else name


def run_grid(spec: GridSpec, out: Path, progress: bool = True) -> Path:
    """Run every cell of ``spec`` not yet in ``out/cells.jsonl``; returns that path."""
    import pyllamaam

    spec.check()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "cells.jsonl"
    (out / "grid.json").write_text(json.dumps(asdict(spec), indent=1))  # this run's spec
    with (out / "runs.jsonl").open("a") as fh:  # every run into this folder, for provenance
        fh.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "spec": asdict(spec)}) + "\n")
    done = {r["key"] for r in load_cells(path)}
    todo = [c for c in spec.cells() if cell_key(*c) not in done]
    bar = _bar(len(todo), progress)
    by_ctx: dict[tuple[str, int, int], list[tuple[str, float]]] = {}
    for model, n, seed, method, ratio in todo:
        by_ctx.setdefault((model, n, seed), []).append((method, ratio))
    with path.open("a") as fh:
        for model_name in dict.fromkeys(m for m, _, _ in by_ctx):
            with pyllamaam.load_model(_model_name(model_name)) as model:
                for (m, n, seed), cells in by_ctx.items():
                    if m != model_name:
                        continue
                    for rec in _run_context(model, model_name, n, seed, cells, spec):
                        fh.write(json.dumps(rec) + "\n")
                        fh.flush()
                        bar.update(1)
    bar.close()
    return path


def _bar(total: int, on: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, disable=not on, unit="cell", desc="eval")


def build_context(model: Any, n_tokens: int, seed: int, kinds: list[str]) -> tasks.Context:
    """A task suite whose text tokenizes to about ``n_tokens`` with ``model``'s tokenizer."""
    n_chars = 4 * n_tokens
    for _ in range(2):  # the inserts tokenize denser than prose: rescale once from a draft
        ctx = tasks.make_suite(kinds, seed, n_chars)
        n_chars = int(n_chars * n_tokens / len(model.tokenize(ctx.text)))
    return tasks.make_suite(kinds, seed, n_chars)


def _run_context(model, model_name, n, seed, cells, spec) -> Iterator[dict[str, Any]]:
    ctx = build_context(model, n, seed, spec.kinds)
    toks = model.tokenize(ctx.text, add_bos=model.info["add_bos"])
    cont = model.tokenize(ctx.continuation)[: spec.continuation + 1]
    copied = fidelity.copied_targets(toks, cont)
    questions = [(t, model.tokenize(ctx.prompt(t)), model.tokenize(" " + t.answer)) for t in ctx.tasks]
    base = {"model": model_name, "n_tokens_target": n, "n_tokens": len(toks), "seed": seed}
    with model.session(n_ctx=2 * len(toks) + 512, n_threads=spec.n_threads) as s, tempfile.TemporaryDirectory() as tmp:
        s.capture_context_queries(cap=max(4096, len(toks)))
        clock = time.perf_counter()
        s.prefill(toks)
        prefill_s = time.perf_counter() - clock
        saved = s.save(Path(tmp) / "full.session")
        full = fidelity.continuation_logits(s, cont)
        shared: dict[str, Any] = {}  # query source -> ReferenceQueries, captured once per context
        for method, ratio in cells:
            rec = {**base, "key": cell_key(model_name, n, seed, method, ratio), "method": method, "ratio": ratio}
            rec["prefill_seconds"] = prefill_s
            s.restore(saved)
            kw = METHODS[method]
            if kw is not None:
                kw = {**kw, "seed": seed} if kw["method"] == baselines.Random.name else dict(kw)
                capture = 0.0
                # a forward pass: run it once, reuse it for every ratio (on-policy refits re-capture)
                kw.setdefault("queries", "repeat")
                if kw["queries"] != "context" and kw.get("on_policy", PIPELINE_DEFAULTS["on_policy"]) == 1:
                    if kw["queries"] not in shared:
                        shared[kw["queries"]] = s.reference_queries(kw["queries"], spec.keep_first, spec.keep_last)
                    kw["queries"] = shared[kw["queries"]]
                    capture = kw["queries"].seconds
                rep = s.compact(ratio=ratio, keep_first=spec.keep_first, keep_last=spec.keep_last, verify=False, **kw)
                rec["compaction"] = rep.to_dict()
                # the honest cost of one compaction includes its capture pass, though the grid shares it
                rec["compaction"]["seconds"]["queries"] += capture
                rec["compaction"]["total_seconds"] += capture
                rec["compaction_seconds"] = rep.total_seconds + capture
            rec["fidelity"] = fidelity.fidelity(full, fidelity.continuation_logits(s, cont), cont[1:], copied)
            rec["tasks"] = [
                {"kind": t.kind, "answer": t.answer, **fidelity.answer_check(s, q, a)} for t, q, a in questions
            ]
            rec["accuracy"] = sum(t["correct"] for t in rec["tasks"]) / len(rec["tasks"])
            rec["token_accuracy"] = sum(t["token_accuracy"] for t in rec["tasks"]) / len(rec["tasks"])
            rec["answer_nll"] = sum(t["answer_nll"] for t in rec["tasks"]) / len(rec["tasks"])
            rec["cells"] = s.n_cells
            rec["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            yield rec
