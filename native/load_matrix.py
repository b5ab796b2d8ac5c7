#!/usr/bin/env python3
"""Load a model in every order of the steps pyllamaam takes before ``llama_model_load_from_file``.

Each variant runs in a fresh interpreter, so a crash (a native segfault, a failed load) is one
row of the report instead of the end of the run. What varies is exactly what pyllamaam does and
``llama_cpp.Llama`` does not: importing numpy before the library, opening the same library a second
time through cffi, installing a cffi log callback, and calling ``llama_backend_init`` first.

    python native/load_matrix.py MODEL.gguf [--n-gpu-layers 99] [--json]

The exit status is 0 when every variant loaded the model. A CUDA build that crashes in one
variant and not in another names the step that breaks it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time

# one step of the sequence, as the Python that performs it; {path} and {ngl} are filled in
STEPS = {
    "preload_stdcxx": "import ctypes; ctypes.CDLL('libstdc++.so.6', mode=ctypes.RTLD_GLOBAL)",
    "numpy": "import numpy",
    "llama_cpp": "from llama_cpp import llama_cpp as C",
    "cffi_dlopen": (
        "import cffi; ffi = cffi.FFI(); ffi.cdef('int32_t llama_kvc_api_version(void);"
        " typedef void (*cb)(int, const char *, void *); void llama_log_set(cb, void *);');"
        " ext = ffi.dlopen(C._lib._name)"
    ),
    "cffi_log": (
        "seen = []; log_cb = ffi.callback('void(int, const char *, void *)',"
        " lambda lvl, txt, ud: seen.append(ffi.string(txt))); ext.llama_log_set(log_cb, ffi.NULL)"
    ),
    "backend_init": "C.llama_backend_init()",
    "load": (
        "p = C.llama_model_default_params(); p.n_gpu_layers = {ngl};"
        " m = C.llama_model_load_from_file({path!r}.encode(), p); assert m, 'load failed';"
        " C.llama_model_free(m)"
    ),
}

# the whole front doors, for comparison
WHOLE = {
    "llama_cpp.Llama": "import llama_cpp; llama_cpp.Llama({path!r}, n_gpu_layers={ngl}, verbose=False)",
    "pyllamaam.load_model": "import pyllamaam; pyllamaam.load_model({path!r}, n_gpu_layers={ngl}).close()",
    # pyllamaam imported (nothing native yet), then llama-cpp-python's front door
    "import pyllamaam+llama_cpp.Llama": (
        "import pyllamaam, llama_cpp; llama_cpp.Llama({path!r}, n_gpu_layers={ngl}, verbose=False)"
    ),
    # pyllamaam's front door without its libstdc++ preload (pyllamaam._native.preload_libstdcxx)
    "pyllamaam.load_model[PRELOAD_STDCXX=0]": (
        "import os; os.environ['PYLLAMAAM_PRELOAD_STDCXX'] = '0'; import pyllamaam;"
        " pyllamaam.load_model({path!r}, n_gpu_layers={ngl}).close()"
    ),
}


def variants() -> dict[str, list[str]]:
    """Every on/off combination of the optional steps, in pyllamaam's order."""
    out: dict[str, list[str]] = {}
    for numpy_first, dlopen, log, init in itertools.product((False, True), repeat=4):
        if log and not dlopen:
            continue  # the cffi callback needs the cffi handle
        steps = (["numpy"] if numpy_first else []) + ["llama_cpp"]
        steps += (["cffi_dlopen"] if dlopen else []) + (["cffi_log"] if log else [])
        steps += (["backend_init"] if init else []) + ["load"]
        out["+".join(steps)] = steps
    every = ["numpy", "llama_cpp", "cffi_dlopen", "cffi_log", "backend_init", "load"]
    out["+".join(["preload_stdcxx", *every])] = ["preload_stdcxx", *every]
    return out


def run_one(code: str, timeout: float) -> dict:
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"rc": None, "ok": False, "seconds": round(timeout, 1), "error": "timeout"}
    row = {"rc": proc.returncode, "ok": proc.returncode == 0, "seconds": round(time.perf_counter() - t0, 2)}
    if proc.returncode != 0:
        row["error"] = (proc.stderr.strip().splitlines() or [f"signal {-proc.returncode}"])[-1][:300]
    return row


def run_matrix(path: str, n_gpu_layers: int = 0, timeout: float = 120.0) -> dict[str, dict]:
    """``{variant: {"ok", "rc", "seconds", ["error"]}}`` for every variant, each in its own process."""
    fill = {"path": str(path), "ngl": int(n_gpu_layers)}
    report = {}
    for name, steps in variants().items():
        report[name] = run_one("\n".join(STEPS[s].format(**fill) for s in steps), timeout)
    for name, code in WHOLE.items():
        report[name] = run_one(code.format(**fill), timeout)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a .gguf file")
    ap.add_argument("--n-gpu-layers", "-ngl", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args(argv)
    report = run_matrix(args.model, args.n_gpu_layers)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for name, row in report.items():
            status = "ok   " if row["ok"] else f"FAIL rc={row['rc']}"
            print(f"{status} {row['seconds']:6.2f}s  {name}  {row.get('error', '')}")
    return 0 if all(r["ok"] for r in report.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
