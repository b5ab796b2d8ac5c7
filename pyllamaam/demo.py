"""``pyllamaam demo``: a document with a fact in it, compacted, saved, reloaded and asked again.

It prints, for the full cache, the query-agnostic compaction (4x) and the question-aware one
(10x), whether the answer is right, the cells, and the seconds; the compacted session is saved
and reloaded from disk before it is asked.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .evaluation.tasks import haystack_text

FACT = "Note for the archivist: the locker code is 67767."
QUESTION = "What is the locker code for the archivist?"
STEM = "The locker code for the archivist is"
ANSWER = "67767"


def document() -> str:
    """About 1K tokens of Python's reference manual with the fact a third of the way in."""
    hay = haystack_text()[20000:24200]
    cut = hay.find(". ", len(hay) // 3) + 2
    return hay[:cut] + FACT + " " + hay[cut:]


def prompt() -> str:
    return f"\n\nQuestion: {QUESTION}\nAnswer: {STEM}"


def ask(session: Any) -> str:
    """The greedy answer to the demo question (8 tokens); the session is left unchanged."""
    model = session.model
    toks, out = model.tokenize(prompt()), []
    for _ in range(8):
        out.append(int(session.eval_logits(toks + out)[-1].argmax()))
    return model.detokenize(out).strip().split("\n")[0]


def _bar(n_layers: int) -> Any:
    from tqdm import tqdm

    bar = tqdm(total=n_layers + 4, desc="compact", unit="step", file=sys.stderr, leave=False)
    seen: dict[str, int] = {}

    def update(stage: str, done: int, total: int) -> None:
        seen[stage] = done if stage == "fit" else 1
        bar.set_description_str(f"compact: {stage}", refresh=False)
        bar.update(min(bar.total, sum(seen.values())) - bar.n)

    update.close = bar.close  # type: ignore[attr-defined]
    return update


def run(model_name: str | None = None, n_gpu_layers: int = 0, **session_opts: Any) -> int:
    """``session_opts``: more options of Model.session (e.g. ``kv_type_k``, ``kv_type_v``)."""
    from . import load_model

    t_start = time.perf_counter()
    model = load_model(model_name, n_gpu_layers=n_gpu_layers)
    text = document()
    toks = model.tokenize(text, add_bos=True)
    print(f"model     {model.path.name}")
    print(f"document  {len(toks)} tokens of Python's reference manual; planted: {FACT!r}")
    print(f"question  {QUESTION}  (expected {ANSWER})\n")
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="pyllamaam-demo-"))
    with model.session(n_ctx=2 * len(toks) + 256, **session_opts) as s:
        clock = time.perf_counter()
        s.prefill(toks)
        prefill = time.perf_counter() - clock
        full = s.save(tmp / "full.pllam")
        rows.append(("full cache", s.n_cells, prefill, "prefill", ask(s)))
        for label, kw in (("4x, any question", {"ratio": 4}), ("10x, this question", {"ratio": 10, "task": prompt()})):
            s.restore(full)
            bar = _bar(len(s.compact_layers()))
            try:
                rep = s.compact(progress=bar, **kw)
            finally:
                bar.close()
            if rep.fell_back:
                print(f"{label}: compaction fell back ({rep.reason})")
            saved = s.save(tmp / f"{kw['ratio']}x.pllam")
            with model.load_session(saved) as again:  # asked from the saved file
                rows.append((label, again.n_cells, rep.total_seconds, "compaction", ask(again)))
    print(f"{'cache':20s} {'cells':>6s} {'seconds':>8s}  answer")
    for label, cells, secs, what, answer in rows:
        mark = "right" if ANSWER in answer else "WRONG"
        print(f"{label:20s} {cells:6d} {secs:7.1f}s  {answer!r} {mark}  ({what})")
    print(f"\ndone in {time.perf_counter() - t_start:.0f} s; sessions saved in {tmp}")
    return 0
