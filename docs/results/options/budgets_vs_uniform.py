import json, numpy as np, pyllamaam, pydoc_data.topics as T
from pyllamaam.pipeline import mean_kl
m = pyllamaam.load_model(None)
text = "\n\n".join(T.topics[k] for k in sorted(T.topics))
N=1024
for start in (20000, 40000):
  toks = m.tokenize(text, add_bos=True)[start:start+N+64]
  ctx, cont = toks[:N], toks[N:]
  with m.session(n_ctx=2*N+200) as s:
    s.prefill(ctx); ref=s.eval_logits(cont); nll0=s.score(cont); snap=s._snapshot(); n0=s.n_cells
    R = s.reference_queries("repeat")
    for ratio in (10, 20):
      for name, kw in (("uniform", {}), ("budgets, same cells", {"budgets": "models/budgets/smollm2-135m.json"}),
                       ("budgets, same keys", {"budgets": "models/budgets/smollm2-135m.json", "budget_cells": "keys"})):
        s._write_blob(snap, n0)
        rep = s.compact(ratio=ratio, queries=R, verify=False, **kw)
        lg = s.eval_logits(cont)
        print(json.dumps({"start": start, "ratio": ratio, "variant": name, "kl": round(mean_kl(ref, lg), 4), "dnll": round(s.score(cont)-nll0, 4), "cells": rep.cells_after, "keys": rep.keys_kept}), flush=True)
