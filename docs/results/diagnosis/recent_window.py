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
LASTS=[int(a) for a in sys.argv[2].split(",")]
CELLS=442
for idx in idxs:
    off, toks = texts(m, 3, N + C)[idx]
    ctx, cont = toks[:N], toks[N:N+C]
    with m.session(n_ctx=2*N+600) as s:
        s.prefill(ctx)
        ref=s.eval_logits(cont); nll0=s.score(cont); snap=s._snapshot(); n0=s.n_cells
        def run(name, q, **kw):
            s._write_blob(snap, n0)
            rep = s.compact(queries=q, verify=False, recent=0.0, **kw)  # run before the option existed
            lg=s.eval_logits(cont)
            print(json.dumps({"text": idx, "name": name, "kl": round(mean_kl(ref, lg),4), "dnll": round(s.score(cont)-nll0,4), "cells": s.n_cells, "s": round(rep.total_seconds,1), "guards": rep.guards}), flush=True)
        for L in LASTS:
            s._write_blob(snap, n0); R = s.reference_queries("repeat", keep_last=L)
            for meth in ("x-snap-rms", "snapkv", "am"):
                run(f"{meth}+fit last{L}", R, method=meth, fit=True, keep_last=L, target_cells=CELLS)
