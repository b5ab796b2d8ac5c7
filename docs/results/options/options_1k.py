import time, json, sys, numpy as np, pyllamaam, pydoc_data.topics as T
from pyllamaam.pipeline import mean_kl
m = pyllamaam.load_model(None)
text = "\n\n".join(T.topics[k] for k in sorted(T.topics))
N=int(sys.argv[1]); start=int(sys.argv[2]) if len(sys.argv)>2 else 0
toks = m.tokenize(text, add_bos=True)[start:start+N+64]
ctx, cont = toks[:N], toks[N:]
out=[]
with m.session(n_ctx=2*N+200) as s:
    t0=time.perf_counter(); s.prefill(ctx); tp=time.perf_counter()-t0
    ref=s.eval_logits(cont); nll0=s.score(cont)
    snap=s._snapshot(); n0=s.n_cells
    for ratio in (10, 20):
      for kw in ({}, {"on_policy": 3}, {"chunk_tokens": 256}, {"guard": False}):
        s._write_blob(snap, n0)
        rep = s.compact(ratio=ratio, queries="repeat", verify=False, **kw)
        lg=s.eval_logits(cont)
        r={"ratio":ratio, **kw, "kl":mean_kl(ref, lg), "dnll": s.score(cont)-nll0, "total_s": rep.total_seconds, "prefill_s": tp, "seconds": rep.seconds}
        print(json.dumps(r), flush=True)
