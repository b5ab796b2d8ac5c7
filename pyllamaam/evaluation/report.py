"""Summaries of a results JSONL: JSON, markdown tables and quality-vs-ratio plots.

Groups are (model, n_tokens_target, method, ratio); every number is a mean over the seeds
(and, for task metrics, over the task questions), with the standard error over seeds where
there is more than one.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from .fidelity import mean_se
from .grid import EVICTION, load_cells

#: Metric name -> (label, lower is better).
METRICS: dict[str, tuple[str, bool]] = {
    "accuracy": ("task exact match", False),
    "token_accuracy": ("answer token accuracy", False),
    "answer_nll": ("answer NLL (nats/token)", True),
    "delta_nll": ("ΔNLL of the continuation (nats/token)", True),
    "kl": ("KL(full || compacted) (nats/token)", True),
    # the continuation's tokens that a verbatim copy of the context predicts, and the rest
    # (fidelity.copied_targets); older cells may have neither
    "delta_nll_copied": ("ΔNLL of the continuation's copied tokens (nats/token)", True),
    "delta_nll_fresh": ("ΔNLL of the continuation's other tokens (nats/token)", True),
    "compaction_over_prefill": ("compaction s / prefill s", True),
}


def _value(rec: dict[str, Any], metric: str) -> float | None:
    if metric in ("delta_nll", "kl", "delta_nll_copied", "delta_nll_fresh"):
        return rec["fidelity"].get(metric)
    if metric == "compaction_over_prefill":
        return rec["compaction_seconds"] / rec["prefill_seconds"] if "compaction_seconds" in rec else None
    return rec.get(metric)


def summarize(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (model, n_tokens, method, ratio) with mean and standard error per metric."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in cells:
        groups[(r["model"], r["n_tokens_target"], r["method"], r["ratio"])].append(r)
    rows = []
    for (model, n, method, ratio), recs in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][3], kv[0][2])
    ):
        row: dict[str, Any] = {"model": model, "n_tokens": n, "method": method, "ratio": ratio, "n": len(recs)}
        row["n_tokens_actual"] = float(np.mean([r["n_tokens"] for r in recs]))
        for m in METRICS:
            vals = [v for v in (_value(r, m) for r in recs) if v is not None]
            if vals:
                row[m], row[m + "_se"] = mean_se(np.array(vals))
        row["fell_back"] = sum(bool(r.get("compaction", {}).get("fell_back")) for r in recs)
        rows.append(row)
    return rows


def headline(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (model, n_tokens, ratio): am vs the best eviction baseline (same contexts) per metric."""
    out = []
    keyed = defaultdict(dict)
    for r in rows:
        keyed[(r["model"], r["n_tokens"], r["ratio"])][r["method"]] = r
    for (model, n, ratio), by in sorted(keyed.items()):
        if "am" not in by or ratio == 1:
            continue
        h: dict[str, Any] = {"model": model, "n_tokens": n, "ratio": ratio}
        for m in ("accuracy", "token_accuracy", "answer_nll", "delta_nll", "kl"):
            lower = METRICS[m][1]
            # only baselines run on as many contexts as am: means over other seeds do not compare
            base = [(by[b][m], b) for b in EVICTION if b in by and m in by[b] and by[b]["n"] == by["am"]["n"]]
            if not base:
                continue
            best, name = (min if lower else max)(base)
            h[m] = {"am": by["am"][m], "best_eviction": best, "baseline": name}
            for other in ("default", "am-budgets", "am-selfstudy", "am-mix", "am-op3", "am-context", "am-snapkv"):
                if other in by and m in by[other] and by[other]["n"] == by["am"]["n"]:
                    h[m][other.replace("-", "_")] = by[other][m]
        h["am_compaction_over_prefill"] = by["am"].get("compaction_over_prefill")
        out.append(h)
    return out


def _fmt(row: dict[str, Any], m: str) -> str:
    if m not in row:
        return "–"
    se = row.get(m + "_se", 0.0)
    digits = 2 if m in ("accuracy", "token_accuracy", "compaction_over_prefill") else 3
    return f"{row[m]:.{digits}f}" + (f" ± {se:.{digits}f}" if row["n"] > 1 else "")


