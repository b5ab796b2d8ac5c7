"""``pyllamaam`` command line: demo, doctor, compact, ask, serve, bench."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

from .errors import ConfigError, PyllamaamError


def cmd_demo(args: argparse.Namespace) -> int:
    """A planted fact asked from the full cache, after 4x and question-aware 10x compaction."""
    from .demo import run

    return run(args.model, n_gpu_layers=args.n_gpu_layers, **_session_opts(args))


def cmd_doctor(args: argparse.Namespace) -> int:
    """Report the library build, the patch API, the devices, where the bias path runs and the models."""
    from . import _native, catalog, devices

    info: dict[str, Any] = {}
    try:
        lib = _native.lib()
        info["library"] = str(lib.path)
        info["kvc_api_version"] = int(lib.ext.llama_kvc_api_version())
        info["gpu_offload"] = bool(lib.C.llama_supports_gpu_offload())
        info["system"] = _native.system_info().strip()
        from pathlib import Path

        marker = Path(sys.prefix) / "pyllamaam-libllama.key"
        info["build_key"] = marker.read_text().strip() if marker.exists() else None
        info["devices"] = _native.devices()
        if devices.gpus():  # a tiny model with every layer offloaded, in a fresh interpreter
            info["bias_path"] = devices.bias_offload_isolated(n_gpu_layers=99)
        else:
            info["bias_path"] = {"offloaded": False, "reason": "no GPU device: attention and its bias run on the CPU"}
        from .compact import arrays

        cupy, why = arrays.cupy_status()  # where compact(arrays="auto") runs its attention passes offloaded
        info["arrays"] = f"GPU sessions: {why}" if cupy is not None else f"numpy only: {why}"
    except PyllamaamError as err:
        info["library_error"] = str(err)
    info["models"] = [
        {"name": m.name, "installed": m.installed, "path": str(m.path) if m.path else None}
        for m in catalog.list_models()
    ]
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            if k == "models":
                for m in v:
                    print(f"model      {m['name']:14s} {'ok' if m['installed'] else 'missing'}  {m['path'] or ''}")
            elif k == "devices":
                for d in v:
                    mem = f"{d['memory_free'] / 2**30:.1f}/{d['memory_total'] / 2**30:.1f} GiB free"
                    print(f"device     {d['name']:8s} {d['type']:5s} {mem:22s} {d['description']}")
            elif k == "bias_path":
                print(f"bias_path  {_bias_path_line(v)}")
            else:
                print(f"{k:10s} {v}")
    return 0 if "library_error" not in info else 1


def _bias_path_line(b: dict[str, Any]) -> str:
    if "reason" in b:
        return b["reason"]
    where = "offloaded to the GPU" if b["offloaded"] else "NOT offloaded"
    splits = ", ".join(f"{p} {b[p]['splits_with_bias']} (without bias {b[p]['splits_without']})"
                       for p in ("regular", "flash"))
    return (f"{where}: biased layers {b['biased_layers']}, on a GPU {b['gpu_layers']} with n_gpu_layers "
            f"{b['n_gpu_layers']} ({b['model']}); graph splits: {splits}")


class _ProgressBar:
    """A tqdm bar on stderr over a compaction's stages; fitting a layer is one step, as is
    every other stage."""

    def __init__(self, n_layers: int) -> None:
        from tqdm import tqdm

        from .progress import STAGES

        self.weight = {stage: n_layers if stage == "fit" else 1 for stage in STAGES}
        starts = [sum(self.weight[s] for s in STAGES[:i]) for i in range(len(STAGES))]
        self.start = dict(zip(STAGES, starts, strict=True))
        self.bar = tqdm(total=sum(self.weight.values()), desc="compact", unit="step", file=sys.stderr)

    def update(self, stage: str, done: int, total: int) -> None:
        if stage not in self.weight:
            return
        self.bar.set_description_str(f"compact: {stage}", refresh=False)
        self.bar.update(self.start[stage] + self.weight[stage] * done // max(1, total) - self.bar.n)

    def __enter__(self) -> _ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()


def cmd_compact(args: argparse.Namespace) -> int:
    """Prefill a text file, compact it (``--ratio 1``: keep the full cache), save the session."""
    from pathlib import Path

    from . import catalog, memory
    from .pipeline.plan import check_ratio

    # the size is checked before the model loads and the text is read: a typo costs no prefill
    if args.memory is not None:
        memory.check_target(args.memory)
    elif args.ratio != 1:
        check_ratio(args.ratio)
    try:
        text = Path(args.file).read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise ConfigError(f"cannot read {args.file}: {err.strerror or err}") from None
    model = _load_model(args)
    n_tok = len(model.tokenize(text, add_bos=True))
    n_ctx = args.n_ctx or max(512, n_tok + 256)
    rep = None
    with model.session(n_ctx=n_ctx, **_session_opts(args)) as s:
        if args.queries and "context" in args.queries:
            s.capture_context_queries()
        if args.memory is not None and memory.wants_surprisal(s, args.memory, task=bool(args.question)):
            s.record_surprisal()  # the pick ranks sentences by surprisal: record it while reading
        t0 = time.perf_counter()
        s.prefill(text)
        print(f"prefilled {s.n_cells} tokens in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        if args.ratio != 1 or args.memory is not None:
            with _ProgressBar(len(s.compact_layers())) as bar:
                task = catalog.qa_template(model.path).format(question=args.question) if args.question else None
                extra = {"pin": args.pin} if args.pin else {}
                size = {"memory": args.memory} if args.memory is not None else {"ratio": args.ratio}
                rep = s.compact(
                    **size, method=args.method, queries=args.queries, task=task, progress=bar.update, **extra,
                )
            print(rep.to_json() if args.json else rep)
            if args.show_kept and not args.json:
                print("kept verbatim in every layer and head:")
                for a_b, text in zip(rep.verbatim, s.kept_text(rep), strict=False):
                    print(f"  [{a_b[0]}-{a_b[1]}] {' '.join(text.split())}")
        out = s.save(args.output)
    print(f"saved {out}", file=sys.stderr)
    return 1 if rep is not None and rep.fell_back else 0


def _answer(session: Any, prompt: str, max_tokens: int) -> str:
    """Greedy continuation of ``prompt`` up to the end of its first line with text (a model may
    open its answer with a line break)."""
    session.prefill(prompt)
    n0, text = len(session.tokens), ""
    while not text.strip() and len(session.tokens) - n0 < max_tokens:
        before = len(session.tokens)
        text = session.generate(max_tokens=max_tokens - (before - n0), stop=["\n"])
        if len(session.tokens) == before:  # end of generation at once
            break
    return text.strip()


def cmd_ask(args: argparse.Namespace) -> int:
    """Answer questions from a saved (compacted) session; the file is never modified."""
    from . import catalog, statefile

    if args.model is None:  # the model the file was saved with (else the default, refused by name)
        args.model = statefile.model_file(args.session)
    model = _load_model(args)
    template = catalog.qa_template(model.path)
    types = {k: v for k, v in _session_opts(args).items() if k != "flash_attn"}  # flash: the file's
    for q in args.question:
        with model.load_session(args.session, **types) as s:
            t0 = time.perf_counter()
            answer = _answer(s, template.format(question=q), args.max_tokens)
            dt = time.perf_counter() - t0
        print(f"Q: {q}\nA: {answer}\n   ({dt:.1f} s)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "kernel":
        from . import cli_bench_kernel

        return cli_bench_kernel.main(["--quick"] if args.quick else [])
    from . import bench_native

    opts = _session_opts(args)
    bench_native.main(
        quick=args.quick, model=args.model, n_tokens=args.n_tokens, n_gpu_layers=args.n_gpu_layers,
        flash_attn=bool(opts.get("flash_attn")), kv_type_k=opts.get("kv_type_k", "f16"),
        kv_type_v=opts.get("kv_type_v", "f16"),
    )
    return 0


def cmd_budgets(args: argparse.Namespace) -> int:
    """Measure per-head sensitivity curves and save nonuniform head budgets."""
    from pathlib import Path

    import numpy as np

    from .budgets_compute import compute_budgets

    name = None if args.model in ("smollm2-135m", "default") else args.model
    out = Path(args.output or f"models/budgets/{Path(args.model).stem}.json")
    ratios = tuple(float(x) for x in args.ratios.split(",") if x)
    info = compute_budgets(
        name, out, target=args.target, cap=args.cap, mode=args.mode, n_tokens=args.n_tokens, ratios=ratios,
        cont=args.cont, n_gpu_layers=args.n_gpu_layers, flash_attn=bool(args.flash_attn),
    )
    b = np.asarray(info["budgets"])
    print(json.dumps({"output": str(out), "curves": str(out) + ".curves.json", "heads": int(b.size),
                      "budget_min": float(b.min()), "budget_max": float(b.max()), "seconds": info["seconds"]}))
    return 0


def _add_model_args(p: argparse.ArgumentParser, flash: bool = True) -> None:
    """The flags of every subcommand that loads a model: where it runs (GPU layers, flash
    attention), spelled as llama.cpp's. ``flash=False`` where a saved session decides it."""
    p.add_argument(
        "-ngl", "--n-gpu-layers", "--gpu-layers", type=int, default=0, metavar="N",
        help="layers to offload to the GPU (default 0; 99: all) on a GPU build",
    )
    if flash:
        p.add_argument(
            "-fa", "--flash-attn", action=argparse.BooleanOptionalAction, default=None,
            help="flash attention (default off; on with a quantized V cache)",
        )


