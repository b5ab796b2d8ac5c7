"""The model loads whatever the order of the steps before ``llama_model_load_from_file``.

Regression guard for a crash seen on a CUDA build: ``pyllamaam.load_model`` segfaulted in the
tokenizer's std::regex while ``llama_cpp.Llama`` loaded the same file. native/load_matrix.py runs
each order in its own process; here every variant must load, on the CPU build in CI. On the CUDA
machine every order with numpy imported before libllama crashed and the others loaded
(docs/results/gpu); the tests at the end reproduce the cause on a CPU.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pyllamaam import tiny

_spec = importlib.util.spec_from_file_location(
    "load_matrix", Path(__file__).resolve().parent.parent / "native" / "load_matrix.py"
)
load_matrix = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(load_matrix)


def test_the_matrix_covers_what_pyllamaam_does_before_loading():
    names = set(load_matrix.variants())
    assert "llama_cpp+load" in names
    assert "numpy+llama_cpp+cffi_dlopen+cffi_log+backend_init+load" in names  # pyllamaam's order
    assert len(names) == 13


def test_every_load_order_loads_the_model(tiny_dir):
    path = tiny.tiny_model_path("llama", tiny_dir)
    report = load_matrix.run_matrix(str(path))
    failed = {k: v for k, v in report.items() if not v["ok"]}
    assert not failed, failed
    assert {"llama_cpp.Llama", "pyllamaam.load_model"} <= set(report)


# --- the CUDA load crash: two copies of libstdc++ in one process ---
_RX = """
#include <regex>
#include <string>
extern "C" int rx_match(const char * pattern, const char * text) {
    std::regex re(pattern, std::regex::collate);
    return std::regex_search(std::string(text), re) ? 1 : 0;
}
"""

_LOAD_RX = """
import ctypes, sys
import numpy  # numpy's C++ code loads the system libstdc++ first, as in pyllamaam
if sys.argv[2] == "preload":
    from pyllamaam import _native
    assert _native.preload_libstdcxx()
lib = ctypes.CDLL(sys.argv[1])
assert lib.rx_match(b"[[:alpha:]]+ w[a-z]rld", b"hello world") == 1
"""


def _bindings(lib: Path, mode: str, tmp_path: Path) -> dict[str, str]:
    """symbol -> the file that ``lib``'s reference to it bound to (``LD_DEBUG=bindings``)."""
    out = tmp_path / f"ld-{mode}"
    env = {**os.environ, "LD_DEBUG": "bindings", "LD_DEBUG_OUTPUT": str(out), "PYLLAMAAM_PRELOAD_STDCXX": "1"}
    subprocess.run([sys.executable, "-c", _LOAD_RX, str(lib), mode], env=env, check=True, timeout=120)
    pat = re.compile(r"binding file (\S+) \[\d+\] to (\S+) \[\d+\]: normal symbol `([^']+)'")
    found = {}
    for f in tmp_path.glob(f"ld-{mode}.*"):
        for m in pat.finditer(f.read_text(errors="replace")):
            if m.group(1) == str(lib):
                found[m.group(3)] = Path(m.group(2)).name
    return found


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to build a library with a static libstdc++")
def test_a_library_with_its_own_libstdcxx_binds_std_locale_to_one_copy(tmp_path):
    """The crash's mechanism, reproduced without a GPU: a library carrying a static libstdc++
    (as the CUDA build's libllama and libggml-cuda did) loaded after numpy had brought in the
    system libstdc++. Its std::locale code binds to its own copy while the facet ids, GNU unique
    symbols, bind to the system copy: two facet numberings in one locale, which crashed
    std::regex when the copies' versions differed. pyllamaam's preload makes both one copy."""
    src = tmp_path / "rx.cpp"
    src.write_text(_RX)
    lib = tmp_path / "librx_static.so"
    subprocess.run(["g++", "-O1", "-shared", "-fPIC", "-static-libstdc++", "-static-libgcc", str(src), "-o", str(lib)],
                   check=True, timeout=300)
    locale_ctor, collate_id = "_ZNSt6localeC1Ev", "_ZNSt7__cxx117collateIcE2idE"
    split = _bindings(lib, "plain", tmp_path)
    assert split[locale_ctor] == lib.name  # its own std::locale ...
    assert split[collate_id].startswith("libstdc++.so")  # ... with the system copy's facet id
    one = _bindings(lib, "preload", tmp_path)
    assert one[locale_ctor].startswith("libstdc++.so") and one[collate_id].startswith("libstdc++.so"), one


def test_pyllamaam_puts_libstdcxx_in_the_global_scope_before_libllama():
    code = (
        "import ctypes; from pyllamaam import _native; _native.lib();"
        " print(hasattr(ctypes.CDLL(None), '_ZNSt6localeC1Ev'))"
    )
    for flag, want in (("1", "True"), ("0", "False")):
        env = {**os.environ, "PYLLAMAAM_PRELOAD_STDCXX": flag}
        res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert res.stdout.strip().splitlines()[-1] == want, (flag, res.stdout, res.stderr[-500:])
