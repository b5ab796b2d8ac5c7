"""Does the continuation probe tell, per context, whether the fit or the recent window serves the
next tokens better?

For each grid context (the eval harness's suite at ~N tokens, seed S, built and prefilled as
``pyllamaam eval`` does), each method of the grid is run at each ratio exactly as the grid runs it
(``verify=False``), and then the context's last 32 tokens (all inside the ``keep_last`` cells, which
every method keeps exact) are read again on the compacted cache: the mean next-token KL against the
same tokens read on the full cache is printed for the last 32 and the last 16 of them. The grid's
cells of the same key give the continuation's ΔNLL, so this says whether a choice made on the
probe (known at compaction time) follows the choice the continuation would have made.

The rule it tests was fixed before it ran (stop 19): keep the recent window instead of the fit
when the window's 32-token probe KL is lower. Prints one JSON line per (context, method, ratio);
``--summary`` reads those lines back with the grid's cells and prints, per ratio, how often the
rule picks the window, the ΔNLL of its pick and of the fit against the window, and what the pick
costs in answer NLL against the fit (JSON).

    python docs/results/diagnosis/rival_probe.py MODEL RATIOS METHODS N:SEED [N:SEED ...]
    python docs/results/diagnosis/rival_probe.py --summary PROBES.jsonl CELLS.jsonl[,MORE.jsonl]
"""
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

import pyllamaam
from pyllamaam.evaluation import grid
from pyllamaam.pipeline import mean_kl
from pyllamaam.queries.tail import tail_logits

P = 32


def summary(probes: str, cells: str) -> None:
    """The rule's picks against the grid's cells (``default``; ``am-op3`` is the same method)."""
    by = {}
    for path in cells.split(","):
        for r in grid.load_cells(Path(path)):
            by.setdefault(r["key"].replace("|am-op3|", "|default|"), r)
    rows = [json.loads(line) for line in open(probes)]
    kl = {r["key"]: r["probe_kl32"] for r in rows}
    for ratio in sorted({r["ratio"] for r in rows}):
        picks, d_pick, d_fit, ans, agree = 0, [], [], [], 0
        for r in rows:
            if r["method"] != "default" or r["ratio"] != ratio:
                continue
            kd, kw = r["key"], r["key"].replace("|default|", "|window|")
            win = kl[kw] < kl[kd]
            picks += win
            d = {k: by[k]["fidelity"]["delta_nll"] for k in (kd, kw)}
            pick = kw if win else kd
            d_pick.append(d[pick] - d[kw])
            d_fit.append(d[kd] - d[kw])
            ans.append(by[pick]["answer_nll"] - by[kd]["answer_nll"])
            agree += win == (d[kw] < d[kd])
        n = len(d_pick)
        se = lambda x: float(np.std(x, ddof=1) / np.sqrt(len(x)))  # noqa: E731
        print(json.dumps({
            "ratio": ratio, "contexts": n, "window_picked": int(picks), "pick_agrees_with_dnll": agree,
            "dnll_pick_minus_window": [float(np.mean(d_pick)), se(d_pick)],
            "dnll_fit_minus_window": [float(np.mean(d_fit)), se(d_fit)],
            "answer_nll_pick_minus_fit": [float(np.mean(ans)), se(ans)],
        }))


if sys.argv[1] == "--summary":
    summary(sys.argv[2], sys.argv[3])
    sys.exit()
model_name, ratios, methods, specs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
ratios = [float(r) for r in ratios.split(",")]
spec = grid.GridSpec()
with pyllamaam.load_model(grid._model_name(model_name)) as model:
    for nseed in specs:
        n, seed = (int(x) for x in nseed.split(":"))
        ctx = grid.build_context(model, n, seed, spec.kinds)
        toks = model.tokenize(ctx.text, add_bos=model.info["add_bos"])
        with model.session(n_ctx=2 * len(toks) + 512) as s, tempfile.TemporaryDirectory() as tmp:
            s.capture_context_queries(cap=max(4096, len(toks)))
            s.prefill(toks)
            saved = s.save(Path(tmp) / "full.session")
            before = tail_logits(s, P, s.n_past - 1 - P)
            for method in methods.split(","):
                for ratio in ratios:
                    s.restore(saved)
                    kw = dict(grid.METHODS[method])
                    rep = s.compact(ratio=ratio, keep_first=spec.keep_first, keep_last=spec.keep_last,
                                    verify=False, **kw)
                    after = tail_logits(s, P, s.n_past - 1 - P)
                    rows = [mean_kl(before[-k:], after[-k:]) for k in (P, P // 2)]
                    print(json.dumps({
                        "model": model_name, "n_tokens_target": n, "seed": seed, "method": method,
                        "ratio": ratio, "key": grid.cell_key(model_name, n, seed, method, ratio),
                        "probe_kl32": rows[0], "probe_kl16": rows[1], "cells": s.n_cells,
                        "finite": bool(np.isfinite(after).all()), "fell_back": rep.fell_back,
                    }), flush=True)
