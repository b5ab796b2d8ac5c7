"""Compaction time of each option as a ratio to prefill time, with its quality, on one text.

Run from the repo root, alone on the machine:
    python docs/results/options/options_cost.py MODEL N RATIO [TEXT] > docs/results/options/options_cost_MODEL.jsonl
Each option captures its own queries (nothing shared), so its seconds are what one compaction
costs; each row records the head budgets it used. Prefill is timed in a plain session (no query capture); KL and ΔNLL are measured on the
next 128 tokens of the text (benchmarks/acceptance.py's texts)."""
import json
import sys
import time

sys.path.insert(0, "benchmarks")
import pyllamaam  # noqa: E402
from acceptance import texts  # noqa: E402
from pyllamaam.pipeline import mean_kl  # noqa: E402

model, N, ratio = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
idx = int(sys.argv[4]) if len(sys.argv) > 4 else 1
C = 128
OPTIONS = [
    ("am (default)", {}),
    ("am budgets=shipped", {"budgets": "shipped"}),
    ("am repeat_max_tokens=N/4", {"repeat_max_tokens": N // 4}),
    ("am queries=repeat+context", {"queries": "repeat+context"}),
    ("am queries=self-study (3 x 48 tokens)", {"queries": "self-study", "selfstudy_tokens": 48}),
    ("am queries=repeat+self-study", {"queries": "repeat+self-study", "selfstudy_tokens": 48}),
    ("am on_policy=3", {"on_policy": 3}),
    ("omp (fast: 4 keys/step, refit every 4)", {"method": "omp"}),
    ("omp (1 key/step, refit every step)", {"method": "omp", "keys_per_step": 1, "refit_every": 1}),
    ("am chunk_tokens=512", {"chunk_tokens": 512}),
    ("am guard=False", {"guard": False}),
    ("snapkv (eviction)", {"method": "snapkv", "queries": "context"}),
    ("window (eviction)", {"method": "window", "queries": "context"}),
]
m = pyllamaam.load_model(None if model == "smollm2-135m" else model)
off, toks = texts(m, 3, N + C)[idx]
ctx, cont = toks[:N], toks[N : N + C]
with m.session(n_ctx=2 * N + 600) as s:
    clock = time.perf_counter()
    s.prefill(ctx)
    prefill_s = time.perf_counter() - clock
with m.session(n_ctx=2 * N + 600) as s:
    s.capture_context_queries(cap=N)
    s.prefill(ctx)
    ref = s.eval_logits(cont)
    nll0 = s.score(cont)
    snap, n0 = s._snapshot(), s.n_cells
    for name, kw in OPTIONS:
        s._write_blob(snap, n0)
        kw = {"queries": "repeat", **kw}
        rep = s.compact(ratio=ratio, verify=False, **kw)
        lg = s.eval_logits(cont)
        print(json.dumps({
            "model": model, "n": N, "text": idx, "ratio": ratio, "option": name,
            "prefill_s": round(prefill_s, 2), "compaction_s": round(rep.total_seconds, 2),
            "over_prefill": round(rep.total_seconds / prefill_s, 3),
            "seconds": {k: round(v, 2) for k, v in rep.seconds.items()},
            "kl": round(mean_kl(ref, lg), 4), "dnll": round(s.score(cont) - nll0, 4),
            "cells": s.n_cells, "keys": rep.keys_kept, "budgets": rep.budgets,
            "fell_back": rep.fell_back, "reason": rep.reason, "guards": rep.guards,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }), flush=True)
