"""Where attention and its per-cell bias run: the build's devices, and whether the biased layers
of a model are offloaded to a GPU (``pyllamaam doctor``).

llama.cpp places the last ``n_gpu_layers`` layers, with their KV cache (and so the bias, stored
next to K/V), on a GPU. An op that the GPU backend does not support runs on the CPU instead, and
the graph then splits around it (CUDA's flash attention, for one, takes only some head sizes).
llama.cpp reports the scheduler's split count only in its log ("graph: nodes = ..., splits = ..."),
so the check reads it there: the bias path is offloaded when every biased layer is on a GPU and no
context, flash or regular, with the bias or without, has more splits than the regular one without.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import _native

_SPLITS = re.compile(r"graph(?: \([^)]*\))?: nodes = [^,]+, splits = (\d+)(?: / (\d+))?")


def gpus() -> list[dict[str, Any]]:
    """The GPU devices (dedicated or integrated) of :func:`pyllamaam._native.devices`."""
    return [d for d in _native.devices() if d["type"] in ("GPU", "IGPU")]


def has_cuda() -> bool:
    """True when the build sees a CUDA device."""
    return any(d["type"] == "GPU" and d["name"].startswith("CUDA") for d in _native.devices())


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def _native_info_lines() -> Iterator[list[str]]:
    """The native log lines (INFO and up) written inside the block, kept from other handlers."""
    handler = _Lines()
    logger = logging.getLogger("pyllamaam.native")
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def _splits(model_ptr: int, n_layer: int, flash_attn: bool, flags: int) -> tuple[int, list[int]]:
    """(graph splits of a new context, its layer flags)."""
    with _native_info_lines() as lines:
        ctx = _native.context_new(
            model_ptr, n_ctx=256, n_batch=64, n_threads=1, flash_attn=flash_attn, kv_type_k="f16",
            kv_type_v="f16", flags=flags,
        )
    try:
        layer_flags = [_native.layer_info(ctx, il)["flags"] for il in range(n_layer)]
    finally:
        _native.context_free(ctx)
    found = [max(int(g) for g in m.groups() if g) for line in lines if (m := _SPLITS.search(line))]
    return (found[-1] if found else -1), layer_flags


def bias_offload(n_gpu_layers: int = 99, model: str | Path | None = None) -> dict[str, Any]:
    """Whether the bias path runs on a GPU with ``n_gpu_layers`` offloaded.

    ``model``: a GGUF path; default a tiny random llama (GQA, head size 64 as SmolLM2's) written
    to a temporary folder. Returns ``offloaded`` (bool), ``n_gpu_layers``, ``biased_layers`` and
    ``gpu_layers`` (layer indices), and per path (``regular``, ``flash``) the graph splits with
    and without the bias (-1 where the log did not say).
    """
    from . import tiny
    from .engine import Model

    with tempfile.TemporaryDirectory(prefix="pyllamaam-doctor-") as tmp:
        path = Path(model) if model is not None else tiny.tiny_model_path("llama", tmp, head_dim=64)
        m = Model(path, n_gpu_layers=n_gpu_layers)
        try:
            out: dict[str, Any] = {"model": str(model or "tiny llama"), "n_gpu_layers": n_gpu_layers}
            on_gpu = _native.gpu_layers(m.n_layer, n_gpu_layers)
            flags: list[int] = []
            for name, flash in (("regular", False), ("flash", True)):
                plain, _ = _splits(m.ptr, m.n_layer, flash, 0)
                biased, flags = _splits(m.ptr, m.n_layer, flash, _native.FLAG_BIAS)
                out[name] = {"splits_with_bias": biased, "splits_without": plain}
            layers = [il for il, f in enumerate(flags) if f & _native.LAYER_BIASED]
            splits = [v for p in ("regular", "flash") for v in out[p].values()]
            out["biased_layers"] = layers
            out["gpu_layers"] = [il for il, g in enumerate(on_gpu) if g]
            out["offloaded"] = (
                bool(layers) and all(on_gpu[il] for il in layers)
                and min(splits) > 0 and max(splits) <= out["regular"]["splits_without"]
            )
        finally:
            m.close()
    return out


def bias_offload_isolated(n_gpu_layers: int = 99, timeout: float = 300.0) -> dict[str, Any]:
    """:func:`bias_offload` in a fresh interpreter, so that a native crash while loading or running
    the model (as seen with CUDA builds, ../shared/device/README.md) is reported, not fatal: then
    ``offloaded`` is False and ``reason`` gives the exit status and the last lines of stderr."""
    cmd = [sys.executable, "-m", "pyllamaam.devices", str(n_gpu_layers)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"offloaded": False, "n_gpu_layers": n_gpu_layers, "reason": f"the probe ran over {timeout:.0f} s"}
    if res.returncode == 0:
        return json.loads(res.stdout)
    tail = " | ".join(res.stderr.strip().splitlines()[-3:])
    what = " (SIGSEGV)" if res.returncode == -11 else ""
    return {
        "offloaded": False,
        "n_gpu_layers": n_gpu_layers,
        "reason": f"loading a tiny model with n_gpu_layers={n_gpu_layers} exited with {res.returncode}{what}: {tail}",
    }


if __name__ == "__main__":  # the fresh interpreter of bias_offload_isolated
    print(json.dumps(bias_offload(int(sys.argv[1]) if len(sys.argv) > 1 else 99)))
