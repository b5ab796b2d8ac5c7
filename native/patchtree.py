#!/usr/bin/env python3
"""Edit patches/ as commits of a git checkout of the pinned llama.cpp tree.

    python native/patchtree.py init /tmp/lc     # pinned tree + one commit per patch in patches/
    ... edit, `git commit` (one concern per commit; the subject names the patch) ...
    python native/patchtree.py export /tmp/lc   # rewrite patches/ from the commits after "upstream"

The export is deterministic (plain `git diff` between consecutive commits, no dates or hashes),
so regenerating unchanged commits gives byte-identical patches.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build  # noqa: E402

GIT_ID = ["-c", "user.name=pyllamaam", "-c", "user.email=pyllamaam@localhost"]


def git(tree: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *GIT_ID, *args], cwd=tree, check=True, capture_output=True, text=True
    ).stdout


def init(tree: Path) -> None:
    if tree.exists():
        raise SystemExit(f"{tree} exists")
    sdist = build.fetch_sdist()
    prefix = f"llama_cpp_python-{build.VERSION}/vendor/llama.cpp/"
    with tarfile.open(sdist) as tf:
        members = [m for m in tf.getmembers() if m.name.startswith(prefix)]
        for m in members:
            m.name = m.name[len(prefix) :]
        tf.extractall(tree, members=[m for m in members if m.name and m.name != ".git"])
    git(tree, "init", "-q")
    git(tree, "add", "-A")
    git(tree, "commit", "-qm", "upstream")
    git(tree, "tag", "upstream")
    for p in build.patch_files():
        subprocess.run(["git", "apply", str(p)], cwd=tree, check=True)
        git(tree, "add", "-A")
        # the patch's first line, so that export reproduces it byte for byte
        subject = p.read_text().split("\n", 1)[0].strip() or re.sub(r"^\d{4}-", "", p.stem)
        git(tree, "commit", "-qm", subject)
    print(f"{tree}: upstream + {len(build.patch_files())} patches")


def export(tree: Path) -> None:
    commits = git(tree, "rev-list", "--reverse", "upstream..HEAD").split()
    for old in build.patch_files():
        old.unlink()
    prev = "upstream"
    for i, c in enumerate(commits, 1):
        subject = git(tree, "log", "-1", "--format=%s", c).strip()
        slug = re.sub(r"[^a-z0-9]+", "-", subject.lower()).strip("-")
        diff = git(tree, "diff", "--no-color", "--no-ext-diff", "--full-index", prev, c)
        out = build.PATCHES / f"{i:04d}-{slug}.patch"
        out.write_text(f"{subject}\n\n{diff}")
        print(out.relative_to(build.ROOT))
        prev = c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=["init", "export"])
    ap.add_argument("tree", type=Path)
    a = ap.parse_args()
    (init if a.action == "init" else export)(a.tree.resolve())


if __name__ == "__main__":
    main()
