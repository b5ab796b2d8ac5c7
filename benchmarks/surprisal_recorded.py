"""Recorded or read again: does ``compact(memory=M)`` keep the same sentences and give the same
QA answers when the surprisal was recorded during the prefill (:meth:`Session.record_surprisal`)
as when the text is read again for it? One QA document (1K tokens) per ``--seeds``; prints, per
document, the method each run used, the answers right of each and whether the cells kept
verbatim are the same, then JSON totals.

Run: .venv/bin/python benchmarks/surprisal_recorded.py --model smollm2-135m --memory 8 --seeds 1,2,3
"""

from __future__ import annotations

import argparse
import json

import pyllamaam
from pyllamaam.evaluation import qa_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--memory", type=float, default=8.0)
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    model = pyllamaam.load_model(None if a.model == "smollm2-135m" else a.model)
    tot = {"questions": 0, "read_again": 0, "recorded": 0, "same_answers": 0, "same_kept": 0, "documents": 0}
    for seed in (int(x) for x in a.seeds.split(",")):
        doc = qa_run.build_document(model, 1024, seed)
        toks = model.tokenize(doc.text, add_bos=model.info["add_bos"])
        got = {}
        for mode in ("read_again", "recorded"):
            with model.session(n_ctx=2 * len(toks) + 512, n_threads=a.threads) as s:
                if mode == "recorded":
                    s.record_surprisal()
                s.prefill(toks)
                rep = s.compact(memory=a.memory)
                right = [qa_run.ask(s, model, q)["correct"] for q in doc.questions]
                got[mode] = {"method": rep.memory.get("method"), "fell_back": rep.fell_back,
                             "right": int(sum(right)), "answers": right, "kept": rep.verbatim}
                tot[mode] += int(sum(right))
        same = {"same_answers": got["read_again"]["answers"] == got["recorded"]["answers"],
                "same_kept": got["read_again"]["kept"] == got["recorded"]["kept"]}
        tot["questions"] += len(doc.questions)
        tot["documents"] += 1
        tot["same_answers"] += same["same_answers"]
        tot["same_kept"] += same["same_kept"]
        row = {m: {k: v for k, v in g.items() if k in ("method", "fell_back", "right")} for m, g in got.items()}
        print(json.dumps({"seed": seed, **row, **same}), flush=True)
    print(json.dumps({"model": a.model, "memory": a.memory, "seeds": a.seeds, **tot}))


if __name__ == "__main__":
    main()