def _add_runtime_args(p: argparse.ArgumentParser) -> None:
    """The flags of every subcommand that creates sessions: how the model runs (KV cache types)."""
    from .kvtypes import BY_NAME

    for side in ("k", "v"):
        p.add_argument(
            f"-ct{side}", f"--cache-type-{side}", choices=list(BY_NAME), default=None, metavar="TYPE",
            help=f"{side.upper()} cache type, as llama.cpp's: {', '.join(BY_NAME)} (default f16; ask: the saved "
                 "session's)" + ("; a quantized V turns on flash attention" if side == "v" else ""),
        )


def _load_model(args: argparse.Namespace) -> Any:
    """The model of ``--model``, loaded with the flags of :func:`_add_model_args`."""
    from . import load_model

    return load_model(args.model, n_gpu_layers=args.n_gpu_layers)


def _session_opts(args: argparse.Namespace) -> dict[str, Any]:
    """Model.session options from the flags of :func:`_add_model_args` and :func:`_add_runtime_args`."""
    from .kvtypes import needs_flash

    opts: dict[str, Any] = {}
    if getattr(args, "flash_attn", None) is not None:
        opts["flash_attn"] = args.flash_attn
    if args.cache_type_k:
        opts["kv_type_k"] = args.cache_type_k
    if args.cache_type_v:
        opts["kv_type_v"] = args.cache_type_v
        if needs_flash(args.cache_type_v) and "flash_attn" not in opts:  # as llama.cpp's -fa auto
            opts["flash_attn"] = True
    return opts


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pyllamaam", description="KV-cache compaction for llama.cpp")
    ap.add_argument("-v", "--verbose", action="count", default=0, help="-v: info logs, -vv: native debug logs")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("demo", help="run the main job on the default model")
    p.add_argument("--model", default=None, help="model name or GGUF path (default: SmolLM2-135M)")
    _add_model_args(p)
    _add_runtime_args(p)
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("doctor", help="library build, patch version, devices, models")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_doctor)

    p = sub.add_parser("compact", help="prefill a text file, compact it, save the session")
    p.add_argument("file")
    p.add_argument("-o", "--output", required=True, help="the saved session (.pllam)")
    p.add_argument("--ratio", type=float, default=10.0, help="span cells before / after; 1: save the full cache")
    p.add_argument("--memory", type=float, default=None, metavar="M",
                   help="instead of --ratio: leave the cache M times smaller in bytes than the f16 full cache, "
                        "with the cache types, cells and method that kept the most answers in the measured table")
    p.add_argument("--method", default="am")
    p.add_argument("--queries", default=None, help="query source (default: repeat; tail for the eviction baselines)")
    p.add_argument("--question", default=None,
                   help="compact for this question: the sentences it reads are kept whole (cheap; other "
                        "questions may fail)")
    p.add_argument("--model", default=None)
    p.add_argument("--n-ctx", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--pin", default=None, metavar="REGEX",
                   help="keep the sentences this regular expression matches verbatim, before any other")
    p.add_argument("--show-kept", action="store_true",
                   help="print the passages kept verbatim (a fact outside them was not kept as it was)")
    _add_model_args(p)
    _add_runtime_args(p)
    p.set_defaults(fn=cmd_compact)

    p = sub.add_parser("ask", help="ask questions of a saved session")
    p.add_argument("session")
    p.add_argument("question", nargs="+")
    p.add_argument("--model", default=None, help="default: the model the session was saved with")
    p.add_argument("--max-tokens", type=int, default=64)
    _add_model_args(p, flash=False)  # flash attention: the saved session's
    _add_runtime_args(p)
    p.set_defaults(fn=cmd_ask)

    sub.add_parser("serve", help="OpenAI-compatible HTTP server (`pyllamaam serve --help`)")
    sub.add_parser("eval", help="quality harness: tasks, KL, NLL over methods x ratios (`pyllamaam eval --help`)")

    p = sub.add_parser("budgets", help="per-head sensitivity and nonuniform head budgets")
    p.add_argument("what", choices=["compute"])
    p.add_argument("model", help="model name (smollm2-135m, gemma3-270m) or GGUF path")
    p.add_argument("-o", "--output", default=None, help="default models/budgets/<model>.json")
    p.add_argument("--n-tokens", type=int, default=1024, help="offline text tokens the model reads")
    p.add_argument("--mode", choices=["fill", "keys"], default="fill",
                   help="fill: a head's fitted keys against its exact recent window, at equal cells "
                        "(budget_cells='fill'); keys: keys and cells moved between heads")
    p.add_argument("--ratios", default="5,10,20", help="ratios of the sensitivity curves (--mode keys)")
    p.add_argument("--cont", type=int, default=64, help="continuation tokens scored per head and level")
    p.add_argument("--target", type=float, default=10.0, help="ratio the budgets are solved for")
    p.add_argument("--cap", type=float, default=2.0, help="largest head budget in multiples of the uniform one")
    _add_model_args(p)
    p.set_defaults(fn=cmd_budgets)

    p = sub.add_parser("bench", help="cost harness (`pyllamaam bench --help`); `bench native|kernel` (JSON)")
    p.add_argument("what", choices=["native", "kernel"])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--model", default=None)
    p.add_argument("--n-tokens", type=int, default=None)
    _add_model_args(p)
    _add_runtime_args(p)  # bench native: the cache types of every configuration
    p.set_defaults(fn=cmd_bench)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["serve"]:  # the server parses its own flags (and PYLLAMAAM_* variables)
        from server.__main__ import main as serve_main

        return serve_main(argv[1:])
    if argv[:1] == ["eval"]:  # quality harness: its own flags
        from .evaluation.cli import eval_main

        return eval_main(argv[1:])
    if argv[:1] == ["bench"] and argv[1:2] not in (["native"], ["kernel"]):  # cost harness
        from .evaluation.cli import bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if args.verbose < 2:
        logging.getLogger("pyllamaam.native").setLevel(max(level, logging.WARNING))
    try:
        return int(args.fn(args) or 0)
    except PyllamaamError as err:
        print(f"pyllamaam: error: {err}", file=sys.stderr)
        return 2
