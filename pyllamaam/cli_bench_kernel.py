"""``pyllamaam bench kernel``: seconds per stage of the Attention Matching kernel.

Synthetic structured data (``pyllamaam.compact.synthetic``), float32, one process.
Reports JSON: a grid over T and d (H = 3 KV heads, n = 1K queries, t = T / 10), the
SmolLM2-135M shape (30 layers x 3 KV heads, d = 64) at T = 8K, the speedup of the batched
entry point over a per-head loop, and the peak numpy memory of one layer. Everything runs
with the kernel's default options (those the pipeline uses too). Wall-clock figures on a
shared machine depend on its load: the JSON records the load average and CPU seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import tracemalloc

import numpy as np

from .compact import compact_head, compact_layer
from .compact.parallel import default_workers, map_layers
from .compact.synthetic import synthetic_layer

STAGES = ("scores", "select", "beta", "values")


def _layer_run(T: int, d: int, n: int, H: int, ratio: int, seed: int, **opts) -> dict:
    L = synthetic_layer(H=H, T=T, n=n, d=d, seed=seed)
    t0 = time.perf_counter()
    res = compact_layer(L.K, L.V, L.Q_fit, T // ratio, L.scale, **opts)
    total = time.perf_counter() - t0
    return {"total_s": total, **{f"{s}_s": res.timings[s] for s in STAGES}}


def grid(Ts, ds, n: int = 1024, H: int = 3, ratio: int = 10) -> list[dict]:
    """One layer of H heads per (T, d)."""
    rows = []
    for T in Ts:
        for d in ds:
            r = _layer_run(T, d, n, H, ratio, seed=T + d)
            rows.append({"T": T, "d": d, "n": n, "H": H, "t": T // ratio, **_round(r)})
    return rows


def model_shape(n_layer: int, H: int, T: int, d: int, n: int, t: int, workers: int | None = None, **opts) -> dict:
    """Every (layer, KV head) of a model as the pipeline fits them: layers on ``workers``
    threads with a single-threaded BLAS (:func:`map_layers`); data generation not timed.
    Stage seconds are summed over layers (above the wall time when layers ran in parallel)."""
    sums = dict.fromkeys(STAGES, 0.0)
    load = _load()
    layers = [synthetic_layer(H=H, T=T, n=n, d=d, seed=layer) for layer in range(n_layer)]
    t0, c0 = time.perf_counter(), time.process_time()
    results = map_layers(lambda L: compact_layer(L.K, L.V, L.Q_fit, t, L.scale, **opts), layers, workers)
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    for res in results:
        for s in STAGES:
            sums[s] += res.timings[s]
    return _round(
        {
            "layers": n_layer,
            "kv_heads": H,
            "T": T,
            "d": d,
            "n": n,
            "t": t,
            "workers": min(n_layer, default_workers() if workers is None else workers),
            "total_s": total,
            **{f"{s}_s": v for s, v in sums.items()},
            # CPU seconds of this process (BLAS threads included): above total_s means
            # threads ran in parallel, or spun waiting for a core on a busy machine.
            "cpu_s": cpu,
            "load_avg_before": load,
            "load_avg_after": _load(),
        }
    )


def batched_vs_loop(T: int, d: int, n: int, H: int, t: int) -> dict:
    """The batched entry point against a Python loop of compact_head (same results)."""
    L = synthetic_layer(H=H, T=T, n=n, d=d, seed=1)
    compact_layer(L.K, L.V, L.Q_fit, t, L.scale)  # warm-up (BLAS threads, caches)
    t0 = time.perf_counter()
    compact_layer(L.K, L.V, L.Q_fit, t, L.scale)
    batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    for h in range(H):
        compact_head(L.K[h], L.V[h], L.Q_fit[h], t, L.scale)
    loop = time.perf_counter() - t0
    return _round(
        {
            "T": T,
            "d": d,
            "n": n,
            "H": H,
            "t": t,
            "batched_s": batched,
            "loop_s": loop,
            "speedup": loop / batched,
        }
    )


def peak_memory(T: int, d: int, n: int, H: int, t: int) -> dict:
    """Peak traced numpy memory of one layer, in units of one n x T float32 block."""
    L = synthetic_layer(H=H, T=T, n=n, d=d, seed=2)
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    compact_layer(L.K, L.V, L.Q_fit, t, L.scale)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    block = n * T * 4
    return _round(
        {
            "T": T,
            "d": d,
            "n": n,
            "H": H,
            "t": t,
            "peak_bytes": peak,
            "score_block_bytes": block,
            "peak_per_head_in_blocks": peak / (H * block),
        }
    )


def run(quick: bool = False) -> dict:
    """All benchmark sections as one JSON-able dict."""
    if quick:
        Ts, ds, n, shape = (1024,), (64,), 256, dict(n_layer=2, T=2048, t=204, n=256)
    else:
        Ts, ds, n, shape = (
            (1024, 4096, 16384),
            (64, 128),
            1024,
            dict(n_layer=30, T=8192, t=800, n=1024),
        )
    return {
        "env": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cpus": os.cpu_count(),
            "load_avg": _load(),
            "quick": quick,
        },
        "grid": grid(Ts, ds, n=n),
        "smollm2_all_heads": model_shape(H=3, d=64, **shape),
        "batched_vs_loop": batched_vs_loop(
            T=2048 if not quick else 1024, d=64, n=n, H=3, t=204 if not quick else 102
        ),
        "memory": peak_memory(
            T=4096 if not quick else 1024, d=64, n=n, H=3, t=409 if not quick else 102
        ),
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point: print the benchmark JSON to stdout."""
    ap = argparse.ArgumentParser(prog="pyllamaam bench kernel", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes, a few seconds")
    args = ap.parse_args(argv)
    print(json.dumps(run(quick=args.quick), indent=1))
    return 0


def _load() -> float | None:
    """1-minute load average (timings on a shared machine are only comparable with it)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _round(d: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}
