import sys, json, time, numpy as np, pyllamaam
sys.path.insert(0, "benchmarks")
from acceptance import texts
from pyllamaam.pipeline import mean_kl
m = pyllamaam.load_model(None)
N=4096; C=128
idx=int(sys.argv[1])
off, toks = texts(m, 3, N + C)[idx]
ctx, cont = toks[:N], toks[N:N+C]
with m.session(n_ctx=2*N+600) as s:
    s.capture_context_queries(4096)
    s.prefill(ctx)
    ref=s.eval_logits(cont); nll0=s.score(cont); snap=s._snapshot(); n0=s.n_cells
    R=s.reference_queries("repeat"); RC=s.reference_queries("repeat+context")
    for name, q, kw in [("snapkv+fit", R, {"method": "snapkv", "fit": True}), ("am repeat+context", RC, {}),
                        ("snapkv+fit window256", R, {"method": "snapkv", "fit": True, "window": 256}), ("am", R, {})]:
        s._write_blob(snap, n0)
        rep = s.compact(ratio=10, queries=q, verify=False, **kw)
        lg=s.eval_logits(cont)
        print(json.dumps({"text": idx, "name": name, "kl": round(mean_kl(ref, lg),4), "dnll": round(s.score(cont)-nll0,4), "s": round(rep.total_seconds,1), "err": rep.attention_error, "guards": rep.guards}), flush=True)
