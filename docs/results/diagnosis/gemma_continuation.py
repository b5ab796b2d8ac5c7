"""What Gemma-3's continuation reads after a compaction: the default, the default with its fitted
keys masked out (bias -inf on every fitted slot: only the sinks, the exact recent share and the
kept last cells remain), larger exact recent shares, and the window / SnapKV baselines, on grid
contexts, with the report's continuation probe (``tail_kl``: the context's last 32 tokens read
again) next to the true continuation's KL. One JSON line per (context, variant) to stdout.

    python docs/results/diagnosis/gemma_continuation.py MODEL RATIO N:SEED [N:SEED ...]

Research code: the masking patches ``kvsplit.assemble`` (the final write) for one variant."""
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import pyllamaam
from pyllamaam import kvsplit
from pyllamaam.evaluation import fidelity, grid

VARIANTS = {
    "default": {"method": "am"},
    "default-fit-masked": {"method": "am"},
    "recent-0.75": {"method": "am", "recent": 0.75},
    "recent-0.9": {"method": "am", "recent": 0.9},
    "window": {"method": "window", "queries": "context"},
    "snapkv": {"method": "snapkv", "queries": "context"},
}
_assemble = kvsplit.assemble
MASK = [False]


def _masked(kv, split, fitted):
    if MASK[0]:
        fitted = {il: dataclasses.replace(r, beta=np.full_like(r.beta, -np.inf)) for il, r in fitted.items()}
    return _assemble(kv, split, fitted)


kvsplit.assemble = _masked
model_name, ratio = sys.argv[1], float(sys.argv[2])
spec = grid.GridSpec()
with pyllamaam.load_model(grid._model_name(model_name)) as model:
    for arg in sys.argv[3:]:
        n, seed = (int(x) for x in arg.split(":"))
        ctx = grid.build_context(model, n, seed, spec.kinds)
        toks = model.tokenize(ctx.text, add_bos=model.info["add_bos"])
        cont = model.tokenize(ctx.continuation)[: spec.continuation + 1]
        questions = [(model.tokenize(ctx.prompt(t)), model.tokenize(" " + t.answer)) for t in ctx.tasks]
        with model.session(n_ctx=2 * len(toks) + 512) as s, tempfile.TemporaryDirectory() as tmp:
            s.capture_context_queries(cap=max(4096, len(toks)))
            s.prefill(toks)
            saved = s.save(Path(tmp) / "full.session")
            full = fidelity.continuation_logits(s, cont)
            for name, kw in VARIANTS.items():
                s.restore(saved)
                MASK[0] = name.endswith("fit-masked")
                clock = time.perf_counter()
                rep = s.compact(ratio=ratio, keep_first=spec.keep_first, keep_last=spec.keep_last, max_kl=float("inf"), max_attention_error=float("inf"), **kw)
                secs = time.perf_counter() - clock
                f = fidelity.fidelity(full, fidelity.continuation_logits(s, cont), cont[1:])
                ans = [fidelity.answer_check(s, q, a)["answer_nll"] for q, a in questions]
                print(json.dumps({
                    "model": model_name, "n_tokens_target": n, "seed": seed, "ratio": ratio, "variant": name,
                    "cells": s.n_cells, "kl": f["kl"], "delta_nll": f["delta_nll"], "answer_nll": float(np.mean(ans)),
                    "tail_kl": rep.tail_kl, "probe_kl": rep.kl, "seconds": secs, "fell_back": rep.fell_back,
                }), flush=True)
