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
    t0=time.perf_counter(); s.prefill(ctx); print("prefill", time.perf_counter()-t0, flush=True)
    ref=s.eval_logits(cont); nll0=s.score(cont); snap=s._snapshot(); n0=s.n_cells
    t0=time.perf_counter(); R=s.reference_queries("repeat"); print("repeat", time.perf_counter()-t0, flush=True)
    for name, kw in [("am", {}), ("am-noguard", {"guard": False}), ("am-select-only", {"fit": False}),
                     ("am-beta-only", {"ridge": 1e4, "ridge_target": "original"}), ("snapkv", {"method": "snapkv"}), ("am-ridge0.3-orig", {"ridge": 0.3, "ridge_target": "original"}), ("am-onpolicy3", {"on_policy": 3, "queries": "repeat"})]:
        s._write_blob(snap, n0)
        kw = dict(kw); q = kw.pop("queries", R)
        try:
            rep = s.compact(ratio=10, queries=q, verify=False, **kw)
        except Exception as e:
            print(name, "ERR", e); continue
        lg=s.eval_logits(cont)
        print(json.dumps({"text": idx, "name": name, "kl": round(mean_kl(ref, lg),4), "dnll": round(s.score(cont)-nll0,4), "s": round(rep.total_seconds,1), "err": rep.attention_error, "guards": rep.guards}), flush=True)
