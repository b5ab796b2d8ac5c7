"""Benchmark: prefill and decode speed with the bias storage on vs the unpatched path.

The same patched library serves both: a context created without ``LLAMA_KVC_FLAG_BIAS``
builds exactly upstream's graphs (no bias tensors, no extra nodes). A third configuration adds
the Python query-probe callback that sessions install. Configurations are interleaved over
rounds so that machine noise hits them alike; the result is JSON with ratios to the
unpatched path.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from . import _native
from .engine import Model, load_model

CONFIGS = {
    "unpatched_path": {"flags": 0, "probe": False},
    "bias": {"flags": _native.FLAG_BIAS, "probe": False},
    "bias_probe": {"flags": _native.FLAG_BIAS | _native.FLAG_QUERY_PROBE, "probe": True},
}


def _filler(model: Model, n: int) -> np.ndarray:
    import pydoc_data.topics

    text = " ".join(pydoc_data.topics.topics.values())
    toks = model.tokenize(text, add_bos=True)
    while len(toks) < n:
        toks += toks[1:]
    return np.asarray(toks[:n], dtype=np.int32)


def _run(model: Model, cfg: dict[str, Any], toks: np.ndarray, n_ctx: int, n_decode: int, n_threads: int) -> dict[str, float]:
    probe = (lambda t, ask: False if ask else True) if cfg["probe"] else None
    ctx = _native.context_new(
        model.ptr,
        n_ctx=n_ctx,
        n_batch=512,
        n_threads=n_threads,
        flash_attn=False,
        kv_type="f16",
        flags=cfg["flags"],
        probe=probe,
        probe_key=id(cfg),
    )
    try:
        t0 = time.perf_counter()
        logits = _native.decode(ctx, toks, 0, 512, False)
        t1 = time.perf_counter()
        pos = len(toks)
        for i in range(n_decode):
            tok = np.array([int(np.argmax(logits[-1]))], dtype=np.int32)
            logits = _native.decode(ctx, tok, pos + i, 512, False)
        t2 = time.perf_counter()
    finally:
        _native.context_free(ctx, id(cfg))
    return {"prefill_tps": len(toks) / (t1 - t0), "decode_tps": n_decode / (t2 - t1)}


def run(model_name: str | None = None, n_tokens: int = 4096, n_decode: int = 64, rounds: int = 2, n_threads: int | None = None) -> dict[str, Any]:
    import os

    n_threads = n_threads or os.cpu_count() or 1
    model = load_model(model_name)
    toks = _filler(model, n_tokens)
    n_ctx = n_tokens + n_decode + 16
    res: dict[str, list[dict[str, float]]] = {k: [] for k in CONFIGS}
    for _ in range(rounds):
        for name, cfg in CONFIGS.items():
            res[name].append(_run(model, cfg, toks, n_ctx, n_decode, n_threads))
    out: dict[str, Any] = {
        "model": model.arch,
        "model_path": str(model.path),
        "n_tokens": n_tokens,
        "n_decode": n_decode,
        "rounds": rounds,
        "n_threads": n_threads,
    }
    for name, runs in res.items():
        out[name] = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
    base = out["unpatched_path"]
    for name in ("bias", "bias_probe"):
        out[name]["prefill_ratio"] = out[name]["prefill_tps"] / base["prefill_tps"]
        out[name]["decode_ratio"] = out[name]["decode_tps"] / base["decode_tps"]
    model.close()
    return out


def main(quick: bool = False, model: str | None = None, n_tokens: int | None = None) -> None:
    if quick:
        out = run(model, n_tokens=n_tokens or 256, n_decode=8, rounds=1)
    else:
        out = run(model, n_tokens=n_tokens or 4096)
    print(json.dumps(out, indent=2))
