"""The cost of compaction (DESIGN.md section 7), always as ratios from one run.

For each context length N and thread count: prefill tokens/s; compaction seconds per stage
and over prefill seconds; decode tokens/s after r-fold compaction of N tokens vs a fresh context
holding the same number of cells (the physical limit); peak RSS of the process against the KV
cache size. Where ``compact(memory=)`` ranks by surprisal, the session records it while reading
(:meth:`~pyllamaam.engine.Session.record_surprisal`, as the CLI and the server do): stage
``record`` is that prefill's seconds over a plain one's, counted in the compaction's cost. The
session's ``n_threads`` sets the threads of its forward passes and of the compaction's array
stages alike, so each row is one setting of the whole cost.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..memory import wants_surprisal
from . import tasks

#: ``BenchSpec.device`` values: "gpu" offloads every layer (n_gpu_layers=99) to a GPU device.
DEVICES = ("cpu", "gpu")


@dataclass
class BenchSpec:
    models: list[str] = field(default_factory=lambda: ["smollm2-135m"])
    n_tokens: list[int] = field(default_factory=lambda: [2048, 4096, 8192])
    ratio: float = 10.0
    # compact(memory=M) instead of the ratio: M times fewer bytes than the f16 full cache, in the
    # cache types the measured table picks (the move to them counts in the compaction's seconds)
    memory: float | None = None
    method: str | None = None  # None: Session.compact's default
    queries: str | None = None  # None: the method's default source
    decode_tokens: int = 32
    # thread counts, one row each: an int, or "all" (the usable cores, the sessions' default)
    threads: list[int | str] = field(default_factory=lambda: [1, 2, "all"])
    device: str = "cpu"
    repeat_max_tokens: float | None = None  # tokens, or a fraction of N if < 1 (None: the default)
    verify: bool = True  # the default compaction verifies: its probes count in its seconds
    options: dict[str, Any] = field(default_factory=dict)  # more Session.compact options


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def _text_tokens(model: Any, n: int) -> list[int]:
    hay = tasks.haystack_text()
    toks = model.tokenize(hay, add_bos=model.info["add_bos"])
    while len(toks) < n:  # repeat the manual for lengths beyond it
        toks += toks[1:]
    return toks[:n]


def _decode_rate(session: Any, n: int, warmup: int = 2) -> float:
    """Greedy tokens/s over ``n`` single-token decode steps after ``warmup`` untimed ones
    (the first steps after a state change rebuild the graph); the state is restored after."""
    with session.scratch():
        for _ in range(warmup):
            session.prefill([int(np.argmax(session.logits()))])
        clock = time.perf_counter()
        for _ in range(n):
            session.prefill([int(np.argmax(session.logits()))])
        return n / (time.perf_counter() - clock)


def _paired_decode_rates(a: Any, b: Any, n: int, rounds: int = 3) -> tuple[float, float]:
    """Median decode rates of two sessions measured in alternation, so load drifts hit both."""
    ra, rb = [], []
    for _ in range(rounds):
        ra.append(_decode_rate(a, n))
        rb.append(_decode_rate(b, n))
    return float(np.median(ra)), float(np.median(rb))


def kv_bytes(session: Any) -> int:
    """Bytes of the compactable cache's K and V at f16 for the cells in use."""
    per_cell = sum(
        li["n_head_kv"] * (li["head_dim_k"] + li.get("head_dim_v", li["head_dim_k"]))
        for li in (session.layers[il] for il in session.compact_layers())
    )
    return 2 * per_cell * session.n_cells


