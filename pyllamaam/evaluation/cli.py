"""``pyllamaam eval`` (quality) and ``pyllamaam bench`` (cost): argument parsing only."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import PyllamaamError
from . import grid, qa_run

#: --quick: tiny sizes that run in well under two minutes on two cores (make test).
QUICK_EVAL = {"models": ["smollm2-135m"], "n_tokens": [128], "ratios": [4.0], "seeds": [0],
              "methods": ["full", "am", "snapkv", "window"], "kinds": ["passkey", "kv"], "continuation": 12}
QUICK_BENCH = {"n_tokens": [128, 256], "ratio": 4.0, "decode_tokens": 8}


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x]


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def _strs(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def _threads(s: str) -> list[int | str]:
    out: list[int | str] = []
    for x in _strs(s):
        if x == "all":
            out.append(x)
        elif x.isdigit() and int(x) >= 1:
            out.append(int(x))
        else:
            raise argparse.ArgumentTypeError(f"thread counts are integers >= 1 or 'all', not {x!r}")
    if not out:
        raise argparse.ArgumentTypeError("give at least one thread count")
    return out


def _option(s: str) -> tuple[str, Any]:
    key, sep, value = s.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, not {s!r}")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def eval_parser() -> argparse.ArgumentParser:
    d = grid.GridSpec()
    ap = argparse.ArgumentParser(prog="pyllamaam eval", description="quality grid: tasks, KL and ΔNLL "
                                 "over methods x ratios x models x lengths (resumable: finished cells are skipped)")
    ap.add_argument("--suite", choices=("qa", "grid"), default="grid",
                    help="qa: the question-answering suite (documents with many facts, asked after one "
                         "compaction each); grid: tasks, KL and ΔNLL per method (default)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run for make test)")
    ap.add_argument("--out", type=Path, default=Path("results"), help="results folder (default results/)")
    ap.add_argument(
        "--models", type=_strs, default=d.models,
        help="comma list: smollm2-135m, gemma3-270m, qwen2.5-0.5b, a .gguf path"
    )
    ap.add_argument("--n-tokens", type=_ints, default=d.n_tokens, help="context lengths, comma list")
    ap.add_argument("--ratios", type=_floats, default=d.ratios)
    ap.add_argument("--methods", type=_strs, default=None,
                    help=f"comma list of {', '.join(grid.METHODS)} (grid) or {', '.join(qa_run.QA_METHODS)} (qa)")
    ap.add_argument("--caches", type=_strs, default=["f16"],
                    help="qa: KV cache types, comma list; K/V separately as K/V, e.g. f16,q8_0,q4_0,q8_0/q4_0")
    ap.add_argument("--memories", type=_floats, default=[],
                    help="qa: memory targets (x fewer KV bytes than the f16 full cache) instead of --ratios")
    ap.add_argument("--write-memory-table", type=Path, default=None, metavar="PATH",
                    help="qa: write the table compact(memory=) reads (pyllamaam/memory_table.json) from the "
                         "cells addressed by --memories in --out")
    ap.add_argument("--seeds", type=_ints, default=d.seeds)
    ap.add_argument("--kinds", type=_strs, default=d.kinds, help="task kinds, comma list")
    ap.add_argument("--continuation", type=int, default=d.continuation, help="continuation tokens for KL / ΔNLL")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--report-only", action="store_true", help="only rebuild the report from cells.jsonl")
    ap.add_argument("--no-progress", action="store_true")
    return ap


def eval_main(argv: list[str] | None = None) -> int:
    """Run the quality grid and write cells.jsonl, summary.json, results.md and plots to --out."""
    args = eval_parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pyllamaam.native").setLevel(logging.ERROR)
    if args.suite == "qa":
        return _qa_main(args)
    args.methods = args.methods or grid.GridSpec().methods
    spec = grid.GridSpec(models=args.models, n_tokens=args.n_tokens, ratios=args.ratios, methods=args.methods,
                         seeds=args.seeds, kinds=args.kinds, continuation=args.continuation, n_threads=args.threads)
    if args.quick:
        spec = grid.GridSpec(**{**spec.__dict__, **QUICK_EVAL})
    from .report import write_report

    try:
        clock = time.perf_counter()
        if not args.report_only:
            grid.run_grid(spec, args.out, progress=not args.no_progress)
        summary = write_report(args.out)
    except PyllamaamError as err:
        print(f"pyllamaam eval: error: {err}", file=sys.stderr)
        return 2
    print((args.out / "results.md").read_text().split("\n### ")[0])
    print(f"wrote {args.out}/ (cells.jsonl, summary.json, results.md, {len(summary['plots'])} plot(s)) "
          f"in {time.perf_counter() - clock:.1f} s")
    return 0


def _qa_main(args: argparse.Namespace) -> int:
    """The QA suite: qa_cells.jsonl, qa_summary.json, qa_results.md and qa_<model>.png in --out."""
    d = qa_run.QASpec()
    spec = qa_run.QASpec(
        models=args.models, n_tokens=args.n_tokens, ratios=args.ratios, methods=args.methods or d.methods,
        seeds=args.seeds, continuation=args.continuation, n_threads=args.threads, caches=args.caches,
        memories=args.memories,
    )
    if args.quick:
        spec.n_tokens, spec.ratios, spec.seeds = [600], [4.0], [0]
        spec.methods, spec.continuation = ["full", "default", "chunkkv"], 12
    try:
        clock = time.perf_counter()
        if not args.report_only:
            qa_run.run_qa(spec, args.out, progress=not args.no_progress)
        report = qa_run.write_report(args.out)
        if args.write_memory_table:
            from .. import memory

            source = "make memory-table"
            table = memory.write_table(args.out / "qa_summary.json", source, args.write_memory_table)
            print(json.dumps({"memory_table": str(args.write_memory_table), "models": sorted(table["models"])}))
    except PyllamaamError as err:
        print(f"pyllamaam eval: error: {err}", file=sys.stderr)
        return 2
    print((args.out / "qa_results.md").read_text())
    print(json.dumps({"out": str(args.out / "qa_summary.json"), "rows": len(report["rows"]), "plots": report["plots"],
                      "seconds": round(time.perf_counter() - clock, 1)}))
    return 0


def bench_parser() -> argparse.ArgumentParser:
    from .cost import DEVICES, BenchSpec

    d = BenchSpec()
    ap = argparse.ArgumentParser(prog="pyllamaam bench", description="cost: prefill, compaction per stage, "
                                 "compaction/prefill, decode after compaction vs fresh, peak RSS, scaling over N")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run for make test)")
    ap.add_argument("--out", type=Path, default=Path("results"))
    ap.add_argument("--models", "--model", type=_strs, default=d.models, help="catalog names or GGUF paths, comma list")
    ap.add_argument("--n-tokens", type=_ints, default=d.n_tokens, help="context lengths N, comma list")
    ap.add_argument("--ratio", type=float, default=d.ratio)
    ap.add_argument("--memory", type=float, default=None,
                    help="compact(memory=M) instead of --ratio: M times fewer bytes than the f16 full cache")
    ap.add_argument("--method", default=d.method, help="default: Session.compact's")
    ap.add_argument("--queries", default=d.queries)
    ap.add_argument("--repeat-max-tokens", type=float, default=None,
                    help="repeat only evenly spread pieces: this many tokens, or this fraction of N if < 1")
    ap.add_argument("--decode-tokens", type=int, default=d.decode_tokens)
    ap.add_argument("--threads", type=_threads, default=None,
                    help="thread counts, one run each, comma list of integers or 'all' (the usable cores, "
                         f"the default of a session); default {','.join(map(str, d.threads))} (repeats "
                         "dropped; --quick: all)")
    ap.add_argument("--device", choices=DEVICES, default=d.device,
                    help="cpu (default) or gpu: every layer offloaded (n_gpu_layers=99); an error without a GPU")
    ap.add_argument("--no-verify", action="store_true", help="compact without the verification probes")
    ap.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", type=_option,
                    help="another Session.compact option, e.g. span_score=cache (VALUE read as JSON, else text)")
    ap.add_argument("--no-progress", action="store_true")
    return ap


def bench_main(argv: list[str] | None = None) -> int:
    """Run the cost bench and write bench.json, bench.md and scaling.png to --out."""
    from .cost import BenchSpec, run_bench

    d = BenchSpec()
    args = bench_parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pyllamaam.native").setLevel(logging.ERROR)
    spec = BenchSpec(models=args.models, n_tokens=args.n_tokens, ratio=args.ratio, memory=args.memory,
                     method=args.method,
                     queries=args.queries, decode_tokens=args.decode_tokens, threads=args.threads or d.threads,
                     device=args.device,
                     repeat_max_tokens=args.repeat_max_tokens, verify=not args.no_verify, options=dict(args.opt))
    if args.quick:
        spec = BenchSpec(**{**spec.__dict__, **QUICK_BENCH, "threads": args.threads or ["all"]})
    try:
        result = run_bench(spec, args.out, progress=not args.no_progress)
    except PyllamaamError as err:
        print(f"pyllamaam bench: error: {err}", file=sys.stderr)
        return 2
    print((args.out / "bench.md").read_text())
    print(json.dumps({"out": str(args.out / "bench.json"), "lengths": len(result["rows"])}))
    return 0
