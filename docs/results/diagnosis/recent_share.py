import sys, json, time, numpy as np, pyllamaam
sys.path.insert(0, "benchmarks")
from acceptance import texts
from pyllamaam.pipeline import mean_kl
# run from the repo root: python docs/results/diagnosis/<this file> TEXTS [ARGS]
m = pyllamaam.load_model(None)
N=4096; C=128
idxs=[int(a) for a in sys.argv[1].split(",")]
for idx in idxs:
    off, toks = texts(m, 3, N + C)[idx]
    ctx, cont = toks[:N], toks[N:N+C]
    with m.session(n_ctx=2*N+600) as s:
        s.prefill(ctx)
        ref=s.eval_logits(cont); nll0=s.score(cont); snap=s._snapshot(); n0=s.n_cells
        R = s.reference_queries("repeat")
        for name, kw in [("am(new default)", {}), ("am recent0.3", {"recent": 0.3}), ("am recent0.7", {"recent": 0.7}), ("attn-rms recent0.5", {"method": "attn-rms"})]:
            s._write_blob(snap, n0)
            rep = s.compact(ratio=10, queries=R, verify=False, **kw)
            lg=s.eval_logits(cont)
            print(json.dumps({"text": idx, "name": name, "kl": round(mean_kl(ref, lg),4), "dnll": round(s.score(cont)-nll0,4), "cells": s.n_cells, "ratio": rep.ratio, "s": round(rep.total_seconds,1), "guards": rep.guards}), flush=True)