def markdown(rows: list[dict[str, Any]], heads: list[dict[str, Any]]) -> str:
    """Markdown: the headline, then one table per (model, length) and metric."""
    others = [
        o
        for o in ("default", "am_budgets", "am_selfstudy", "am_mix", "am_op3", "am_snapkv")
        if any(o in h.get(m, {}) for h in heads for m in ("kl", "delta_nll"))
    ]
    pair = " / ".join(["am"] + [o.replace("_", "-") for o in others] + ["best evict."])
    title = " and ".join(["am"] + [o.replace("_", "-") for o in others])
    lines = [f"## Headline: {title} vs the best eviction baseline", ""]
    lines += [
        f"| model | tokens | ratio | answer tok. acc. {pair} | answer NLL {pair} "
        f"| ΔNLL {pair} | KL {pair} | am compaction/prefill |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for h in heads:
        cols = []
        for m in ("token_accuracy", "answer_nll", "delta_nll", "kl"):
            d = h.get(m)
            if d is None:
                cols.append("–")
                continue
            mid = "".join(f" / {d[o]:.3f}" if o in d else " / –" for o in others)
            cols.append(f"{d['am']:.3f}{mid} / {d['best_eviction']:.3f} ({d['baseline']})")
        cop = h.get("am_compaction_over_prefill")
        lines.append(
            f"| {h['model']} | {h['n_tokens']} | {h['ratio']:g} | " + " | ".join(cols)
            + (f" | {cop:.2f} |" if cop is not None else " | – |")
        )
    by_ctx = defaultdict(list)
    for r in rows:
        by_ctx[(r["model"], r["n_tokens"])].append(r)
    for (model, n), rs in by_ctx.items():
        ratios = sorted({r["ratio"] for r in rs if r["ratio"] > 1})
        methods = list(dict.fromkeys(r["method"] for r in rs))
        full = next((r for r in rs if r["method"] == "full"), None)
        for m, (label, lower) in METRICS.items():
            if not any(m in r for r in rs):
                continue
            lines += ["", f"### {model}, {n} tokens: {label} ({'lower' if lower else 'higher'} is better)", ""]
            lines.append("| method | " + " | ".join(f"{x:g}x" for x in ratios) + " |")
            lines.append("|---|" + "---|" * len(ratios))
            for meth in methods:
                if meth == "full":
                    continue
                cells = {r["ratio"]: r for r in rs if r["method"] == meth}
                lines.append(
                    f"| {meth} | " + " | ".join(_fmt(cells[x], m) if x in cells else "–" for x in ratios) + " |"
                )
            if full is not None and m in full:
                lines.append(f"| full cache | {_fmt(full, m)} |" + " |" * (len(ratios) - 1))
    return "\n".join(lines) + "\n"


def plot(
    rows: list[dict[str, Any]],
    out: Path,
    metrics: tuple[str, ...] = ("token_accuracy", "answer_nll", "delta_nll", "kl"),
) -> list[Path]:
    """One PNG per (model, length): a panel per metric, quality vs ratio, a line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    by_ctx = defaultdict(list)
    for r in rows:
        by_ctx[(r["model"], r["n_tokens"])].append(r)
    for (model, n), rs in by_ctx.items():
        cols = min(2, len(metrics))
        rows_ = -(-len(metrics) // cols)
        fig, grid_ = plt.subplots(rows_, cols, figsize=(4.6 * cols + 1.2, 3.4 * rows_), squeeze=False)
        axes = [list(grid_.ravel())]
        for ax in axes[0][len(metrics) :]:
            ax.set_visible(False)
        for ax, m in zip(axes[0], metrics, strict=False):  # spare axes are hidden
            for meth in dict.fromkeys(r["method"] for r in rs):
                pts = sorted((r["ratio"], r[m], r.get(m + "_se", 0.0)) for r in rs if r["method"] == meth and m in r)
                if meth == "full" and pts:
                    ax.axhline(pts[0][1], color="k", ls=":", lw=1, label="full")
                    continue
                if pts:
                    x, y, e = map(np.array, zip(*pts, strict=True))
                    ax.errorbar(
                        x, y, yerr=e, marker="o", ms=3, lw=1.5 if meth.startswith("am") else 1, label=meth, capsize=2
                    )
            ax.set_xscale("log")
            ax.set_xticks(sorted({r["ratio"] for r in rs if r["ratio"] > 1}))
            ax.get_xaxis().set_major_formatter(matplotlib.ticker.FormatStrFormatter("%gx"))
            ax.get_xaxis().set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel("compaction ratio")
            ax.set_title(METRICS[m][0], fontsize=9)
            ax.grid(alpha=0.3)
        handles, labels = max((a.get_legend_handles_labels() for a in axes[0]), key=lambda hl: len(hl[1]))
        if labels:
            fig.legend(handles, labels, fontsize=7, loc="center right")
        fig.suptitle(f"{model}, ~{n} tokens")
        fig.tight_layout(rect=(0, 0, 0.86, 1))
        p = out / f"quality_{model}_{n}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def write_report(out: Path) -> dict[str, Any]:
    """Read ``out/cells.jsonl``, write summary.json, results.md and the plots; returns the summary."""
    rows = summarize(load_cells(out / "cells.jsonl"))
    heads = headline(rows)
    summary = {"rows": rows, "headline": heads}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "results.md").write_text(markdown(rows, heads))
    summary["plots"] = [str(p) for p in plot(rows, out)]
    return summary
