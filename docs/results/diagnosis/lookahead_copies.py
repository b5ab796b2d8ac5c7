"""Does the model's own greedy continuation copy what the true continuation copies?

For each grid context (the eval harness's suite at ~N tokens, seed S), the model continues the
context greedily for 64 tokens (end-of-generation passed over, as ``queries="lookahead"`` does),
and every run of 4 tokens of that continuation (and of the true one) found in the context is
listed by how many tokens back its latest occurrence starts. Prints one JSON line per context.

    python docs/results/diagnosis/lookahead_copies.py MODEL N:SEED [N:SEED ...]"""
import json
import sys

import pyllamaam
from pyllamaam.evaluation import grid
from pyllamaam.queries import scratch
from pyllamaam.queries.lookahead import lookahead_tokens_of

RUN = 4


def copies(context: list[int], seq: list[int]) -> list[int]:
    """Tokens back (from the context's end) of the latest occurrence of each run of ``seq``
    found in ``context``; the context's last tokens come first, across the seam."""
    latest = {tuple(context[j : j + RUN]): j for j in range(len(context) - RUN + 1)}
    s = context[len(context) - (RUN - 1) :] + seq
    grams = (tuple(s[j : j + RUN]) for j in range(len(s) - RUN + 1))
    return [len(context) - latest[g] for g in grams if g in latest]


model_name, specs = sys.argv[1], sys.argv[2:]
with pyllamaam.load_model(model_name) as model:
    for spec in specs:
        n, seed = map(int, spec.split(":"))
        ctx = grid.build_context(model, n, seed, grid.GridSpec(models=[model_name]).kinds)
        toks = model.tokenize(ctx.text, add_bos=model.info["add_bos"])
        true = model.tokenize(ctx.continuation)[:64]
        with model.session(n_ctx=len(toks) + 128) as s:
            s.prefill(toks)
            with scratch(s):
                greedy = lookahead_tokens_of(s, 64)
        print(json.dumps({
            "model": model_name, "n_tokens": len(toks), "seed": seed,
            "greedy_copies_back": copies(toks, greedy), "true_copies_back": copies(toks, true),
            "greedy": model.detokenize(greedy)[:120], "true": model.detokenize(true)[:120],
        }), flush=True)
