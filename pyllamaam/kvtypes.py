"""The KV cache types llama.cpp accepts (``-ctk/-ctv``): sizes, and float32 <-> bytes.

One table for all of pyllamaam: ggml type id, name, and the block (values per block, bytes per
block) that fixes a row's size, as in ggml.c's ``type_traits``. The quantized types store blocks
of 32 values with an f16 scale (and an f16 minimum for q4_1/q5_1); iq4_nl maps 4-bit indices
through a fixed non-linear table.

:func:`decode` and :func:`encode` convert a whole buffer of one type. The quantizers are
ggml's reference ones (``quantize_row_*_ref`` in ggml-quants.c), which is what the CPU backend
uses to write the cache: the ``gguf`` package's for q8_0, q5_1, q5_0, q4_1, q4_0 (they give back
the same bytes for values they decoded), our own for iq4_nl (``gguf`` has no iq4_nl quantizer).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GGMLType:
    id: int
    name: str
    block: int  # values per block
    block_bytes: int

    @property
    def quantized(self) -> bool:
        return self.block > 1

    def row_bytes(self, n_values: int) -> int:
        """Bytes of a row of ``n_values`` (ggml_row_size); ``n_values`` must fill whole blocks."""
        if n_values % self.block:
            raise ValueError(f"{self.name}: a row of {n_values} values is not a whole number of blocks")
        return n_values // self.block * self.block_bytes


#: Every KV cache type llama.cpp accepts (common/arg.cpp ``kv_cache_types``), by ggml type id.
TYPES: dict[int, GGMLType] = {
    t.id: t
    for t in (
        GGMLType(0, "f32", 1, 4),
        GGMLType(1, "f16", 1, 2),
        GGMLType(30, "bf16", 1, 2),
        GGMLType(8, "q8_0", 32, 34),
        GGMLType(7, "q5_1", 32, 24),
        GGMLType(6, "q5_0", 32, 22),
        GGMLType(3, "q4_1", 32, 20),
        GGMLType(2, "q4_0", 32, 18),
        GGMLType(20, "iq4_nl", 32, 18),
    )
}
#: name -> ggml type id, in llama.cpp's order
BY_NAME: dict[str, int] = {t.name: i for i, t in TYPES.items()}
F32, F16, BF16, IQ4_NL = 0, 1, 30, 20


def get(ggml_type: int) -> GGMLType:
    try:
        return TYPES[ggml_type]
    except KeyError:
        raise ValueError(f"ggml type {ggml_type} is not a KV cache type") from None


def decode(raw: bytes | memoryview | np.ndarray, ggml_type: int) -> np.ndarray:
    """The values of a buffer of ``ggml_type`` as flat float32."""
    if ggml_type == F32:
        return np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if ggml_type == F16:
        return np.frombuffer(raw, dtype="<f2").astype(np.float32)
    if ggml_type == BF16:
        return (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    if ggml_type == IQ4_NL:
        return _iq4_nl_decode(np.frombuffer(raw, dtype=np.uint8))
    from gguf import GGMLQuantizationType, quants

    q = GGMLQuantizationType(get(ggml_type).id)
    return quants.dequantize(np.frombuffer(raw, dtype=np.uint8), q).reshape(-1).astype(np.float32)


def encode(x: np.ndarray, ggml_type: int) -> bytes:
    """``x`` (any shape; the last axis a whole number of blocks) as bytes of ``ggml_type``."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    t = get(ggml_type)
    if x.size and x.shape[-1] % t.block:
        raise ValueError(f"{t.name}: rows of {x.shape[-1]} values are not a whole number of blocks")
    if ggml_type == F32:
        return x.astype("<f4").tobytes()
    if ggml_type == F16:
        return x.astype("<f2").tobytes()
    if ggml_type == BF16:
        u = x.view(np.uint32).astype(np.uint64)
        u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16  # round to nearest even, as ggml does
        return u.astype("<u2").tobytes()
    if ggml_type == IQ4_NL:
        return _iq4_nl_encode(x.reshape(-1, 32)).tobytes()
    from gguf import GGMLQuantizationType, quants

    return quants.quantize(x, GGMLQuantizationType(t.id)).tobytes()


# --- iq4_nl: blocks of an f16 scale d and 32 4-bit indices into KVALUES (low nibbles: values 0-15) ---
KVALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int8)
_KV32 = KVALUES.astype(np.float32)


def _iq4_nl_decode(raw: np.ndarray) -> np.ndarray:
    blocks = raw.reshape(-1, 18)
    d = blocks[:, :2].copy().view("<f2").astype(np.float32)  # [nb, 1]
    qs = blocks[:, 2:]
    idx = np.concatenate([qs & 0x0F, qs >> 4], axis=1)  # [nb, 32]
    return (d * _KV32[idx]).reshape(-1)


def _best_index(x: np.ndarray) -> np.ndarray:
    """ggml's best_index_int8 over KVALUES: the nearest value, the upper one on a tie."""
    mu = np.clip(np.searchsorted(_KV32, x, side="right"), 1, 15)
    lo, hi = _KV32[mu - 1], _KV32[mu]
    idx = np.where((x - lo) < (hi - x), mu - 1, mu)
    return np.where(x <= _KV32[0], 0, np.where(x >= _KV32[15], 15, idx)).astype(np.uint8)


