"""Issue 4 acceptance check: SmolLM2, 4096 tokens of pydoc_data topics, 10x; am vs snapkv vs window.

KL(full || compacted) and the change in NLL over the true next 128 tokens. Prints JSON.
Run: .venv/bin/python benchmarks/acceptance_4k.py
"""
import time, json, numpy as np, pyllamaam, pydoc_data.topics as T
m = pyllamaam.load_model(None)
text = "\n\n".join(T.topics[k] for k in sorted(T.topics))
toks = m.tokenize(text, add_bos=True)[:4096 + 128]
ctx, cont = toks[:4096], toks[4096:]
def kl(p, q):
    p = p.astype(np.float64); q = q.astype(np.float64)
    lp = p - np.logaddexp.reduce(p, axis=1, keepdims=True); lq = q - np.logaddexp.reduce(q, axis=1, keepdims=True)
    return float((np.exp(lp) * (lp - lq)).sum(1).mean())
with m.session(n_ctx=4608) as s:
    t0 = time.perf_counter(); s.prefill(ctx); tp = time.perf_counter() - t0
    ref = s.eval_logits(cont); nll0 = s.score(cont)
    snap = s._snapshot(); n0 = s.n_cells
    out = {"prefill_s": tp, "n_ctx_tokens": len(ctx), "n_cont": len(cont), "full_nll": nll0}
    for method in ("am", "snapkv", "window"):
        s._write_blob(snap, n0)
        rep = s.compact(ratio=10, method=method, queries="repeat", verify=False)
        lg = s.eval_logits(cont); nll = s.score(cont)
        out[method] = {"cells_after": rep.cells_after, "kl": kl(ref, lg), "dnll": nll - nll0, "seconds": rep.seconds, "total_s": rep.total_seconds}
        print(method, json.dumps(out[method]), flush=True)
print(json.dumps(out))
