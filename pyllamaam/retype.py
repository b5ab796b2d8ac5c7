"""Moving a KV state to other cache types.

A quantized K (or V) cache is stored after a blockwise Walsh–Hadamard rotation (llama-kv-cache.cpp:
``attn_rot_k`` / ``attn_rot_v``): K when its type is quantized and the head size is a multiple of
64, in blocks of the largest power of two (>= 64) dividing the head size; V likewise in blocks of
64. Queries are rotated the same way, so attention is unchanged. A state read from a cache of one
type and written to a cache of another must therefore be rotated into the basis the destination
stores, or its keys meet queries in a different basis. H is symmetric and orthonormal (its own
inverse), so one multiplication moves either way.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from . import _native, kvtypes
from .kv import KVState, parse_section, section_bytes

#: Session.retype's check: the mean KL (nats) between the next-token predictions before and after
#: the move, on the session's last tokens read again. Measured on SmolLM2 (a 45-token text, flash
#: attention on and off): 0.005-0.07 for q8_0 to q4_0 and iq4_nl/q5_1, as prefilling in that
#: type does; keys left in the wrong basis gave 10-15. The bound tells a broken move from
#: quantization's own error.
MAX_KL = 1.0


def rotation_block(type_name: str, head_dim: int, which: str) -> int:
    """The Hadamard block llama.cpp rotates a ``which`` ("k"/"v") cache of ``type_name`` by, 0 if none."""
    disabled = os.environ.get("LLAMA_ATTN_ROT_DISABLE", "0").strip()
    if disabled and disabled.lstrip("-").isdigit() and int(disabled) != 0:
        return 0
    if not kvtypes.TYPES[kvtypes.BY_NAME[type_name]].quantized or head_dim <= 0 or head_dim % 64:
        return 0
    if which == "v":
        return 64
    n = 64
    while head_dim % (2 * n) == 0:
        n *= 2
    return n


def hadamard(n: int) -> np.ndarray:
    """[n, n] Sylvester Hadamard matrix scaled to be orthonormal (ggml_gen_hadamard)."""
    H = np.ones((1, 1), dtype=np.float64)
    while H.shape[0] < n:
        H = np.block([[H, H], [H, -H]])
    return (H / np.sqrt(n)).astype(np.float32)


def _rotate(x: np.ndarray, n: int) -> np.ndarray:
    # x: [cells, heads, d], each consecutive block of n values of a head rotated by H
    c, h, d = x.shape
    return (x.reshape(c, h, d // n, n) @ hadamard(n)).reshape(c, h, d)


def convert(state: KVState, src: tuple[str, str], dst: tuple[str, str]) -> KVState:
    """``state`` (read from a cache of types ``src`` = (K, V)) ready to write to a cache of types
    ``dst``: keys and values moved into the destination's basis, every layer tagged ``dst``."""
    keys, values = dict(state.keys), dict(state.values)
    for il in state.layers:
        for arrays, which, a, b in ((keys, "k", src[0], dst[0]), (values, "v", src[1], dst[1])):
            d = arrays[il].shape[-1]
            n_from, n_to = rotation_block(a, d, which), rotation_block(b, d, which)
            if n_from == n_to:
                continue
            x = arrays[il].astype(np.float32)
            if n_from:
                x = _rotate(x, n_from)  # back to the unrotated basis (H is its own inverse)
            if n_to:
                x = _rotate(x, n_to)
            arrays[il] = x
    k_id, v_id = kvtypes.BY_NAME[dst[0]], kvtypes.BY_NAME[dst[1]]
    return dataclasses.replace(
        state, keys=keys, values=values,
        k_types={il: k_id for il in state.layers}, v_types={il: v_id for il in state.layers},
    )


def swa_heads(layers: list[dict]) -> dict[int, int]:
    """``{layer: n_head_kv}`` of the sliding-window layers (``Session.layers``): an iSWA state's
    second cache section."""
    return {il: li["n_head_kv"] for il, li in enumerate(layers) if li["flags"] & _native.LAYER_SWA}


def convert_section(buf: bytes, n_head_kv: dict[int, int], src: tuple[str, str], dst: tuple[str, str],
                    v_trans: bool, with_bias: bool | None = None) -> bytes:
    """The cache section at the start of ``buf`` (an iSWA state's sliding-window cache, whose
    layers and KV heads ``n_head_kv`` gives) moved as :func:`convert` moves the first, with V in
    the destination's layout ``v_trans`` and a bias section where ``with_bias`` (None: as it has
    one; StateError where a non-zero bias would be dropped); the bytes after it are kept as they are."""
    st, has_bias, rest = parse_section(buf, list(n_head_kv), n_head_kv)
    if st.n_cells == 0:
        return buf
    moved = dataclasses.replace(convert(st, src, dst), v_trans=v_trans)
    return section_bytes(moved, has_bias if with_bias is None else with_bias) + rest
