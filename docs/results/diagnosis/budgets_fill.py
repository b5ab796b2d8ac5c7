"""Uniform AM against the shipped head budgets (budget_cells="fill") and query mixes, paired on
the same texts: continuation KL and ΔNLL.

Run from the repo root: python docs/results/diagnosis/budgets_fill.py MODEL N TEXTS RATIOS [BUDGETS]
(e.g. smollm2-135m 4096 0,1,2 10,20); one JSON line per (text, ratio, variant)."""
import json
import sys

sys.path.insert(0, "benchmarks")
import pyllamaam  # noqa: E402
from acceptance import texts  # noqa: E402
from pyllamaam.pipeline import mean_kl  # noqa: E402

model, N = sys.argv[1], int(sys.argv[2])
idxs = [int(a) for a in sys.argv[3].split(",")]
ratios = [float(a) for a in sys.argv[4].split(",")]
budgets = sys.argv[5] if len(sys.argv) > 5 else f"models/budgets/{model}.json"
C = 128
VARIANTS = [
    ("am uniform", {"budgets": "uniform"}, "repeat"),
    ("am budgets(fill)", {"budgets": budgets}, "repeat"),
    ("am uniform repeat+context", {"budgets": "uniform"}, "repeat+context"),
    ("window", {"method": "window"}, "context"),
    ("snapkv", {"method": "snapkv"}, "context"),
]
m = pyllamaam.load_model(None if model == "smollm2-135m" else model)
for idx in idxs:
    off, toks = texts(m, 3, N + C)[idx]
    ctx, cont = toks[:N], toks[N : N + C]
    with m.session(n_ctx=2 * N + 600) as s:
        s.capture_context_queries(cap=N)
        s.prefill(ctx)
        ref = s.eval_logits(cont)
        nll0 = s.score(cont)
        snap, n0 = s._snapshot(), s.n_cells
        refs = {q: s.reference_queries(q) for q in ("repeat", "repeat+context")}
        for ratio in ratios:
            for name, kw, q in VARIANTS:
                s._write_blob(snap, n0)
                rep = s.compact(ratio=ratio, queries=refs.get(q, q), verify=False, **kw)
                lg = s.eval_logits(cont)
                print(json.dumps({"model": model, "n": N, "text": idx, "ratio": ratio, "name": name,
                                  "kl": round(mean_kl(ref, lg), 4), "dnll": round(s.score(cont) - nll0, 4),
                                  "cells": s.n_cells, "keys": rep.keys_kept, "fell_back": rep.fell_back,
                                  "s": round(rep.total_seconds, 1)}), flush=True)
