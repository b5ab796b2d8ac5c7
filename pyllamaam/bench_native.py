"""Benchmark: prefill and decode speed with the bias storage on vs the unpatched path.

The same patched library serves both: a context created without ``LLAMA_KVC_FLAG_BIAS``
builds exactly upstream's graphs (no bias tensors, no extra nodes). A third configuration adds
the Python query-probe callback that sessions install. Configurations are interleaved step by
step so that machine noise hits them alike; the result is JSON with ratios to the unpatched
path.
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


def _context(model: Model, name: str, cfg: dict[str, Any], n_ctx: int, n_threads: int) -> int:
    probe = (lambda t, ask: False if ask else True) if cfg["probe"] else None
    return _native.context_new(
        model.ptr,
        n_ctx=n_ctx,
        n_batch=512,
        n_threads=n_threads,
        flash_attn=False,
        kv_type="f16",
        flags=cfg["flags"],
        probe=probe,
        probe_key=hash(name),
    )


def run(
    model_name: str | None = None,
    n_tokens: int = 4096,
    n_decode: int = 64,
    n_threads: int | None = None,
) -> dict[str, Any]:
    """Prefill ``n_tokens`` and decode ``n_decode`` in every configuration, interleaved step by
    step (one 512-token chunk or one decoded token per configuration in turn), so that a busy
    machine slows all of them alike; medians of the per-step times give the ratios."""
    import os

    n_threads = n_threads or os.cpu_count() or 1
    model = load_model(model_name)
    toks = _filler(model, n_tokens)
    n_ctx = n_tokens + n_decode + 16
    ctxs = {name: _context(model, name, cfg, n_ctx, n_threads) for name, cfg in CONFIGS.items()}
    pre: dict[str, list[float]] = {k: [] for k in CONFIGS}
    dec: dict[str, list[float]] = {k: [] for k in CONFIGS}
    last: dict[str, np.ndarray] = {}
    try:
        for s in range(0, n_tokens, 512):
            for name, ctx in ctxs.items():
                t0 = time.perf_counter()
                out = _native.decode(ctx, toks[s : s + 512], s, 512, False)
                pre[name].append(time.perf_counter() - t0)
                last[name] = out[-1]
        # every configuration decodes the same tokens (greedy on the unpatched path's logits)
        tok = int(np.argmax(last["unpatched_path"]))
        for i in range(n_decode):
            for name, ctx in ctxs.items():
                t0 = time.perf_counter()
                out = _native.decode(ctx, np.array([tok], dtype=np.int32), n_tokens + i, 512, False)
                dec[name].append(time.perf_counter() - t0)
                last[name] = out[-1]
            tok = int(np.argmax(last["unpatched_path"]))
    finally:
        for name, ctx in ctxs.items():
            _native.context_free(ctx, hash(name))
    out_: dict[str, Any] = {
        "model": model.arch,
        "model_path": str(model.path),
        "n_tokens": n_tokens,
        "n_decode": n_decode,
        "n_threads": n_threads,
        "method": "interleaved step by step; prefill tokens/s from the summed chunk times, "
        "decode from the median step time; *_paired: median of per-step ratios",
    }
    for name in CONFIGS:
        out_[name] = {
            "prefill_tps": n_tokens / float(np.sum(pre[name])),
            "decode_tps": 1.0 / float(np.median(dec[name])),
        }
    base = out_["unpatched_path"]
    for name in ("bias", "bias_probe"):
        out_[name]["prefill_ratio"] = out_[name]["prefill_tps"] / base["prefill_tps"]
        out_[name]["decode_ratio"] = out_[name]["decode_tps"] / base["decode_tps"]
        # the ratio of each step to the unpatched step just before it, robust to slow phases
        out_[name]["decode_ratio_paired"] = float(np.median(np.array(dec["unpatched_path"]) / np.array(dec[name])))
        out_[name]["prefill_ratio_paired"] = float(np.median(np.array(pre["unpatched_path"]) / np.array(pre[name])))
    model.close()
    return out_


def main(quick: bool = False, model: str | None = None, n_tokens: int | None = None) -> None:
    if quick:
        out = run(model, n_tokens=n_tokens or 512, n_decode=8)
    else:
        out = run(model, n_tokens=n_tokens or 4096)
    print(json.dumps(out, indent=2))
