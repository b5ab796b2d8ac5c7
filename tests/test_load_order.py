"""The model loads whatever the order of the steps before ``llama_model_load_from_file``.

Regression guard for a crash seen on a CUDA build: ``pyllamaam.load_model`` segfaulted in the
tokenizer's std::regex while ``llama_cpp.Llama`` loaded the same file. native/load_matrix.py runs
each order in its own process; here every variant must load, on the CPU build in CI.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

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
