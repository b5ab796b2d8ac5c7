"""Answer-sentence recall: how many of the QA documents' answers a sentence ranking keeps verbatim.

For each QA document (1K tokens, ``--seeds``), compact with ``span_score="cache"`` and
``spans=1`` (the memory method "sentences") at each ratio and count the answers whose tokens all
lie in the cells kept verbatim; then rank the same span's sentences by other scores, keep as many
cells (sentences by their sum over ``len ** chunks.UNIT_POWER``, plus the first 4 and last 32
cells) and count again. No question is asked: this is the ceiling a sentence ranking sets, in
seconds per document instead of a QA run. Scores: ``cache`` (the compaction's own), ``surprisal``
(each token's negative log-likelihood, :meth:`Session.token_nll`), ``cache+surprisal`` (the two
ranks summed, :func:`pyllamaam.compact.chunks.with_surprisal`). Prints JSON.

Run: .venv/bin/python benchmarks/sentence_recall.py --model smollm2-135m --seeds 1,2,3,4,5,6,7,8,9
"""

from __future__ import annotations

import argparse
import json

import numpy as np

import pyllamaam
from pyllamaam import kvsplit, memory
from pyllamaam.compact import chunks
from pyllamaam.evaluation import qa_run
from pyllamaam.pipeline import select

KEEP_FIRST, KEEP_LAST = 4, 32


def _kept(where: list[np.ndarray], cells: set[int]) -> int:
    return sum(all(int(p) in cells for p in w) for w in where if len(w))


def document(model, seed: int, ratios: list[float], n_tokens: int) -> list[dict]:
    doc = qa_run.build_document(model, n_tokens, seed)
    toks = model.tokenize(doc.text, add_bos=model.info["add_bos"])
    where = qa_run.answer_positions(model, toks, [q.answer for q in doc.questions])
    rows = []
    with model.session(n_ctx=2 * len(toks) + 512) as s:
        s.prefill(toks)
        blob, n = s.snapshot(), s.n_cells
        nll = s.token_nll().astype(np.float64)
        kv = s.get_kv(blob)
        split = kvsplit.split_cells(kv, KEEP_FIRST, KEEP_LAST)
        span = kv.positions[split.span].astype(np.int64)
        cache = select.cache_scores(kv, split, kv.layers)
        scores = {"surprisal": nll[span], "cache+surprisal": chunks.with_surprisal(cache, nll[span])}
        starts = chunks.sentence_starts([model.detokenize([toks[p]]) for p in span])
        ends = set(range(KEEP_FIRST)) | set(range(len(toks) - KEEP_LAST, len(toks)))
        for r in ratios:
            s.write_state(blob, n)
            rep = s.compact(ratio=r, **memory.METHODS["sentences"])
            s.write_state(blob, n)
            if rep.fell_back:
                continue
            kept = {p for a, b in rep.verbatim for p in range(a, b + 1)}
            row = {"seed": seed, "ratio": r, "answers": sum(1 for w in where if len(w)), "cache": _kept(where, kept)}
            for name, sc in scores.items():
                sel = span[chunks.chunk_select(sc, len(kept) - len(ends), starts, chunks.UNIT_POWER)]
                row[name] = _kept(where, set(sel.tolist()) | ends)
            rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--seeds", default="1,2,3,4,5,6,7,8,9")
    ap.add_argument("--ratios", default="3.2,4.5,6.4,12.8")
    ap.add_argument("--n-tokens", type=int, default=1024)
    a = ap.parse_args()
    model = pyllamaam.load_model(a.model)
    ratios = [float(x) for x in a.ratios.split(",")]
    rows = [r for seed in a.seeds.split(",") for r in document(model, int(seed), ratios, a.n_tokens)]
    keys = ("answers", "cache", "surprisal", "cache+surprisal")
    totals = {r: {k: sum(x[k] for x in rows if x["ratio"] == r) for k in keys} for r in ratios}
    print(json.dumps({"model": a.model, "seeds": a.seeds, "totals": totals, "documents": rows}))


if __name__ == "__main__":
    main()
