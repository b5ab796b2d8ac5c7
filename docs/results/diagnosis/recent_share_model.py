"""Continuation KL/ΔNLL of am at several recent-window shares against the eviction baselines.

Run from the repo root: python docs/results/diagnosis/recent_share_model.py MODEL N TEXTS RATIOS
(e.g. gemma3-270m 2048 0,1 10,20); one JSON line per (text, ratio, variant)."""
import json
import sys

sys.path.insert(0, "benchmarks")
import pyllamaam  # noqa: E402
from acceptance import texts  # noqa: E402
from pyllamaam.pipeline import mean_kl  # noqa: E402

model, N = sys.argv[1], int(sys.argv[2])
idxs = [int(a) for a in sys.argv[3].split(",")]
ratios = [float(a) for a in sys.argv[4].split(",")]
C = 128
VARIANTS = [
    ("window", {"method": "window"}),
    ("snapkv", {"method": "snapkv"}),
    ("am recent0", {"recent": 0.0}),
    ("am recent0.5", {}),
    ("am recent0.8", {"recent": 0.8}),
    ("am recent0.9", {"recent": 0.9}),
    ("snapkv+fit recent0.5", {"method": "snapkv", "fit": True}),
]
m = pyllamaam.load_model(model)
for idx in idxs:
    off, toks = texts(m, 3, N + C)[idx]
    ctx, cont = toks[:N], toks[N : N + C]
    with m.session(n_ctx=2 * N + 600) as s:
        s.prefill(ctx)
        ref = s.eval_logits(cont)
        nll0 = s.score(cont)
        snap, n0 = s._snapshot(), s.n_cells
        R = s.reference_queries("repeat")
        for ratio in ratios:
            for name, kw in VARIANTS:
                s._write_blob(snap, n0)
                rep = s.compact(ratio=ratio, queries=R, verify=False, **kw)
                lg = s.eval_logits(cont)
                print(json.dumps({"model": model, "n": N, "text": idx, "ratio": ratio, "name": name,
                                  "kl": round(mean_kl(ref, lg), 4), "dnll": round(s.score(cont) - nll0, 4),
                                  "cells": s.n_cells, "s": round(rep.total_seconds, 1)}), flush=True)
