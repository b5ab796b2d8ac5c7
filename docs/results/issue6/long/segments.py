"""The continuation ΔNLL of stop 20's 256-token cells, by 64-token segment: per (model, ratio,
method), the mean over contexts of each segment's mean ΔNLL, and of its copied and fresh tokens'
summed ΔNLL (nats per context; ``fidelity.copied_targets``). Only contexts that every method of
that (model, ratio) finished count. Prints a markdown table.

    python docs/results/issue6/long/segments.py CELLS.jsonl[,MORE.jsonl]
"""
import collections
import json
import sys

import numpy as np

SEG = 64


def main(paths: str) -> None:
    rows = {r["key"]: r for p in paths.split(",") for r in map(json.loads, filter(str.strip, open(p)))}
    by = collections.defaultdict(lambda: collections.defaultdict(dict))
    for r in rows.values():
        if r["ratio"] != 1:
            by[(r["model"], r["ratio"])][r["method"]][(r["n_tokens_target"], r["seed"])] = r
    n_seg = None
    print("| model | ratio | method | contexts | " + " | ".join(
        f"tokens {i * SEG + 1}-{(i + 1) * SEG}" for i in range(4)) + " | copied, 65-256 | fresh, 65-256 |")
    print("|---|---|---|---|" + "---|" * 6)
    for (model, ratio), meth in sorted(by.items()):
        every = sorted(set.intersection(*(set(m) for m in meth.values())))
        for name in sorted(meth):
            t = np.array([meth[name][c]["fidelity"]["delta_nll_tokens"] for c in every])
            c = np.array([meth[name][c]["fidelity"]["copied"] for c in every], bool)
            n_seg = t.shape[1] // SEG
            seg = [t[:, i * SEG:(i + 1) * SEG].mean() for i in range(n_seg)]
            late = slice(SEG, None)
            cop = np.mean([(x[late][m[late]]).sum() for x, m in zip(t, c, strict=True)])
            fre = np.mean([(x[late][~m[late]]).sum() for x, m in zip(t, c, strict=True)])
            print(f"| {model} | {ratio:g}x | {name} | {len(every)} | "
                  + " | ".join(f"{v:+.3f}" for v in seg) + f" | {cop:+.2f} | {fre:+.2f} |")


if __name__ == "__main__":
    main(sys.argv[1])
