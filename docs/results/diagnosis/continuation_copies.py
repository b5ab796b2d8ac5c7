"""Where the grid's continuations copy from: for each context, the substrings of at least 20
characters of the continuation's first ~64 tokens that also occur in the context, and how many
tokens before the end of the context their last occurrence starts. One JSON line per context.

    python docs/results/diagnosis/continuation_copies.py MODEL N:SEED [N:SEED ...]"""
import json
import sys

import pyllamaam
from pyllamaam.evaluation import grid

model_name = sys.argv[1]
spec = grid.GridSpec()
with pyllamaam.load_model(grid._model_name(model_name)) as model:
    for arg in sys.argv[2:]:
        n, seed = (int(x) for x in arg.split(":"))
        ctx = grid.build_context(model, n, seed, spec.kinds)
        text = ctx.text
        cont_toks = model.tokenize(ctx.continuation)[: spec.continuation + 1]
        chars = len(model.detokenize(cont_toks)) if hasattr(model, "detokenize") else 4 * len(cont_toks)
        c = ctx.continuation[:chars]
        copies, i = [], 0
        while i < len(c):  # greedy: the longest piece starting here that the context holds
            best = 0
            for L in range(20, len(c) - i + 1):
                if c[i : i + L] not in text:
                    break
                best = L
            if best:
                back = len(model.tokenize(text[text.rfind(c[i : i + best]) :]))
                copies.append({"text": c[i : i + best], "tokens_back": back})
                i += best
            else:
                i += 1
        print(json.dumps({"model": model_name, "n_tokens_target": n, "seed": seed,
                          "copied_chars": sum(len(x["text"]) for x in copies), "chars": len(c), "copies": copies}))
