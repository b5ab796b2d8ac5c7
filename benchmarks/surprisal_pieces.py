"""What recording each token's surprisal costs a prefill, by the size of the decode pieces.

Reads a QA document of ``--n-tokens`` once as a plain prefill (the last token's logits, pieces of
512) and once with every token's logits in pieces of each ``--pieces`` size, each token's
negative log-likelihood taken as :meth:`pyllamaam.engine.Session.record_surprisal` does; prints
JSON: seconds per reading and their ratio to the plain prefill of the same round. llama.cpp
keeps a piece's rows of n_vocab floats, so small pieces also bound its output buffer.

Run: .venv/bin/python benchmarks/surprisal_pieces.py --model smollm2-135m --rounds 2
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import pyllamaam
from pyllamaam import _native, engine
from pyllamaam.evaluation import qa_run
from pyllamaam.evaluation.cost import usable_cores


def read(model, toks: np.ndarray, piece: int | None, threads: int) -> float:
    """Seconds to prefill ``toks`` in a fresh session (``piece`` None: plain, pieces of 512)."""
    with model.session(n_ctx=len(toks) + 64, n_threads=threads) as s:
        clock = time.perf_counter()
        if piece is None:
            _native.decode(s.ctx, toks, 0, 512, False)
        else:
            for a in range(0, len(toks), piece):
                logits = _native.decode(s.ctx, toks[a : a + piece], a, piece, True)
                k = min(len(logits) - 1, len(toks) - a - 1)
                engine._nll_rows(logits[:k], toks[a + 1 : a + 1 + k])
        return time.perf_counter() - clock


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n-tokens", type=int, default=2048)
    ap.add_argument("--pieces", default="512,128,64")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="default: every core")
    a = ap.parse_args()
    model = pyllamaam.load_model(None if a.model == "smollm2-135m" else a.model)
    doc = qa_run.build_document(model, a.n_tokens, 1)
    toks = np.asarray(model.tokenize(doc.text, add_bos=model.info["add_bos"]), np.int32)
    threads = a.threads or usable_cores()
    rounds = []
    for _ in range(a.rounds):
        plain = read(model, toks, None, threads)
        got = {"plain_seconds": plain}
        for p in (int(x) for x in a.pieces.split(",")):
            sec = read(model, toks, p, threads)
            got[str(p)] = {"seconds": sec, "over_plain": sec / plain}
        rounds.append(got)
    print(json.dumps({"model": a.model, "n_tokens": len(toks), "threads": threads, "rounds": rounds}, indent=1))


if __name__ == "__main__":
    main()
