"""Issue 6's acceptance item, read from a grid's cells.jsonl: per (model, ratio), pooled over
every context (lengths x seeds) that has all the methods, the candidate (default: ``default``,
Session.compact's defaults) against uniform-budget AM (``am``) and against the best eviction
baseline (the one of snapkv / h2o / window with the lowest mean on that measure), on the suite
(mean answer NLL of the planted facts) and on the continuation ΔNLL. Differences are paired over
contexts: mean ± standard error, and how many contexts the candidate wins.

    python docs/results/issue6/acceptance.py CELLS.jsonl[,MORE.jsonl] [CANDIDATE[,SAME]] [--json | --robust] [--seeds=4,5] [--split] [--tokens=A:B]

Several candidate names are one method under several names (``default,am-op3``: the stop-16
default, which later runs ask for as am-op3); for each context the first name that ran it counts.

--seeds keeps only the contexts of those seeds. --split adds the ΔNLL of the continuation's
copied tokens (those a verbatim copy of the context predicts) and of the rest, read apart, for
cells run since stop 17 (``fidelity.copied_targets``; a context without copies drops out of the
copied row). --tokens=A:B reads the continuation ΔNLL over its tokens A to B only (1-based,
inclusive), from every target's ΔNLL (cells run since stop 17; ``--tokens=65:256`` on the
256-token cells of stop 20). Prints a markdown table (or one JSON object per (model, ratio) with --json;
with --robust, the median paired differences and two-sided sign-test p-values on the wins)."""
import collections
import json
import sys

import numpy as np
from scipy.stats import binomtest

EVICTION = ("snapkv", "h2o", "window")
MEASURES = {"suite": lambda r: r["answer_nll"], "dnll": lambda r: r["fidelity"]["delta_nll"]}
SPLIT = {
    "dnll_fresh": lambda r: r["fidelity"].get("delta_nll_fresh"),
    "dnll_copied": lambda r: r["fidelity"].get("delta_nll_copied"),
}
LABELS = {"suite": "suite (answer NLL)", "dnll": "ΔNLL", "dnll_fresh": "ΔNLL, fresh tokens",
          "dnll_copied": "ΔNLL, copied tokens"}


def tokens_dnll(r, lo, hi):
    """Mean ΔNLL over continuation tokens ``lo``..``hi`` (1-based); None where the cell has no
    per-token ΔNLL or fewer tokens than ``hi``."""
    d = r["fidelity"].get("delta_nll_tokens")
    return float(np.mean(d[lo - 1 : hi])) if d is not None and len(d) >= hi else None


def compare(rows, cand, measures=MEASURES):
    names = cand.split(",")  # one method under several names: for each context the first that ran it
    by = collections.defaultdict(dict)
    for r in rows:
        method = "am" if r["method"] == "am-r0.5" else r["method"]  # tune/sweep.py's name for plain am
        by[(r["model"], r["ratio"])].setdefault(method, {})[(r["n_tokens_target"], r["seed"])] = r
    for meth in by.values():
        merged: dict = {}
        for name in reversed(names):
            merged.update(meth.get(name, {}))
        if merged:
            meth[cand] = merged
    out = []
    for (model, ratio), meth in sorted(by.items()):
        need = [cand, "am", *EVICTION]
        if not all(m in meth for m in need):
            continue
        every = sorted(set.intersection(*(set(meth[m]) for m in need)))
        res = {"model": model, "ratio": ratio, "candidate": cand, "contexts": len(every)}
        for name, f in measures.items():
            ctxs = [c for c in every if all(f(meth[m][c]) is not None for m in need)]
            if not ctxs:
                continue
            mean = {m: float(np.mean([f(meth[m][c]) for c in ctxs])) for m in need}
            best = min(EVICTION, key=lambda m: mean[m])
            res[name] = {"mean": mean, "best_eviction": best, "contexts": len(ctxs)}
            for ref in ("am", best):
                d = np.array([f(meth[cand][c]) - f(meth[ref][c]) for c in ctxs])
                se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
                key = "vs_am" if ref == "am" else "vs_best_eviction"
                res[name][key] = {
                    "diff": float(d.mean()), "se": se, "wins": int((d < 0).sum()),
                    # robust to the heavy tail (one copy event moves a context's ΔNLL by ~1 nat):
                    # the median paired difference and a two-sided sign test on the wins
                    "median": float(np.median(d)),
                    "sign_p": float(binomtest(int((d < 0).sum()), int((d != 0).sum()) or 1).pvalue),
                }
            res[name]["holds"] = res[name]["vs_am"]["diff"] < 0 and res[name]["vs_best_eviction"]["diff"] < 0
        out.append(res)
    return out


def table(results):
    lines = [
        "| model | ratio | contexts | measure | candidate | am | best eviction | candidate − am | candidate − best eviction | holds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for name in [k for k in LABELS if k in r]:
            m = r[name]
            a, e, n = m["vs_am"], m["vs_best_eviction"], m["contexts"]
            lines.append(
                f"| {r['model']} | {r['ratio']:g}x | {n} | {LABELS[name]} "
                f"| {m['mean'][r['candidate']]:.3f} | {m['mean']['am']:.3f} | {m['mean'][m['best_eviction']]:.3f} ({m['best_eviction']}) "
                f"| {a['diff']:+.3f} ± {a['se']:.3f} ({a['wins']}/{n}) "
                f"| {e['diff']:+.3f} ± {e['se']:.3f} ({e['wins']}/{n}) | {'yes' if m['holds'] else '**no**'} |"
            )
    return "\n".join(lines)


def robust_table(results):
    lines = [
        "| model | ratio | contexts | measure | median (candidate − am) | sign test p | median (candidate − best eviction) | sign test p |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for name in [k for k in LABELS if k in r]:
            a, e = r[name]["vs_am"], r[name]["vs_best_eviction"]
            lines.append(
                f"| {r['model']} | {r['ratio']:g}x | {r[name]['contexts']} | {LABELS[name]} "
                f"| {a['median']:+.3f} | {a['sign_p']:.2f} | {e['median']:+.3f} ({r[name]['best_eviction']}) | {e['sign_p']:.2f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    # CELLS may be several files, comma-separated: a cell in a later file replaces the same cell
    # (model, tokens, seed, method, ratio) from an earlier one
    rows = list({r["key"]: r for p in args[0].split(",") for r in map(json.loads, filter(str.strip, open(p)))}.values())
    for a in sys.argv[1:]:
        if a.startswith("--seeds="):
            keep = {int(x) for x in a.split("=", 1)[1].split(",")}
            rows = [r for r in rows if r["seed"] in keep]
    measures = {**MEASURES, **SPLIT} if "--split" in sys.argv else dict(MEASURES)
    for a in sys.argv[1:]:
        if a.startswith("--tokens="):
            lo, hi = (int(x) for x in a.split("=", 1)[1].split(":"))
            if not 1 <= lo <= hi:
                sys.exit(f"--tokens=A:B needs 1 <= A <= B, not {a}")
            measures["dnll"] = lambda r, lo=lo, hi=hi: tokens_dnll(r, lo, hi)
            LABELS["dnll"] = f"ΔNLL, tokens {lo}-{hi}"
    results = compare(rows, args[1] if len(args) > 1 else "default", measures)
    if "--json" in sys.argv:
        for r in results:
            print(json.dumps(r))
    elif "--robust" in sys.argv:
        print(robust_table(results))
    else:
        print(table(results))
