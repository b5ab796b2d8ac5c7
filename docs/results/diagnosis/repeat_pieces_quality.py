"""am at 10x with the full repeat pass vs evenly spread pieces of a quarter of the span.

Run from the repo root: python docs/results/diagnosis/repeat_pieces_quality.py
The same 3 texts as benchmarks/acceptance.py (SmolLM2, 4096 tokens, 128-token continuation).
"""
import json
import sys
import time

import pyllamaam
from pyllamaam.pipeline import mean_kl

sys.path.insert(0, "benchmarks")
from acceptance import texts  # noqa: E402

N, C = 4096, 128
m = pyllamaam.load_model(None)
for idx, (off, toks) in enumerate(texts(m, 3, N + C)):
    ctx, cont = toks[:N], toks[N:]
    with m.session(n_ctx=N + 512) as s:
        s.prefill(ctx)
        ref, nll0, snap, n0 = s.eval_logits(cont), s.score(cont), s._snapshot(), s.n_cells
        for name, kw in [("repeat 1/4 (pieces)", {"repeat_max_tokens": N // 4}), ("repeat all", {})]:
            s._write_blob(snap, n0)
            t0 = time.perf_counter()
            rep = s.compact(ratio=10, queries="repeat", verify=False, **kw)
            sec = time.perf_counter() - t0
            lg = s.eval_logits(cont)
            print(json.dumps({"text": idx, "name": name, "kl": round(mean_kl(ref, lg), 4),
                              "dnll": round(s.score(cont) - nll0, 4), "compaction_s": round(sec, 1)}), flush=True)