def _iq4_nl_encode(x: np.ndarray) -> np.ndarray:
    """Blocks [nb, 32] float32 -> [nb, 18] bytes: ``quantize_row_iq4_nl_ref`` (ntry = -1, no
    importance weights), except that a block already on the grid (d * KVALUES, d an f16) keeps
    exactly that d and those indices, so writing back what was read gives the same bytes."""
    nb = x.shape[0]
    amax_at = np.argmax(np.abs(x), axis=1)  # the first largest, as ggml's strict ">"
    xmax = x[np.arange(nb), amax_at]
    zero = np.abs(xmax) < np.float32(1e-15)  # GROUP_MAX_EPS
    with np.errstate(divide="ignore", invalid="ignore"):
        d0 = np.where(zero, np.float32(1), xmax / _KV32[0])
        L = _best_index((np.float32(1) / d0)[:, None] * x)
        q = _KV32[L]
        wq = (x * x) * q  # weight x^2 times q, in ggml's order
        # ggml sums in float32, one element after the other: cumsum does the same
        sumqx = np.cumsum(wq * x, axis=1, dtype=np.float32)[:, -1]
        sumq2 = np.cumsum(wq * q, axis=1, dtype=np.float32)[:, -1]
        d = np.where(sumq2 > 0, sumqx / sumq2, np.float32(0)).astype(np.float32)
    d = np.where(zero, np.float32(0), d)
    L = np.where(zero[:, None], 0, L).astype(np.uint8)
    dh = d.astype(np.float16)
    # a block on the grid has at most 16 distinct values: only those are tried
    srt = np.sort(x, axis=1)
    few = np.flatnonzero(~zero & ((srt[:, 1:] != srt[:, :-1]).sum(axis=1) < 16))
    if few.size:
        on_grid, grid_d, grid_L = _on_grid(x[few], xmax[few])
        dh[few[on_grid]], L[few[on_grid]] = grid_d[on_grid], grid_L[on_grid]
    out = np.empty((nb, 18), dtype=np.uint8)
    out[:, :2] = dh.astype("<f2").reshape(nb, 1).view(np.uint8)
    out[:, 2:] = L[:, :16] | (L[:, 16:] << 4)
    return out


def _on_grid(x: np.ndarray, xmax: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Blocks that are exactly d * KVALUES[L] for an f16 d: (mask [nb], d [nb] f16, L [nb, 32])."""
    nb = x.shape[0]
    found = np.zeros(nb, dtype=bool)
    best_d = np.zeros(nb, dtype=np.float16)
    best_L = np.zeros(x.shape, dtype=np.uint8)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for v in _KV32:  # the largest value sits on one of the 16 levels
            dh = (xmax / v).astype(np.float16)
            d = dh.astype(np.float32)[:, None]
            L = _best_index(x / d)
            ok = ~found & (d[:, 0] != 0) & np.isfinite(d[:, 0]) & np.all(d * _KV32[L] == x, axis=1)
            found |= ok
            best_d = np.where(ok, dh, best_d)
            best_L = np.where(ok[:, None], L, best_L)
    return found, best_d, best_L


# --- choosing the cache types of a session ---
def needs_flash(kv_type_v: str) -> bool:
    """True when a V cache of this type needs flash attention (a quantized V: llama.cpp reads V
    transposed without it, which a block format cannot be); False for an unknown name."""
    return kv_type_v in BY_NAME and TYPES[BY_NAME[kv_type_v]].quantized


def resolve(kv_type: str | None, kv_type_k: str | None, kv_type_v: str | None, flash_attn: bool) -> tuple[str, str]:
    """The (K, V) cache type names of a session, checked as llama.cpp checks them.

    ``kv_type`` sets both; ``kv_type_k`` / ``kv_type_v`` one each (default f16). Raises
    ConfigError for an unknown name, a ``kv_type`` that contradicts ``kv_type_k``/``kv_type_v``,
    and a quantized V without flash attention (llama_init_from_model refuses it: V is read
    transposed without flash attention, which a block format cannot be).
    """
    from .errors import ConfigError

    for arg, name in (("kv_type", kv_type), ("kv_type_k", kv_type_k), ("kv_type_v", kv_type_v)):
        if name is not None and name not in BY_NAME:
            raise ConfigError(f"{arg}={name!r} is not a KV cache type; valid: {', '.join(BY_NAME)}")
    if kv_type is not None:
        for arg, name in (("kv_type_k", kv_type_k), ("kv_type_v", kv_type_v)):
            if name is not None and name != kv_type:
                raise ConfigError(f"kv_type={kv_type!r} sets both K and V, but {arg}={name!r}")
    k = kv_type_k or kv_type or "f16"
    v = kv_type_v or kv_type or "f16"
    if needs_flash(v) and not flash_attn:
        raise ConfigError(f"a quantized V cache ({v}) needs flash attention (flash_attn=True), as in llama.cpp")
    return k, v
