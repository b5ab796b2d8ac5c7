"""A candidate against a reference method (``default`` unless given), paired over the contexts
both ran, per (model, ratio): answer NLL and ΔNLL as mean ± SE of candidate − reference (contexts
where the candidate is lower), and compaction / prefill of each (mean).

    python docs/results/issue6/versus.py CELLS.jsonl[,MORE.jsonl] CANDIDATE [REFERENCE[,SAME]]

A cell in a later file replaces the same cell from an earlier one. Several reference names are
one method under several names (e.g. ``default,am-op3``: the stop-16 default, which later runs
ask for as am-op3); for each context the first name that ran it is taken."""
import collections
import json
import sys

import numpy as np


def pairs(rows, cand, ref):
    by = collections.defaultdict(dict)
    for r in rows:
        by[(r["model"], r["ratio"], r["method"])][(r["n_tokens_target"], r["seed"])] = r
    out = []
    for model, ratio in sorted({(m, x) for m, x, meth in by if meth == cand}):
        c, b = by[(model, ratio, cand)], {}
        for name in reversed(ref.split(",")):  # the first name wins
            b.update(by[(model, ratio, name)])
        ks = sorted(set(c) & set(b))
        if not ks:
            continue
        row = {"model": model, "ratio": ratio, "contexts": len(ks)}
        for name, f in (("answer_nll", lambda r: r["answer_nll"]), ("delta_nll", lambda r: r["fidelity"]["delta_nll"])):
            d = np.array([f(c[k]) - f(b[k]) for k in ks])
            se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
            row[name] = {"diff": float(d.mean()), "se": se, "lower": int((d < 0).sum())}
        cost = lambda r: r["compaction_seconds"] / r["prefill_seconds"]  # noqa: E731
        row["cost"] = {cand: float(np.mean([cost(c[k]) for k in ks])), ref: float(np.mean([cost(b[k]) for k in ks]))}
        out.append(row)
    return out


if __name__ == "__main__":
    paths, cand = sys.argv[1], sys.argv[2]
    ref = sys.argv[3] if len(sys.argv) > 3 else "default"
    rows = {r["key"]: r for p in paths.split(",") for r in map(json.loads, filter(str.strip, open(p)))}.values()
    print(f"| model | ratio | contexts | answer NLL | ΔNLL | cost: {cand} vs {ref} |")
    print("|---|---|---|---|---|---|")
    for r in pairs(list(rows), cand, ref):
        a, d, n = r["answer_nll"], r["delta_nll"], r["contexts"]
        print(f"| {r['model']} | {r['ratio']:g}x | {n} | {a['diff']:+.3f} ± {a['se']:.3f} ({a['lower']}/{n}) "
              f"| {d['diff']:+.3f} ± {d['se']:.3f} ({d['lower']}/{n}) | {r['cost'][cand]:.2f} vs {r['cost'][ref]:.2f} |")
