import sys, json, time, numpy as np
import pyllamaam
print(pyllamaam.__file__, file=sys.stderr)
sys.path.insert(0, "/work/main/benchmarks")
from acceptance import texts
m = pyllamaam.load_model(None)
N=2048; C=128
def kl(p, q):
    lp = p - np.logaddexp.reduce(p, axis=1, keepdims=True); lq = q - np.logaddexp.reduce(q, axis=1, keepdims=True)
    return float((np.exp(lp) * (lp - lq)).sum(1).mean())
for idx in (1, 2):
    off, toks = texts(m, 3, N + C)[idx]
    ctx, cont = toks[:N], toks[N:N+C]
    with m.session(n_ctx=2*N+600) as s:
        s.prefill(ctx); ref=s.eval_logits(cont).astype(np.float64); nll0=s.score(cont)
        rep = s.compact(ratio=10, queries="repeat", verify=False)
        lg=s.eval_logits(cont).astype(np.float64)
        print(json.dumps({"text": idx, "kl": round(kl(ref, lg),4), "dnll": round(s.score(cont)-nll0,4), "s": round(rep.total_seconds,1)}), flush=True)
