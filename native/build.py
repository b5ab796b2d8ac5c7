#!/usr/bin/env python3
"""Fetch, patch, build and install the llama-cpp-python that pyllamaam runs on.

One patched libllama serves both llama-cpp-python (ctypes) and pyllamaam (cffi): we build the
pinned llama-cpp-python sdist with patches/ applied to its vendored llama.cpp, as a wheel, and
install that wheel. The wheel is cached under build/ by the hash of (sdist, patches, flags), so a
second run does not rebuild.

    python native/build.py            # build (or reuse) the wheel and install it into this Python
    python native/build.py --print-key
    PYLLAMAAM_CUDA=1 python native/build.py   # CUDA build

Extra CMake flags: PYLLAMAAM_CMAKE_ARGS="-DGGML_NATIVE=OFF ...".
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

VERSION = "0.3.36"
SDIST = f"llama_cpp_python-{VERSION}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
SDIST_URL = (
    "https://files.pythonhosted.org/packages/ec/e9/"
    "e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/" + SDIST
)

ROOT = Path(__file__).resolve().parent.parent
PATCHES = ROOT / "patches"
BUILD = Path(os.environ.get("PYLLAMAAM_BUILD_DIR", ROOT / "build"))

BASE_CMAKE_ARGS = [
    "-DLLAVA_BUILD=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TOOLS=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
]


def log(msg: str) -> None:
    print(f"[pyllamaam build] {msg}", file=sys.stderr, flush=True)


#: x86-64 CPU flags: a fixed x86-64-v3 target (AVX2, FMA, F16C) instead of -march=native. The
#: wheel cache is keyed by flags, not by the CPU that built it, so a native build could be reused
#: on another CPU; and -march=native turns on ggml's AMX kernels wherever the CPU lists AMX, which
#: crash (SIGSEGV in ggml_backend_amx_mul_mat) in VMs whose kernel does not enable AMX tile state.
X86_CMAKE_ARGS = [
    "-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON", "-DGGML_BMI2=ON",
]


def cmake_args() -> list[str]:
    args = list(BASE_CMAKE_ARGS)
    if platform.machine().lower() in ("x86_64", "amd64"):
        args += X86_CMAKE_ARGS
    if os.environ.get("PYLLAMAAM_CUDA", "0") not in ("", "0"):
        args.append("-DGGML_CUDA=ON")
    args += os.environ.get("PYLLAMAAM_CMAKE_ARGS", "").split()
    return args


def patch_files() -> list[Path]:
    return sorted(PATCHES.glob("[0-9][0-9][0-9][0-9]-*.patch"))


def build_key() -> str:
    h = hashlib.sha256()
    h.update(SDIST_SHA256.encode())
    for p in patch_files():
        h.update(p.name.encode())
        h.update(p.read_bytes())
    h.update(" ".join(cmake_args()).encode())
    return h.hexdigest()[:16]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_sdist() -> Path:
    dest = BUILD / "downloads" / SDIST
    if dest.exists() and sha256_file(dest) == SDIST_SHA256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".part")
    for attempt in range(1, 4):
        try:
            log(f"downloading {SDIST} (attempt {attempt})")
            with urllib.request.urlopen(SDIST_URL, timeout=120) as r, tmp.open("wb") as f:
                shutil.copyfileobj(r, f)
            break
        except OSError as err:
            log(f"download failed: {err}")
            if attempt == 3:
                raise SystemExit(f"could not download {SDIST_URL}: {err}") from err
            time.sleep(3 * attempt)
    got = sha256_file(tmp)
    if got != SDIST_SHA256:
        tmp.unlink()
        raise SystemExit(f"sha256 mismatch for {SDIST}: got {got}, pinned {SDIST_SHA256}")
    tmp.replace(dest)
    return dest


def prepare_source(sdist: Path, key: str) -> Path:
    """Extract the sdist into a fresh folder and apply patches/ in order."""
    src_root = BUILD / f"src-{key}"
    if src_root.exists():
        shutil.rmtree(src_root)
    src_root.mkdir(parents=True)
    with tarfile.open(sdist) as tf:
        if hasattr(tarfile, "data_filter"):
            tf.extractall(src_root, filter="data")
        else:  # Python < 3.10.12
            tf.extractall(src_root)
    src = src_root / f"llama_cpp_python-{VERSION}"
    vendor = src / "vendor" / "llama.cpp"
    for p in patch_files():
        log(f"applying {p.name}")
        res = subprocess.run(
            ["patch", "-p1", "--forward", "--batch", "--no-backup-if-mismatch", "-i", str(p)],
            cwd=vendor,
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            raise SystemExit(f"patch {p.name} does not apply:\n{res.stdout}{res.stderr}")
    return src


def build_wheel(key: str) -> Path:
    wheel_dir = BUILD / "wheels" / key
    wheels = sorted(wheel_dir.glob("llama_cpp_python-*.whl"))
    if wheels:
        log(f"reusing cached build {key}")
        return wheels[0]
    src = prepare_source(fetch_sdist(), key)
    env = dict(os.environ, CMAKE_ARGS=" ".join(cmake_args()))
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
    log(f"building libllama (key {key}, CMAKE_ARGS={env['CMAKE_ARGS']}); takes a few minutes")
    tmp_dir = BUILD / "wheels" / f"{key}.tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    t0 = time.time()
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_dir), str(src)],
        env=env,
        check=True,
    )
    tmp_dir.replace(wheel_dir)
    shutil.rmtree(src.parent, ignore_errors=True)
    log(f"built in {time.time() - t0:.0f} s")
    return sorted(wheel_dir.glob("llama_cpp_python-*.whl"))[0]


def installed_key() -> str | None:
    marker = Path(sys.prefix) / "pyllamaam-libllama.key"
    return marker.read_text().strip() if marker.exists() else None


def install(wheel: Path, key: str) -> None:
    if installed_key() == key:
        log(f"patched llama-cpp-python {key} already installed")
        return
    log(f"installing {wheel.name}")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", str(wheel)],
        check=True,
    )
    # llama-cpp-python's own dependencies (numpy, jinja2, ...), from the registry
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", str(wheel)],
        check=True,
    )
    (Path(sys.prefix) / "pyllamaam-libllama.key").write_text(key + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--print-key", action="store_true", help="print the build key and exit")
    ap.add_argument("--no-install", action="store_true", help="build the wheel only")
    args = ap.parse_args()
    key = build_key()
    if args.print_key:
        print(key)
        return
    wheel = build_wheel(key)
    if not args.no_install:
        install(wheel, key)
    print(wheel)


if __name__ == "__main__":
    main()
