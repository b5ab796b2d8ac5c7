"""The command line and the one-library invariant."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.native


def test_one_patched_library_serves_both_bindings():
    from llama_cpp import llama_cpp as C

    from pyllamaam import _native

    assert _native.library_path() == Path(C._lib._name)
    assert _native.lib().ext.llama_kvc_api_version() == _native.API_VERSION


def test_doctor_reports_the_patched_build():
    from pyllamaam import _native

    out = subprocess.run(
        [sys.executable, "-m", "pyllamaam", "doctor", "--json"], capture_output=True, text=True, check=True
    )
    info = json.loads(out.stdout)
    assert info["kvc_api_version"] == _native.API_VERSION
    assert any(m["name"] == "smollm2-135m" and m["installed"] for m in info["models"])


def test_native_logs_go_to_python_logging(tiny_models, caplog):
    with caplog.at_level(logging.WARNING, logger="pyllamaam.native"):
        tiny_models["recurrent"].session(n_ctx=64).close()
    assert any("recurrent model" in r.getMessage() for r in caplog.records if r.name == "pyllamaam.native")


def test_bad_model_paths_give_clear_errors(tmp_path):
    import pyllamaam

    with pytest.raises(pyllamaam.ModelError, match="not found|does not exist|No such"):
        pyllamaam.load_model(str(tmp_path / "nope.gguf"))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all")
    with pytest.raises(pyllamaam.ModelError, match="GGUF"):
        pyllamaam.load_model(str(junk))


def test_compact_then_ask_from_the_saved_file(tiny_dir, tmp_path):
    # compact once, ask many times: the CLI path end to end on a tiny model (context queries)
    from pyllamaam import tiny

    model = str(tiny.tiny_model_path("llama", tiny_dir))
    doc = tmp_path / "doc.txt"
    doc.write_text("The lighthouse keeper wrote in his log every evening. " * 20)
    out = tmp_path / "doc.pllam"
    run = [sys.executable, "-m", "pyllamaam"]
    res = subprocess.run(
        [*run, "compact", str(doc), "--ratio", "4", "-o", str(out), "--model", model, "--queries", "context", "--json"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["cells_after"] < report["cells_before"] and not report["fell_back"]
    before = out.read_bytes()
    res = subprocess.run(
        [*run, "ask", str(out), "first?", "second?", "--model", model, "--max-tokens", "4"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("Q: ") == 2
    assert out.read_bytes() == before
