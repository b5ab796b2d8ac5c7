"""Acceptance check: n tokens of public-domain text, compacted at a ratio; am vs snapkv vs window.

For K texts (K evenly spaced slices of the sorted ``pydoc_data.topics`` text of the Python
standard library, each starting at a paragraph break), prefill ``n`` tokens, record the
full-cache logits on the true next ``cont`` tokens, then for each method restore the full state,
compact at ``ratio`` with ``verify=False`` and record KL(full || compacted) (mean over the
continuation positions, nats), the change in mean NLL of the true continuation (nats/token) and
the compaction seconds per stage. Every method gets the same reference queries
(``queries="repeat"``; snapkv observes the last rows of them, window ignores them).
Prints JSON (one progress line per method on stderr).

Run: .venv/bin/python benchmarks/acceptance.py --model smollm2-135m --n-tokens 4096 --ratio 10 --texts 3
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import pydoc_data.topics as T
import subprocess
import sys
import time

import numpy as np

import pyllamaam

METHODS = ("am", "snapkv", "window")
MODELS = {"smollm2-135m": None, "gemma3-270m": "gemma3-270m"}


def kl_mean(p: np.ndarray, q: np.ndarray) -> float:
    """Mean over rows of KL(softmax(p) || softmax(q)), nats."""
    lp = p.astype(np.float64)
    lq = q.astype(np.float64)
    lp = lp - np.logaddexp.reduce(lp, axis=1, keepdims=True)
    lq = lq - np.logaddexp.reduce(lq, axis=1, keepdims=True)
    return float((np.exp(lp) * (lp - lq)).sum(axis=1).mean())


def texts(model, k: int, n_tok: int) -> list[tuple[int, list[int]]]:
    """K (char offset, BOS + n_tok tokens) slices spread evenly over the topics text."""
    text = "\n\n".join(T.topics[key] for key in sorted(T.topics))
    out = []
    for i in range(k):
        off = (len(text) * i) // k
        if off:
            off = text.find("\n\n", off) + 2
        chunk = text[off : off + n_tok * 8]
        toks = model.tokenize(chunk, add_bos=True)
        if len(toks) < n_tok:
            raise SystemExit(f"text {i} at offset {off} gives only {len(toks)} tokens")
        out.append((off, toks[:n_tok]))
    return out


def mean_se(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs, dtype=np.float64)
    se = float(a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else float("nan")
    return {"mean": float(a.mean()), "se": se}


def git_commit() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "pyllamaam", "native", "patches"],
            cwd=here, capture_output=True, text=True,
        ).stdout.split("\n")
        dirty = [line[3:] for line in dirty if line.strip()]
        return head + (f" (uncommitted changes in: {', '.join(dirty)})" if dirty else "")
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="smollm2-135m")
    ap.add_argument("--n-tokens", type=int, default=4096, help="context tokens prefilled (BOS included)")
    ap.add_argument("--ratio", type=float, default=10.0)
    ap.add_argument("--texts", type=int, default=3, help="K: number of different texts")
    ap.add_argument("--cont", type=int, default=128, help="true continuation tokens scored")
    ap.add_argument("--n-threads", type=int, default=None, help="default: all cores")
    ap.add_argument("--keep-first", type=int, default=4)
    ap.add_argument("--keep-last", type=int, default=32)
    ap.add_argument("--partial", default=None, help="also write the results so far to this file after each text")
    args = ap.parse_args(argv)

    load0 = os.getloadavg()
    m = pyllamaam.load_model(MODELS[args.model])
    n_ctx = args.n_tokens + 512  # the context, room for the continuation and the repeat scratch passes
    out: dict = {
        "command": "python benchmarks/acceptance.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git_commit": git_commit(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, CPU only",
        "settings": {
            "model": args.model, "n_tokens": args.n_tokens, "ratio": args.ratio, "texts": args.texts,
            "cont": args.cont, "n_ctx": n_ctx, "keep_first": args.keep_first, "keep_last": args.keep_last,
            "queries": "repeat (the same source for every method; snapkv observes its last rows, window ignores it)",
            "verify": False,
            "source": "pydoc_data.topics (Python stdlib), topics sorted by key, joined by blank lines; "
                      "text i starts at the first paragraph break after char len*i/K",
        },
        "metrics": {
            "kl": "mean over the continuation positions of KL(full || compacted) of next-token distributions, nats",
            "dnll": "mean NLL per token of the true continuation, compacted minus full, nats (lower is better)",
            "seconds": "compaction seconds per stage (queries = the repeat pass, also paid by window)",
        },
        "per_text": [],
    }
    for i, (off, ctx_toks) in enumerate(texts(m, args.texts, args.n_tokens + args.cont)):
        ctx, cont = ctx_toks[: args.n_tokens], ctx_toks[args.n_tokens :]
        with m.session(n_ctx=n_ctx, n_threads=args.n_threads) as s:
            t0 = time.perf_counter()
            s.prefill(ctx)
            prefill_s = time.perf_counter() - t0
            ref = s.eval_logits(cont)
            nll0 = s.score(cont)
            snap, n0 = s.snapshot(), s.n_cells
            rec = {"text": i, "char_offset": off, "prefill_s": prefill_s, "full_nll": nll0, "cells_before": n0}
            for method in METHODS:
                s.write_state(snap, n0)
                rep = s.compact(
                    ratio=args.ratio, method=method, queries="repeat", verify=False,
                    keep_first=args.keep_first, keep_last=args.keep_last,
                )
                lg = s.eval_logits(cont)
                nll = s.score(cont)
                rec[method] = {
                    "kl": kl_mean(ref, lg), "dnll": nll - nll0, "nll": nll, "cells_after": rep.cells_after,
                    "span": [rep.span_before, rep.span_after], "fell_back": rep.fell_back,
                    "seconds": rep.seconds, "total_s": rep.total_seconds,
                }
                print(f"text {i} {method}: {json.dumps(rec[method])}", file=sys.stderr, flush=True)
            for base in METHODS[1:]:
                rec[f"am_beats_{base}"] = {
                    "kl": rec["am"]["kl"] < rec[base]["kl"], "dnll": rec["am"]["dnll"] < rec[base]["dnll"],
                }
        out["per_text"].append(rec)
        if args.partial:
            with open(args.partial, "w") as f:
                json.dump(out, f, indent=1)
    pt = out["per_text"]
    summary: dict = {"prefill_s": mean_se([r["prefill_s"] for r in pt])}
    for method in METHODS:
        summary[method] = {
            k: mean_se([r[method][k] for r in pt]) for k in ("kl", "dnll", "total_s")
        }
        summary[method]["seconds"] = {
            st: float(np.mean([r[method]["seconds"][st] for r in pt])) for st in pt[0][method]["seconds"]
        }
    for base in METHODS[1:]:
        summary[f"am_wins_vs_{base}"] = {
            k: f"{sum(r[f'am_beats_{base}'][k] for r in pt)}/{len(pt)}" for k in ("kl", "dnll")
        }
    out["summary"] = summary
    out["machine_load"] = (
        f"load average (1, 5, 15 min) at start {tuple(round(x, 2) for x in load0)}, "
        f"at end {tuple(round(x, 2) for x in os.getloadavg())}; {os.cpu_count()} cores, possibly shared with other jobs"
    )
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
