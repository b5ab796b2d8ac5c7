"""Diagnosis (stop 20): on the 256-token continuations H2O beats the default on tokens 65-256 of
Gemma-3's 1K contexts; is it H2O's keys, its original values or the exact recent window the
default keeps? Three variants at 10x on the two acceptance contexts where the gap is largest
(1K seeds 7 and 8; a diagnosis, nothing is chosen on them): H2O's keys (attn-mean over the
queries captured during prefill) with AM's fit and the default's exact recent window
(``h2o-fit``), the same without the window (``h2o-fit-r0``), and the default without the window
(``am-op3-r0``). The other methods' cells are in docs/results/issue6/long/cells.jsonl.

    python docs/results/diagnosis/h2o_fit/h2o_fit.py gemma3-270m 1024 7,8 10 h2o-fit,h2o-fit-r0,am-op3-r0 OUT
"""
import sys
from pathlib import Path
from pyllamaam.evaluation import grid
grid.METHODS.update({
    "h2o-fit": {"method": "attn-mean", "queries": "context", "fit": True, "on_policy": 1, "recurring": 0.0},
    "h2o-fit-r0": {"method": "attn-mean", "queries": "context", "fit": True, "on_policy": 1, "recent": 0.0, "recurring": 0.0},
    "am-op3-r0": {"method": "am", "queries": "repeat", "on_policy": 3, "recent": 0.0, "recurring": 0.0},
})
model, ns, seeds, ratios, methods, out = sys.argv[1:7]
spec = grid.GridSpec(models=[model], n_tokens=[int(x) for x in ns.split(",")],
    seeds=[int(x) for x in seeds.split(",")], ratios=[float(x) for x in ratios.split(",")],
    methods=methods.split(","), continuation=256)
grid.run_grid(spec, Path(out), progress=False)
