"""Per (model, ratio, method) means over the contexts of a cells.jsonl, and each method's
paired difference to a reference method (mean ± SE over the shared contexts).

    python docs/results/issue6/tune/summarize.py CELLS.jsonl [REF_METHOD]"""
import collections
import json
import sys

import numpy as np

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
ref = sys.argv[2] if len(sys.argv) > 2 else "am-r0.5"
by = collections.defaultdict(dict)
for r in rows:
    if r["method"] != "full":
        by[(r["model"], r["ratio"], r["method"])][(r["n_tokens_target"], r["seed"])] = r
evict = ("snapkv", "h2o", "window")
for (model, ratio, method), cells in sorted(by.items()):
    a = np.array([[c["answer_nll"], c["fidelity"]["delta_nll"], c["fidelity"]["kl"]] for c in cells.values()])
    line = f"{model:13s} {ratio:4g} {method:13s} n={len(a)} ans={a[:, 0].mean():.3f} dNLL={a[:, 1].mean():+.3f} KL={a[:, 2].mean():.3f}"
    base = by.get((model, ratio, ref), {})
    common = sorted(set(cells) & set(base))
    if method != ref and common:
        d = np.array([[cells[k]["answer_nll"] - base[k]["answer_nll"],
                       cells[k]["fidelity"]["delta_nll"] - base[k]["fidelity"]["delta_nll"]] for k in common])
        se = d.std(axis=0, ddof=1) / np.sqrt(len(d)) if len(d) > 1 else np.zeros(2)
        line += f"  vs {ref}: ans {d[:, 0].mean():+.3f}±{se[0]:.3f} dNLL {d[:, 1].mean():+.3f}±{se[1]:.3f}"
    print(line)
