"""How long a short chat in one session takes while another session compacts, over real HTTP.

Starts ``python -m server`` (SmolLM2 by default) on a free port, prefills session A with
``--n-tokens`` tokens of the offline haystack text, then times a one-line chat in session B
alone (``--repeats`` times before and as many after), then again and again while A compacts (``POST
/v1/sessions/A/compact``), and prints JSON: B's median latency alone and during the compaction,
their ratio, the compaction's seconds and A's progress seen after each of B's chats that began
while A compacted (null: A had finished first).

Run: .venv/bin/python benchmarks/server_stall.py --n-tokens 1000 --ratio 4
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
CHAT = [{"role": "user", "content": "Say hello in one word."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(flags: list[str], log: Path, cwd: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "server", "--port", str(port), "--log-level", "warning", *flags]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy())
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start in 120 s")


def chat_b(http: httpx.Client, max_tokens: int) -> float:
    t0 = time.perf_counter()
    r = http.post("/v1/chat/completions", json={
        "messages": CHAT, "max_tokens": max_tokens, "temperature": 0, "session_id": "B",
    })
    r.raise_for_status()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--n-tokens", type=int, default=1000, help="tokens of session A's document (about)")
    ap.add_argument("--ratio", type=float, default=4.0)
    ap.add_argument("--repeats", type=int, default=5, help="B's chats timed alone, before and again after")
    ap.add_argument("--max-tokens", type=int, default=8, help="tokens of B's answer")
    ap.add_argument("--n-threads", type=int, default=None)
    ap.add_argument("--server-dir", type=Path, default=ROOT, help="where `python -m server` runs (another checkout's)")
    args = ap.parse_args(argv)

    from pyllamaam.evaluation.tasks import haystack_text

    doc = haystack_text()[: args.n_tokens * 4]  # about 4 characters a token in this text
    flags = ["--n-ctx", str(max(1024, 2 * args.n_tokens)), "--compact-threshold", "0"]
    flags += ["--model", args.model] if args.model else []
    flags += ["--n-threads", str(args.n_threads)] if args.n_threads else []
    with tempfile.TemporaryDirectory(prefix="pyllamaam-stall-") as tmp:
        proc, url = start_server(flags, Path(tmp) / "server.log", args.server_dir)
        try:
            with httpx.Client(base_url=url, timeout=600) as http:
                r = http.post("/v1/completions", json={"prompt": doc, "max_tokens": 1, "session_id": "A"})
                r.raise_for_status()
                n_prompt = r.json()["usage"]["prompt_tokens"]
                chat_b(http, args.max_tokens)  # warm-up
                alone = [chat_b(http, args.max_tokens) for _ in range(args.repeats)]

                done: dict = {}

                def compact() -> None:
                    t0 = time.perf_counter()
                    done["response"] = httpx.post(f"{url}/v1/sessions/A/compact", json={"ratio": args.ratio},
                                                  timeout=600)
                    done["seconds"] = time.perf_counter() - t0

                t = threading.Thread(target=compact)
                t.start()
                # "busy": A's lock is held by the compaction (also on servers that do not report progress)
                while not http.get("/v1/sessions/A").json()["busy"] and t.is_alive():
                    time.sleep(0.02)
                during, states = [], []
                while t.is_alive() and http.get("/v1/sessions/A").json()["busy"]:
                    during.append(chat_b(http, args.max_tokens))  # started while A compacted
                    states.append(http.get("/v1/sessions/A").json().get("compaction"))  # None: A ended first
                t.join()
                alone += [chat_b(http, args.max_tokens) for _ in range(args.repeats)]  # and after
                done["response"].raise_for_status()
                report = done["response"].json()["report"]
        finally:
            proc.terminate()
            proc.wait(30)
    out = {
        "model": args.model or "smollm2-135m",
        "session_a_tokens": n_prompt,
        "ratio": args.ratio,
        "b_alone_s": [round(x, 3) for x in alone],
        "b_during_s": [round(x, 3) for x in during],
        "b_alone_median_s": round(statistics.median(alone), 3),
        "b_during_median_s": round(statistics.median(during), 3) if during else None,
        "during_over_alone": round(statistics.median(during) / statistics.median(alone), 2) if during else None,
        "compaction_request_s": round(done["seconds"], 2),
        "compaction_report_s": round(sum(report.get("seconds", {}).values()), 2),
        "cells": [report["cells_before"], report["cells_after"]],
        "a_after_each_b": [f"{a['stage']} {a['done']}/{a['total']} at {a['seconds']:.1f} s" if a else None
                           for a in states],
        "server_dir": str(args.server_dir),
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