def usable_cores() -> int:
    """Cores this process may use (what ``"all"`` threads means)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def thread_counts(threads: list[int | str]) -> list[int]:
    """``threads`` as distinct counts, in order ("all": the usable cores; 1,2,all on 2 cores: 1, 2)."""
    out: list[int] = []
    for t in threads:
        n = usable_cores() if t == "all" else t
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"threads must be integers >= 1 or 'all', not {t!r}")
        if n not in out:
            out.append(n)
    return out


def gpu_layers(device: str) -> int:
    """``n_gpu_layers`` for ``device``; a GPU device must exist for "gpu"."""
    if device not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, not {device!r}")
    if device == "cpu":
        return 0
    from ..devices import gpus

    if not gpus():
        raise ConfigError("--device gpu: this build sees no GPU device (pyllamaam doctor lists them; "
                          "build for CUDA with make test-gpu)")
    return 99


def bench_one(model: Any, n: int, spec: BenchSpec, n_threads: int | None = None) -> dict[str, Any]:
    """Every cost number for one context length, sessions on ``n_threads`` threads."""
    toks = _text_tokens(model, n)
    row: dict[str, Any] = {"n_tokens": n, "ratio": None if spec.memory else spec.ratio, "memory": spec.memory,
                           "method": spec.method or "default",
                           "queries": spec.queries or "default", "device": spec.device}
    n_ctx = 2 * n + 512 + spec.decode_tokens
    with model.session(n_ctx=n_ctx, n_threads=n_threads) as s:
        row["threads"] = s.n_threads
        if spec.queries and "context" in spec.queries:
            s.capture_context_queries(cap=max(4096, n))
        record = bool(spec.memory) and wants_surprisal(s, spec.memory, task=False)
        if record:  # as the CLI and the server do where the table's pick ranks by surprisal
            s.record_surprisal()
        clock = time.perf_counter()
        s.prefill(toks)
        row["prefill_seconds"] = time.perf_counter() - clock
        if record:  # the recording's share of the prefill counts as compaction; a plain prefill after
            row["prefill_recording_seconds"] = row["prefill_seconds"]
            with model.session(n_ctx=n_ctx, n_threads=n_threads) as plain:
                clock = time.perf_counter()
                plain.prefill(toks)
                row["prefill_seconds"] = time.perf_counter() - clock
        row["prefill_tok_s"] = n / row["prefill_seconds"]
        row["kv_mb_before"] = kv_bytes(s) / 2**20
        rss0 = peak_rss_mb()
        opts: dict[str, Any] = {**spec.options, "verify": spec.verify}
        if spec.method:
            opts["method"] = spec.method
        if spec.queries:
            opts["queries"] = spec.queries
        if spec.repeat_max_tokens is not None:
            m = spec.repeat_max_tokens
            opts["repeat_max_tokens"] = max(1, round(m * n if m < 1 else m))
            row["repeat_max_tokens"] = opts["repeat_max_tokens"]
        cpu = time.process_time()
        rep = s.compact(memory=spec.memory, **opts) if spec.memory else s.compact(ratio=spec.ratio, **opts)
        # CPU seconds of this process over the compaction's wall seconds: near the threads when
        # they all ran, near 1 when the work was serial or another process held the other cores
        row["compaction_cpu_over_wall"] = (time.process_time() - cpu) / max(rep.total_seconds, 1e-9)
        row["peak_rss_mb"] = peak_rss_mb()
        row["peak_rss_growth_mb"] = row["peak_rss_mb"] - rss0
        row["compaction_seconds"] = dict(rep.seconds)
        row["compaction_total_seconds"] = rep.total_seconds
        if record:
            row["compaction_seconds"]["record"] = row["prefill_recording_seconds"] - row["prefill_seconds"]
            row["compaction_total_seconds"] += row["compaction_seconds"]["record"]
        row["compaction_over_prefill"] = row["compaction_total_seconds"] / row["prefill_seconds"]
        row["cells_after"] = s.n_cells
        row["fell_back"] = rep.fell_back
        row["arrays"] = rep.arrays
        row["kv_types"] = f"{s.kv_type_k}/{s.kv_type_v}"
        row["kv_mb_after"] = s.kv_bytes() / 2**20  # the cells in use, K, V and bias
        # the fresh session decodes in the same cache types and attention path as the compacted one
        with model.session(n_ctx=row["cells_after"] + spec.decode_tokens + 8, n_threads=n_threads,
                           kv_type_k=s.kv_type_k, kv_type_v=s.kv_type_v, flash_attn=s.flash_attn) as f:
            f.prefill(toks[: row["cells_after"]])
            rates = _paired_decode_rates(s, f, spec.decode_tokens)
        row["decode_tok_s_compacted"], row["decode_tok_s_fresh"] = rates
    row["decode_compacted_over_fresh"] = row["decode_tok_s_compacted"] / row["decode_tok_s_fresh"]
    return row


def run_bench(spec: BenchSpec, out: Path, progress: bool = True) -> dict[str, Any]:
    """Bench every length and thread count of ``spec``; writes ``out/bench.json``, ``bench.md``,
    ``scaling.png``."""
    from tqdm import tqdm

    import pyllamaam

    threads = thread_counts(spec.threads)
    n_gpu_layers = gpu_layers(spec.device)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    bar = tqdm(total=len(spec.models) * len(spec.n_tokens) * len(threads), disable=not progress, unit="run",
               desc="bench")
    for name in spec.models:
        with pyllamaam.load_model(None if name in ("smollm2-135m", "default") else name,
                                  n_gpu_layers=n_gpu_layers) as model:
            for n in spec.n_tokens:
                for th in threads:
                    rows.append({"model": name, **bench_one(model, n, spec, th)})
                    bar.update(1)
    bar.close()
    result = {"spec": asdict(spec), "threads": threads, "usable_cores": usable_cores(),
              "load_avg": list(os.getloadavg()), "rows": rows, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (out / "bench.json").write_text(json.dumps(result, indent=1))
    (out / "bench.md").write_text(bench_markdown(rows))
    plot_scaling(rows, out / "scaling.png")
    return result


def bench_markdown(rows: list[dict[str, Any]]) -> str:
    stages = list(dict.fromkeys(k for r in rows for k in r["compaction_seconds"]))
    head = ["model", "N", "threads", "arrays", "prefill tok/s", *[f"{s} s" for s in stages], "compaction s",
            "compaction/prefill", "decode tok/s compacted", "decode tok/s fresh", "compacted/fresh", "KV MiB",
            "KV MiB after", "peak RSS MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        vals = [r.get("model", ""), str(r["n_tokens"]), str(r.get("threads", "")), r.get("arrays", ""),
                f"{r['prefill_tok_s']:.1f}",
                *[f"{r['compaction_seconds'].get(s, 0.0):.2f}" for s in stages],
                f"{r['compaction_total_seconds']:.2f}", f"{r['compaction_over_prefill']:.2f}",
                f"{r['decode_tok_s_compacted']:.1f}", f"{r['decode_tok_s_fresh']:.1f}",
                f"{r['decode_compacted_over_fresh']:.2f}", f"{r['kv_mb_before']:.1f}",
                f"{r['kv_mb_after']:.1f}" + (f" ({r['kv_types']})" if r.get("memory") else ""),
                f"{r['peak_rss_mb']:.0f}"]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def plot_scaling(rows: list[dict[str, Any]], path: Path) -> Path:
    """Compaction seconds over prefill seconds against N, one line per model and thread count
    (1.0: a prefill)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, th in dict.fromkeys((r.get("model", ""), r.get("threads")) for r in rows):
        mine = [r for r in rows if (r.get("model", ""), r.get("threads")) == (name, th)]
        label = name if th is None else f"{name}, {th} thread{'s' if th != 1 else ''}"
        ax.plot([r["n_tokens"] for r in mine], [r["compaction_over_prefill"] for r in mine], "-o", label=label)
    ax.axhline(1.0, color="k", lw=0.8, ls="--", label="one prefill")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context tokens N")
    ax.set_ylabel("compaction seconds / prefill seconds")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
