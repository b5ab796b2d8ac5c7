"""Each method's paired difference to am-op3 (the default) on the tuning contexts of a cells.jsonl,
per ratio, as a markdown table row: answer NLL and ΔNLL (mean ± SE), mean KL, and compaction /
prefill as median (range).

    python docs/results/issue6/tune/against.py CELLS.jsonl METHOD[,METHOD...] [REF]

REF (default am-op3) is the method the differences are taken against."""
import json, collections, sys
import numpy as np
rows=[json.loads(l) for l in open(sys.argv[1]) if l.strip()]
meths=sys.argv[2].split(",")
ref=sys.argv[3] if len(sys.argv) > 3 else "am-op3"
by=collections.defaultdict(dict)
for r in rows:
    by[(r["ratio"], r["method"])][(r["n_tokens_target"], r["seed"])]=r
for m in meths:
    for ratio in (10.0, 20.0):
        c=by[(ratio,m)]; b=by[(ratio,ref)]
        ks=sorted(set(c)&set(b))
        if not ks: continue
        d=np.array([[c[k]["answer_nll"]-b[k]["answer_nll"], c[k]["fidelity"]["delta_nll"]-b[k]["fidelity"]["delta_nll"]] for k in ks])
        se=d.std(0,ddof=1)/np.sqrt(len(d)) if len(d)>1 else [0,0]
        kl=np.mean([c[k]["fidelity"]["kl"] for k in ks])
        cost=[c[k]["compaction_seconds"]/c[k]["prefill_seconds"] for k in ks]
        print(f"| {m} | {ratio:g}x | {len(ks)} | {d[:,0].mean():+.3f} ± {se[0]:.3f} | {d[:,1].mean():+.3f} ± {se[1]:.3f} | {kl:.3f} | {np.median(cost):.2f} ({min(cost):.2f}–{max(cost):.2f}) |")
