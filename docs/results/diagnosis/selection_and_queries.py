import sys, json, time, numpy as np, pyllamaam
from dataclasses import dataclass
sys.path.insert(0, "benchmarks")
from acceptance import texts
from pyllamaam.pipeline import mean_kl
from pyllamaam.compact.select import Selector, register, SELECTORS
from pyllamaam.compact.select.base import rank_by_score

def fuse(r1, r2):
    H, T = r1.shape
    inv1 = np.empty_like(r1); inv2 = np.empty_like(r2)
    rows = np.arange(H)[:, None]
    inv1[rows, r1] = np.arange(T); inv2[rows, r2] = np.arange(T)
    lo = np.minimum(inv1, inv2); hi = np.maximum(inv1, inv2)
    return np.stack([np.lexsort((hi[h], lo[h])) for h in range(H)])

@register
@dataclass(frozen=True)
class FuseSR(Selector):
    name = "x-snap-rms"; scores = ("rms",)
    def rank(self, inp):
        return fuse(SELECTORS["snapkv"]().rank(inp), SELECTORS["attn-rms"]().rank(inp))

@register
@dataclass(frozen=True)
class FuseSW(Selector):
    name = "x-snap-win"; scores = ()
    def rank(self, inp):
        return fuse(SELECTORS["snapkv"]().rank(inp), SELECTORS["window"]().rank(inp))

@register
@dataclass(frozen=True)
class FuseWR(Selector):
    name = "x-win-rms"; scores = ("rms",)
    def rank(self, inp):
        return fuse(SELECTORS["window"]().rank(inp), SELECTORS["attn-rms"]().rank(inp))

# run from the repo root: python docs/results/diagnosis/<this file> TEXTS [ARGS]
m = pyllamaam.load_model(None)
N=4096; C=128
idxs=[int(a) for a in sys.argv[1].split(",")]
only = sys.argv[2].split(",") if len(sys.argv) > 2 else None
V = [("snapkv", "R", {"method": "snapkv"}), ("window", "R", {"method": "window"}), ("am", "R", {}),
     ("snapkv+fit", "R", {"method": "snapkv", "fit": True}),
     ("window+fit", "R", {"method": "window", "fit": True}),
     ("snap-rms+fit", "R", {"method": "x-snap-rms"}),
     ("snap-win+fit", "R", {"method": "x-snap-win"}),
     ("win-rms+fit", "R", {"method": "x-win-rms"}),
     ("snapkv+betaonly", "R", {"method": "snapkv", "fit": True, "ridge": 1e4, "ridge_target": "original"}),
     ("snapkv+fit RC", "RC", {"method": "snapkv", "fit": True}),
     ("snap-win+fit RC", "RC", {"method": "x-snap-win"}),
     ("am RC", "RC", {}),
     ("snapkv+fit C", "C", {"method": "snapkv", "fit": True}),
     ("snap-win+fit C", "C", {"method": "x-snap-win"}),
]
if only: V = [v for v in V if v[0] in only]
for idx in idxs:
    off, toks = texts(m, 3, N + C)[idx]
    ctx, cont = toks[:N], toks[N:N+C]
    with m.session(n_ctx=2*N+600) as s:
        s.capture_context_queries(4096)
        t0=time.perf_counter(); s.prefill(ctx); tp=time.perf_counter()-t0
        ref=s.eval_logits(cont); nll0=s.score(cont); snap=s._snapshot(); n0=s.n_cells
        Qs = {"R": s.reference_queries("repeat"), "RC": s.reference_queries("repeat+context"), "C": s.reference_queries("context")}
        for name, qk, kw in V:
            s._write_blob(snap, n0)
            try:
                rep = s.compact(ratio=10, queries=Qs[qk], verify=False, recent=0.0, **kw)  # run before the option existed
            except Exception as e:
                print(json.dumps({"text": idx, "name": name, "err": repr(e)}), flush=True); continue
            lg=s.eval_logits(cont)
            print(json.dumps({"text": idx, "name": name, "kl": round(mean_kl(ref, lg),4), "dnll": round(s.score(cont)-nll0,4), "cells": s.n_cells, "s": round(rep.total_seconds,1), "guards": rep.guards}), flush=True)
