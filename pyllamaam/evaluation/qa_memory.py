"""The QA suite by memory: answers against KV bytes (x fewer than llama.cpp's f16 full cache).

Rows of :func:`qa_run.summarize` carry ``bytes_ratio``; those addressed by a memory target carry
``memory``. Per model and document length: one markdown table (a column per memory target) and
one plot of accuracy against bytes with the frontier drawn: for every byte budget, the most
answers any configuration kept within it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .plots import EVICTIONS, F16, panel, pyplot, save


def label(r: dict[str, Any]) -> str:
    return r["method"] if r["cache"] == F16 else f"{r['method']} {r['cache']}"


def frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (bytes_ratio, accuracy) points that no other point beats with at least as few bytes:
    walking from the largest caches to the smallest, each point on it keeps fewer answers."""
    out: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (-p[0], -p[1])):  # smallest cache first
        if not out or y > out[-1][1]:
            out.append((x, y))
    return sorted(out)


def _best(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    return max(rows, key=lambda r: (r["accuracy"], r.get("bytes_ratio") or 0), default=None)


#: the table's rows after the quantized full caches: (name, methods, f16 only)
ROWS = (
    ("best eviction", EVICTIONS, False),
    ("default (f16)", ("default",), True),
    ("default, best type", ("default",), False),
    ("sentences, best type", ("sentences",), False),
    ("repeat-sentences, best type", ("repeat-sentences",), False),
    ("surprisal-sentences, best type", ("surprisal-sentences",), False),
    ("memory=", ("memory",), False),
    ("question-aware", ("question", "memory-question"), False),
)
TASK_METHODS = ("question", "memory-question")


def table(rows: list[dict[str, Any]]) -> str:
    """Per model and length, per memory target: the best quantized full cache with at least as
    many bytes, the best eviction baseline, the default (f16 and its best cache type), "sentences"
    and "repeat-sentences" (their best cache types), ``memory=``
    and question-aware compaction, each as accuracy (share of the f16 full cache's answers)."""
    out = []
    for model, n in sorted({(r["model"], r["tokens"]) for r in rows if r.get("memory")}):
        mine = [r for r in rows if (r["model"], r["tokens"]) == (model, n)]
        full = next((r for r in mine if r["method"] == "full" and r["cache"] == F16), None)
        quant = [r for r in mine if r["method"] == "full" and r["cache"] != F16 and r.get("bytes_ratio")]
        targets = sorted({r["memory"] for r in mine if r.get("memory")})
        out += [f"**{model}, {n}-token documents** (f16 full cache: "
                f"{'–' if full is None else format(full['accuracy'], '.2f')}; cells: accuracy (of full) [config])", "",
                "| memory | " + " | ".join(f"{m:g}x" for m in targets) + " |",
                "|---|" + "---|" * len(targets)]
        best = [_best([r for r in quant if r["bytes_ratio"] <= m * 1.001]) for m in targets]
        out.append("| quantized full cache, ≥ bytes | " + " | ".join(map(_cell, best)) + " |")
        for name, methods, f16_only in ROWS:
            # as in the shipped table (memory.build_table), a row where a compaction fell back
            # answered from the full cache and missed its target: it fills no column
            best = [_best([r for r in mine if r.get("memory") == m and r["method"] in methods
                           and (r["cache"] == F16 or not f16_only) and not r.get("fell_back")]) for m in targets]
            out.append(f"| {name} | " + " | ".join(map(_cell, best)) + " |")
        out.append("")
    return "\n".join(out)


def _cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return "–"
    of = "" if r.get("of_full") is None else f" ({r['of_full']:.2f})"
    return f"{r['accuracy']:.2f}{of} [{r['cache']}, {r.get('bytes_ratio') or 0:.1f}x]"


def plot(rows: list[dict[str, Any]], out: Path) -> list[str]:
    """qa_memory_<model>.png: accuracy against x fewer bytes than f16, one panel per length."""
    plt = pyplot()
    if plt is None:
        return []
    names = []
    for model in sorted({r["model"] for r in rows if r.get("memory")}):
        lengths = sorted({r["tokens"] for r in rows if r["model"] == model and r.get("memory")})
        fig, axes = plt.subplots(1, len(lengths), figsize=(7.2 * len(lengths), 4.6), squeeze=False)
        for ax, n in zip(axes[0], lengths, strict=True):
            mine = [r for r in rows if (r["model"], r["tokens"]) == (model, n) and r.get("bytes_ratio")]
            # a colour per method, a line style and marker per cache type: every series tells apart
            methods = sorted({r["method"] for r in mine})
            caches = sorted({r["cache"] for r in mine}, key=lambda c: (c != F16, c))
            for name in sorted({label(r) for r in mine}):
                pts = sorted((r["bytes_ratio"], r["accuracy"]) for r in mine if label(r) == name)
                first = next(r for r in mine if label(r) == name)
                kind = caches.index(first["cache"])
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="so^Dv"[kind % 5] if first["method"] != "full" else "s",
                        ls=("-", "--", ":", "-.")[kind % 4] if len(pts) > 1 else "", label=name,
                        color=f"C{methods.index(first['method']) % 10}", alpha=0.8)
            # without the question: what a cache that must serve any later question can keep
            front = frontier([(r["bytes_ratio"], r["accuracy"]) for r in mine if r["method"] not in TASK_METHODS])
            if front:
                fx, fy = zip(*front, strict=True)  # at x, the best point at x or smaller
                ax.step(fx, fy, where="pre", color="k", lw=2, alpha=0.35, label="frontier without the question")
            ticks = [t for t in (1, 2, 4, 8, 16, 32, 64) if t <= max(r["bytes_ratio"] for r in mine) * 1.2]
            panel(ax, ticks, "x fewer KV bytes than the f16 full cache", f"{model}, {n}-token documents", ncol=2)
        names.append(save(plt, fig, out / f"qa_memory_{model}.png"))
    return names
