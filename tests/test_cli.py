"""The command line and the one-library invariant."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

import pyllamaam

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
    assert any(d["type"] == "CPU" for d in info["devices"])
    assert "offloaded" in info["bias_path"]
    from pyllamaam.compact import arrays

    cupy, why = arrays.cupy_status()
    assert info["arrays"].startswith("GPU sessions: CuPy" if cupy is not None else "numpy only:")
    assert why in info["arrays"]


LOADS_A_MODEL = ["demo", "compact f.txt -o f.pllam", "ask f.pllam q", "bench native", "budgets compute m"]


@pytest.mark.parametrize("cmd", LOADS_A_MODEL)
def test_every_subcommand_that_loads_a_model_takes_the_gpu_flags(cmd):
    from pyllamaam.cli import _session_opts, build_parser

    parser = build_parser()
    args = parser.parse_args([*cmd.split(), "-ngl", "99"])
    assert args.n_gpu_layers == 99
    assert parser.parse_args(cmd.split()).n_gpu_layers == 0
    if cmd.startswith("ask"):  # flash attention: the saved session's
        with pytest.raises(SystemExit):
            parser.parse_args([*cmd.split(), "-fa"])
        return
    assert parser.parse_args([*cmd.split(), "-fa"]).flash_attn is True
    assert parser.parse_args([*cmd.split(), "--no-flash-attn"]).flash_attn is False
    assert parser.parse_args(cmd.split()).flash_attn is None
    if cmd.startswith("bench"):  # every configuration in the cache types asked for
        args = parser.parse_args([*cmd.split(), "-ctk", "q8_0", "-ctv", "q4_0"])
        assert _session_opts(args) == {"kv_type_k": "q8_0", "kv_type_v": "q4_0", "flash_attn": True}
    if not cmd.startswith(("bench", "budgets")):
        assert _session_opts(parser.parse_args([*cmd.split(), "--flash-attn"]))["flash_attn"] is True
        assert "flash_attn" not in _session_opts(parser.parse_args(cmd.split()))
        assert _session_opts(parser.parse_args([*cmd.split(), "-ctv", "q8_0"]))["flash_attn"] is True


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


@pytest.mark.parametrize(
    "args, file, message",
    [
        (["--memory", "0"], "doc.txt", "memory must be a number >= 1"),
        (["--memory", "nan"], "doc.txt", "memory must be a number >= 1"),
        (["--ratio", "0.5"], "doc.txt", "ratio must be a number > 1"),
        (["--ratio", "4"], "missing.txt", "cannot read .*missing.txt: No such file"),
    ],
)
def test_compact_refuses_a_bad_size_or_file_before_loading_a_model(tmp_path, args, file, message):
    import re

    (tmp_path / "doc.txt").write_text("Some text to compact.")
    path = str(tmp_path / file)
    out = tmp_path / "doc.pllam"
    res = subprocess.run(
        [sys.executable, "-m", "pyllamaam", "compact", path, *args, "-o", str(out),
         "--model", str(tmp_path / "no.gguf")],
        capture_output=True,
        text=True,
    )
    # exit 2 with the reason, not a traceback; the model (a path that does not exist) was never loaded
    assert res.returncode == 2, res.stderr
    assert re.search(message, res.stderr) and "Traceback" not in res.stderr, res.stderr
    assert not out.exists()


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
    # without --model: the GGUF the session was saved with, not the default model
    res = subprocess.run([*run, "ask", str(out), "first?", "--max-tokens", "4"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("Q: ") == 1
    assert out.read_bytes() == before


def test_a_saved_session_names_its_model(tiny_dir, gemma3_270m, tmp_path):
    from pyllamaam import statefile, tiny

    with gemma3_270m.session(n_ctx=256) as s:  # a catalog model: its name, which loads anywhere
        s.prefill("The lighthouse keeper wrote in his log every evening.")
        assert statefile.model_file(s.save(tmp_path / "g.pllam")) == "gemma3-270m"
    src = tiny.tiny_model_path("llama", tiny_dir)
    moved = tmp_path / "moved.gguf"
    moved.write_bytes(src.read_bytes())
    with pyllamaam.load_model(str(moved)) as m, m.session(n_ctx=256) as s:  # any other GGUF: its path
        s.prefill("The lighthouse keeper wrote in his log every evening.")
        saved = s.save(tmp_path / "t.pllam")
    assert statefile.model_file(saved) == str(moved.resolve())
    moved.unlink()  # gone: nothing to load, `ask` falls back to the default (refused by fingerprint)
    assert statefile.model_file(saved) is None
    res = subprocess.run([sys.executable, "-m", "pyllamaam", "ask", str(saved), "q?"], capture_output=True, text=True)
    assert res.returncode != 0 and "was saved with another model" in res.stderr and "Traceback" not in res.stderr


CODE = "67767"
QUESTION = "What is the locker code for the night porter?"


def _document() -> str:
    """About 900 tokens of the offline haystack with one planted code, a third of the way in."""
    from pyllamaam.evaluation.tasks import haystack_text

    text = haystack_text()[:3600]
    cut = text.index("\n\n", 1200) + 2
    return text[:cut] + f"Note for the archivist: the locker code for the night porter is {CODE}.\n\n" + text[cut:]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    doc = tmp_path_factory.mktemp("planted") / "doc.txt"
    doc.write_text(_document())
    return doc


def _ask(session_file: Path, *extra: str) -> str:
    res = subprocess.run(
        [sys.executable, "-m", "pyllamaam", "ask", str(session_file), QUESTION, *extra], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    answer = res.stdout.split("\nA: ", 1)[1].split("\n", 1)[0]
    assert answer.strip(), res.stdout  # a chat turn after raw text used to give an empty answer
    return answer


def test_ask_answers_the_planted_code_from_the_full_cache(planted, tmp_path):
    # `ask` used to append a chat turn after the document: the model ended its turn at once
    out = tmp_path / "full.pllam"
    res = subprocess.run([sys.executable, "-m", "pyllamaam", "compact", str(planted), "--ratio", "1", "-o", str(out)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert CODE in _ask(out)


def test_ask_matches_the_model_on_a_session_saved_in_python(smollm2, planted, tmp_path):
    from pyllamaam import catalog
    from pyllamaam.cli import _answer

    prompt = catalog.qa_template(smollm2.path).format(question=QUESTION)
    with smollm2.session(n_ctx=2048) as s:
        s.prefill(planted.read_text())
        s.save(tmp_path / "saved.pllam")
        direct = _answer(s, prompt, 24)
    assert CODE in direct
    assert _ask(tmp_path / "saved.pllam", "--max-tokens", "24") == direct


@pytest.mark.slow
def test_compact_without_queries_shows_progress_then_ask(planted, tmp_path):
    # `compact` without --queries used to fail: TypeError, argument of type 'NoneType' is not iterable
    out = tmp_path / "x.pllam"
    res = subprocess.run(
        [sys.executable, "-m", "pyllamaam", "compact", str(planted), "--ratio", "2", "-o", str(out), "--json"],
        capture_output=True, text=True,
    )
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["cells_after"] < report["cells_before"] and not report["fell_back"]
    assert "compact: verify" in res.stderr and "100%" in res.stderr  # the tqdm bar
    # only a non-empty answer: at 2x the default compaction loses this code on SmolLM2 (it
    # answers "The locker code for the night porter is the following:")
    _ask(out)


def test_compact_for_a_question_then_ask_answers_it(planted, tmp_path):
    # question-aware compaction keeps the sentences the question reads: the code survives 10x
    out = tmp_path / "q.pllam"
    res = subprocess.run(
        [sys.executable, "-m", "pyllamaam", "compact", str(planted), "--ratio", "10", "--question", QUESTION,
         "-o", str(out), "--json"],
        capture_output=True, text=True,
    )
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["cells_after"] < report["cells_before"] / 5 and not report["fell_back"]
    assert 0 < report["verbatim_cells"] <= report["cells_after"]
    assert CODE in _ask(out)


def test_compact_shows_the_passages_kept_verbatim(planted, tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "pyllamaam", "compact", str(planted), "--ratio", "10", "--question", QUESTION,
         "-o", str(tmp_path / "k.pllam"), "--show-kept"],
        capture_output=True, text=True,
    )
    assert res.returncode == 0, res.stderr
    out = res.stdout.split("kept verbatim in every layer and head:\n", 1)[1]
    assert "cells verbatim in every head" in res.stdout
    assert any(CODE in line for line in out.splitlines())  # the sentence the question reads
