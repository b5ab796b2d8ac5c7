"""How exactly llama.cpp reproduces Gemma-3's logits past its sliding window (n_swa = 512).

Prints, as JSON, the KL (nats, mean over 64 continuation tokens) between:
- the same context + continuation decoded in one ubatch and with n_ubatch 512 / 256 / 100;
- the live cache after prefill and the same cache after a sequence-state round trip
  (llama_state_seq_get_data -> llama_state_seq_set_data, what Session.save/restore, set_kv
  and eval_logits on iSWA caches go through).
Below the window every pair is bit-identical; past it they differ by a few 1e-3 nats. That is
the floor of every Gemma-3 KL/ΔNLL in docs/results: a compaction writes the cache back through
the same state path (upstream: ggml-org/llama.cpp issue 25295, SWA state round trip).

    python docs/results/diagnosis/iswa_floor.py [MODEL] [N_TOKENS ...]"""
import json
import sys

import numpy as np

import pyllamaam
from pyllamaam import _native
from pyllamaam.evaluation import grid


def kl(a, b):
    la = a - np.logaddexp.reduce(a, axis=1, keepdims=True)
    lb = b - np.logaddexp.reduce(b, axis=1, keepdims=True)
    return float((np.exp(la) * (la - lb)).sum(1).mean())


def decode(m, toks, start, n_batch, ctx=None):
    c = ctx or _native.context_new(m.ptr, n_ctx=4096, n_batch=n_batch, n_threads=2, flash_attn=False,
                                   kv_type="f16", flags=0)
    return c, _native.decode(c, np.asarray(toks, dtype=np.int32), start, n_batch, True).astype(np.float64)


name = sys.argv[1] if len(sys.argv) > 1 else "gemma3-270m"
lengths = [int(a) for a in sys.argv[2:]] or [400, 530, 1026, 2048]
m = pyllamaam.load_model(name)
ctx = grid.build_context(m, max(lengths), 2, list(grid.tasks.KINDS))
all_toks = m.tokenize(ctx.text, add_bos=m.info["add_bos"])
cont = m.tokenize(ctx.continuation)[:65]
for n in lengths:
    toks = all_toks[:n]
    row = {"model": name, "n_tokens": n, "n_swa": m.info.get("n_swa")}
    c, one = decode(m, toks + cont, 0, 4096)
    _native.context_free(c, 0)
    one = one[n:]
    for nb in (512, 256, 100):
        c, split = decode(m, toks + cont, 0, nb)
        _native.context_free(c, 0)
        row[f"kl_one_ubatch_vs_n_ubatch_{nb}"] = kl(one, split[n:])
    c = _native.context_new(m.ptr, n_ctx=4096, n_batch=512, n_threads=2, flash_attn=False, kv_type="f16", flags=0)
    _native.decode(c, np.asarray(toks, dtype=np.int32), 0, 512, False)
    blob = _native.state_get(c)
    _, live = decode(m, cont, n, 512, c)
    _native.state_set(c, blob)
    _, back = decode(m, cont, n, 512, c)
    _native.context_free(c, 0)
    row["kl_live_vs_state_round_trip"] = kl(live, back)
    print(json.dumps(row), flush=True)
