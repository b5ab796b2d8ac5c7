"""Parse and build llama.cpp sequence-state blobs; KV as float32 arrays.

Layout of the first (compactable) section of ``llama_state_seq_get_data`` for one sequence, as
written by the patched ``llama_kv_cache::state_write`` (all little-endian)::

    u32 magic 0xAF143CD8, i32 seq_id      (llama_context's header)
    u32 n_stream
    per stream: u32 cell_count
      per cell (cell-index order): i32 pos, u32 n_seq_id, i32 seq_id * n_seq_id
      u32 v_trans | 0x100 if a bias section follows V
      u32 n_layer
      K, per layer: i32 type, u64 row_bytes, row_bytes * cell_count      (a row = all KV heads of a cell)
      V, v_trans == 0: as K
         v_trans == 1, per layer: i32 type, u32 elem_bytes, u32 n_embd_v_gqa, then n_embd_v_gqa rows
                                  of cell_count elements (V transposed)
      bias, per layer: u32 n_head_kv, cell_count * n_head_kv f32

iSWA caches append the sliding-window section and hybrid memories the recurrent section: those
bytes are kept verbatim in :attr:`KVState.tail`.

Axis order, fixed here for all of pyllamaam: per layer, ``keys[l]`` and ``values[l]`` are
float32 ``[n_cells, n_head_kv, head_dim]`` and ``bias[l]`` is float32 ``[n_cells, n_head_kv]``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from . import kvtypes
from .errors import StateError

BIAS_FLAG = 0x100
SEQ_MAGIC = 0xAF143CD8

# ggml type ids of the cache types (every one llama.cpp accepts is in :mod:`pyllamaam.kvtypes`)
GGML_F32, GGML_F16, GGML_Q8_0, GGML_BF16 = kvtypes.F32, kvtypes.F16, 8, kvtypes.BF16
TYPE_NAMES = {i: t.name for i, t in kvtypes.TYPES.items()}


@dataclass
class KVState:
    """The compactable KV cells of one sequence, as float32 arrays.

    ``keys``, ``values`` and ``bias`` are dicts keyed by the model layer id (for a plain cache,
    0..n_layer-1); for iSWA only the full-attention layers, for hybrid only the attention layers.
    """

    positions: np.ndarray  # int32 [n]
    keys: dict[int, np.ndarray]  # [n, n_head_kv, head_dim]
    values: dict[int, np.ndarray]  # [n, n_head_kv, head_dim_v]
    bias: dict[int, np.ndarray]  # [n, n_head_kv]
    k_types: dict[int, int] = field(default_factory=dict)
    v_types: dict[int, int] = field(default_factory=dict)
    v_trans: bool = True
    seq_id: int = 0
    blob_seq: int = 0
    tail: bytes = b""  # the other sections of the blob (SWA / recurrent), verbatim

    @property
    def layers(self) -> list[int]:
        return list(self.keys)

    @property
    def n_cells(self) -> int:
        return int(self.positions.shape[0])

    def holds_bias(self) -> bool:
        """Whether any cell of any layer has a non-zero bias (a fit's beta; -inf counts)."""
        return any(bool(np.any(b != 0)) for b in self.bias.values())

    def subset(self, idx: np.ndarray) -> KVState:
        """The cells ``idx`` (indices into this state), in that order."""
        idx = np.asarray(idx, dtype=np.int64)
        return KVState(
            positions=self.positions[idx].copy(),
            keys={il: k[idx].copy() for il, k in self.keys.items()},
            values={il: v[idx].copy() for il, v in self.values.items()},
            bias={il: b[idx].copy() for il, b in self.bias.items()},
            k_types=dict(self.k_types),
            v_types=dict(self.v_types),
            v_trans=self.v_trans,
            seq_id=self.seq_id,
            blob_seq=self.blob_seq,
            tail=self.tail,
        )


class _Reader:
    def __init__(self, buf: bytes) -> None:
        self.buf = memoryview(buf)
        self.off = 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.off + n > len(self.buf):
            raise StateError(f"state blob truncated: need {n} bytes at offset {self.off}")
        out = self.buf[self.off : self.off + n]
        self.off += n
        return out

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def i32(self) -> int:
        return struct.unpack("<i", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]


def _decode(raw: memoryview, ggml_type: int) -> np.ndarray:
    if ggml_type not in kvtypes.TYPES:
        raise StateError(f"the state holds ggml type {ggml_type}, which is not a KV cache type")
    return kvtypes.decode(raw, ggml_type)


def _encode(x: np.ndarray, ggml_type: int) -> bytes:
    if ggml_type not in kvtypes.TYPES:
        raise StateError(f"ggml type {ggml_type} is not a KV cache type")
    return kvtypes.encode(x, ggml_type)


def parse_seq_state(blob: bytes, layer_ids: list[int], n_head_kv: dict[int, int]) -> KVState:
    """Parse the first section of a sequence-state blob.

    Parameters
    ----------
    blob : bytes from ``llama_state_seq_get_data``.
    layer_ids : model layer ids of the section's layers, in order.
    n_head_kv : KV heads of each of those layers.
    """
    r = _Reader(blob)
    if r.u32() != SEQ_MAGIC:
        raise StateError("not a llama.cpp sequence state (bad magic)")
    blob_seq = r.i32()
    st, _ = _read_section(r, layer_ids, n_head_kv)
    st.blob_seq = blob_seq
    st.tail = bytes(r.buf[r.off :])
    return st


def parse_section(buf: bytes, layer_ids: list[int], n_head_kv: dict[int, int]) -> tuple[KVState, bool, bytes]:
    """A further cache section at the start of ``buf`` (an iSWA blob's :attr:`KVState.tail` starts
    with the sliding-window cache's): the state, whether it carries a bias section, and the bytes
    after it."""
    r = _Reader(buf)
    st, has_bias = _read_section(r, layer_ids, n_head_kv)
    return st, has_bias, bytes(r.buf[r.off :])


def _read_section(r: _Reader, layer_ids: list[int], n_head_kv: dict[int, int]) -> tuple[KVState, bool]:
    n_stream = r.u32()
    if n_stream != 1:
        raise StateError(f"state has {n_stream} streams; only one is supported")
    n = r.u32()
    positions = np.empty(n, dtype=np.int32)
    seq_id = 0
    for i in range(n):
        positions[i] = r.i32()
        n_seq = r.u32()
        if n_seq != 1:
            raise StateError(f"cell {i} belongs to {n_seq} sequences; expected 1")
        seq_id = r.i32()
    if n == 0:
        return KVState(positions, {}, {}, {}, seq_id=seq_id), False
    flags = r.u32()
    has_bias = bool(flags & BIAS_FLAG)
    v_trans = flags & ~BIAS_FLAG
    if v_trans not in (0, 1):
        raise StateError(f"unknown V layout flags 0x{flags:x}")
    n_layer = r.u32()
    if n_layer != len(layer_ids):
        raise StateError(f"state has {n_layer} layers, the model section has {len(layer_ids)}")

    st = KVState(positions, {}, {}, {}, v_trans=bool(v_trans), seq_id=seq_id)
    for il in layer_ids:
        t = r.i32()
        row = r.u64()
        data = _decode(r.take(row * n), t)
        st.keys[il] = data.reshape(n, n_head_kv[il], -1)
        st.k_types[il] = t
    for il in layer_ids:
        t = r.i32()
        if not v_trans:
            row = r.u64()
            st.values[il] = _decode(r.take(row * n), t).reshape(n, n_head_kv[il], -1)
        else:
            el = r.u32()
            n_embd = r.u32()
            vt = _decode(r.take(el * n * n_embd), t).reshape(n_embd, n)
            st.values[il] = np.ascontiguousarray(vt.T).reshape(n, n_head_kv[il], -1)
        st.v_types[il] = t
    for il in layer_ids:
        if has_bias:
            h = r.u32()
            if h != n_head_kv[il]:
                raise StateError(f"bias of layer {il} has {h} heads, expected {n_head_kv[il]}")
            st.bias[il] = np.frombuffer(r.take(4 * n * h), dtype="<f4").astype(np.float32).reshape(n, h)
        else:
            st.bias[il] = np.zeros((n, n_head_kv[il]), dtype=np.float32)
    return st, has_bias


def build_seq_state(st: KVState, with_bias: bool = True) -> bytes:
    """The blob for ``llama_state_seq_set_data``: ``st`` as the first section, then ``st.tail``.

    ``with_bias=False`` omits the bias section (for a context without bias storage); the
    biases must then all be zero.
    """
    return struct.pack("<Ii", SEQ_MAGIC, st.blob_seq) + section_bytes(st, with_bias) + st.tail


def section_bytes(st: KVState, with_bias: bool = True) -> bytes:
    """``st`` as one cache section (without the blob's header and without ``st.tail``)."""
    n = st.n_cells
    out = [struct.pack("<II", 1, n)]
    for p in st.positions.tolist():
        out.append(struct.pack("<iIi", int(p), 1, st.seq_id))
    if n > 0:
        flags = int(st.v_trans) | (BIAS_FLAG if with_bias else 0)
        out.append(struct.pack("<II", flags, len(st.keys)))
        for il, k in st.keys.items():
            if k.shape[0] != n:
                raise StateError(f"keys of layer {il} have {k.shape[0]} cells, positions {n}")
            raw = _encode(k.reshape(n, -1), st.k_types[il])
            out.append(struct.pack("<iQ", st.k_types[il], len(raw) // n))
            out.append(raw)
        for il, v in st.values.items():
            t = st.v_types[il]
            if not st.v_trans:
                raw = _encode(v.reshape(n, -1), t)
                out.append(struct.pack("<iQ", t, len(raw) // n))
            else:
                vt = v.reshape(n, -1).T
                raw = _encode(vt, t)
                out.append(struct.pack("<iII", t, len(raw) // (n * vt.shape[0]), vt.shape[0]))
            out.append(raw)
        for il, b in st.bias.items():
            b = np.asarray(b, dtype=np.float32)
            if not with_bias:
                if np.any(b != 0):
                    raise StateError(f"layer {il} has a non-zero bias but the context has no bias storage")
                continue
            if np.isnan(b).any() or np.isposinf(b).any():
                raise StateError(f"bias of layer {il} holds NaN or +inf")
            out.append(struct.pack("<I", b.shape[1]))
            out.append(b.astype("<f4").tobytes())
    return b"".join(out)
