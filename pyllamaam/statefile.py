"""Saved sessions (``.pllam``): versioned, checksummed, written atomically.

Layout (little-endian)::

    8s   magic b"PLLAMAM\\0"
    u32  version
    u32  header length, then the header as UTF-8 JSON (model fingerprint, K/V cache types, bookkeeping)
    u64  blob length, then the llama.cpp sequence state (bias section included)
    u32  n_vocab, then the next-token logits as f32
    32s  sha256 of everything above
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import StateError

MAGIC = b"PLLAMAM\0"
VERSION = 1


@dataclass
class Saved:
    header: dict[str, Any]
    blob: bytes
    logits: np.ndarray


def write(path: str | os.PathLike, header: dict[str, Any], blob: bytes, logits: np.ndarray) -> Path:
    path = Path(path)
    h = json.dumps(header, sort_keys=True).encode()
    lg = np.ascontiguousarray(logits, dtype="<f4")
    body = b"".join(
        [
            MAGIC,
            struct.pack("<II", VERSION, len(h)),
            h,
            struct.pack("<Q", len(blob)),
            blob,
            struct.pack("<I", lg.size),
            lg.tobytes(),
        ]
    )
    body += hashlib.sha256(body).digest()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def read(path: str | os.PathLike) -> Saved:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise StateError(f"cannot read saved session {path}: {err}") from err
    if len(data) < len(MAGIC) + 8 + 32 or data[: len(MAGIC)] != MAGIC:
        raise StateError(f"{path} is not a pyllamaam saved session (bad magic)")
    body, digest = data[:-32], data[-32:]
    if hashlib.sha256(body).digest() != digest:
        raise StateError(f"{path} is corrupt or truncated (checksum mismatch)")
    off = len(MAGIC)
    version, hlen = struct.unpack_from("<II", body, off)
    off += 8
    if version != VERSION:
        raise StateError(f"{path} has format version {version}; this pyllamaam reads {VERSION}")
    try:
        header = json.loads(body[off : off + hlen])
        off += hlen
        (blen,) = struct.unpack_from("<Q", body, off)
        off += 8
        blob = body[off : off + blen]
        off += blen
        (nv,) = struct.unpack_from("<I", body, off)
        off += 4
        logits = np.frombuffer(body, dtype="<f4", count=nv, offset=off).astype(np.float32)
        off += 4 * nv
    except (ValueError, struct.error) as err:
        raise StateError(f"{path} is malformed: {err}") from err
    if off != len(body) or len(blob) != blen:
        raise StateError(f"{path} is malformed: sizes do not add up")
    return Saved(header, blob, logits)


def check_model(saved: Saved, fingerprint: dict[str, Any], path: str | os.PathLike) -> None:
    got = saved.header.get("model")
    if got != fingerprint:
        raise StateError(
            f"{path} was saved with another model ({_describe(got)}); this one is {_describe(fingerprint)}"
        )


def model_file(path: str | os.PathLike) -> str | None:
    """The model a saved session names (a catalog name, or the GGUF path it was saved from), where
    that model can be loaded here; None for a file written before sessions named it, or a path
    that is gone. Raises StateError for a file that is not a readable saved session."""
    from .catalog import CATALOG

    name = read(path).header.get("model_file")
    if not isinstance(name, str):
        return None
    return name if name in CATALOG or Path(name).is_file() else None


def _describe(fp: Any) -> str:
    if not isinstance(fp, dict):
        return "unknown"
    return f"{fp.get('arch')}, {fp.get('n_layer')} layers, {fp.get('n_params')} params"


def kv_types(header: dict[str, Any]) -> tuple[str, str]:
    """The (K, V) cache types a session was saved with (files before kv_type_k/v hold kv_type)."""
    both = header.get("kv_type", "f16")
    return header.get("kv_type_k", both), header.get("kv_type_v", both)


def bias_storage(header: dict[str, Any]) -> bool:
    """Whether the saved context stored a bias per cell (files without the key did)."""
    value = header.get("bias_storage", True)
    if not isinstance(value, bool):
        raise StateError(f"the saved header's bias_storage is not true or false: {value!r}")
    return value
