"""Tiny random-weight GGUF models for fast native tests.

Each writer produces a seeded, byte-for-byte deterministic GGUF that the llama.cpp pinned by
llama-cpp-python 0.3.36 loads and runs. The weights are random, so the text is nonsense, but
logits are finite and depend on every input token. Four memory layouts are covered:

=========  ==========  ==============================================================
kind       arch        memory
=========  ==========  ==============================================================
llama      llama       plain KV cache, GQA (4 query heads over 2 KV heads)
gemma3     gemma3      iSWA: window 32, layers 0 and 2 sliding, 1 and 3 global
recurrent  mamba       recurrent state only (no per-token cells)
hybrid     lfm2        hybrid: short-conv (recurrent) layers 0, 2; attention 1, 3
=========  ==========  ==============================================================

All models share one SentencePiece-style ("llama") vocabulary: <unk>=0, <s>=1 (BOS),
</s>=2 (EOS), 256 byte-fallback tokens, the printable ASCII characters and a few common
English pieces, so any text tokenizes. Weights are float32.

Tensor shapes are written in numpy order, the reverse of llama.cpp's ``{ne0, ne1}``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "KINDS",
    "tiny_model_path",
    "write_tiny_gemma3",
    "write_tiny_hybrid",
    "write_tiny_llama",
    "write_tiny_recurrent",
]

# Bump when the bytes a writer produces change, so cached files are rewritten.
GENERATOR_VERSION = 1

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
N_CTX_TRAIN = 4096
RMS_EPS = 1e-6

# SentencePiece token types (llama.h: LLAMA_TOKEN_TYPE_*).
_NORMAL, _UNKNOWN, _CONTROL, _BYTE = 1, 2, 3, 6

_SPACE = "\u2581"  # SentencePiece's visible space
_PIECES = (
    "th he in er an re on at en nd ti es or te of ed is it al ar st to nt ng se ha as ou io le "
    "ve co me de hi ri ro ic ne ea ra ce li ch ll be ma si om ur the and ing ion tio ent for"
).split()


# --------------------------------------------------------------------------- vocabulary


def _vocab(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and types of a byte-fallback SPM vocabulary of exactly ``n_vocab``."""
    tokens = ["<unk>", "<s>", "</s>"]
    types = [_UNKNOWN, _CONTROL, _CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [_BYTE] * 256
    chars = [_SPACE] + [chr(c) for c in range(33, 127)]
    pieces = [p for p in _PIECES] + [_SPACE + p for p in _PIECES]
    normal = list(dict.fromkeys(chars + pieces))
    n_fixed = len(tokens)
    if n_vocab < n_fixed + len(chars):
        raise ValueError(f"n_vocab must be at least {n_fixed + len(chars)}, got {n_vocab}")
    normal = normal[: n_vocab - n_fixed]
    # Pad with unreachable filler pieces so n_vocab can be any size.
    normal += [f"<extra_{i}>" for i in range(n_vocab - n_fixed - len(normal))]
    tokens += normal
    types += [_NORMAL] * len(normal)
    # SPM merges the pair whose result has the highest score: longer pieces win.
    scores = [0.0] * n_fixed + [float(len(t)) - i * 1e-4 for i, t in enumerate(normal)]
    return tokens, scores, types


def _add_vocab(w, n_vocab: int) -> None:
    tokens, scores, types = _vocab(n_vocab)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(EOS_ID)
    w.add_unk_token_id(UNK_ID)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)


# --------------------------------------------------------------------------- weights


class _Weights:
    """Seeded random tensors, drawn in the order they are added (hence deterministic)."""

    def __init__(self, writer, seed: int) -> None:
        self.w = writer
        self.rng = np.random.default_rng(seed)

    def normal(self, name: str, shape: Sequence[int], scale: float) -> None:
        data = self.rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)
        self.w.add_tensor(name, data)

    def linear(self, name: str, n_out: int, n_in: int) -> None:
        # 1/sqrt(fan_in) keeps activations O(1), so attention is far from uniform.
        self.normal(name, (n_out, n_in), 1.0 / np.sqrt(n_in))

    def norm(self, name: str, n: int, center: float = 1.0) -> None:
        data = center + 0.1 * self.rng.standard_normal(n, dtype=np.float32)
        self.w.add_tensor(name, data.astype(np.float32))

    def const(self, name: str, data: np.ndarray) -> None:
        self.w.add_tensor(name, np.ascontiguousarray(data, dtype=np.float32))


def _write(path: str | os.PathLike, arch: str, fill: Callable) -> Path:
    """Open a writer for ``arch``, let ``fill(writer)`` add keys and tensors, write atomically."""
    import gguf  # imported here: only test and tooling code needs it

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        w = gguf.GGUFWriter(tmp, arch)
        w.add_name(f"pyllamaam-tiny-{arch}")
        w.add_file_type(gguf.LlamaFileType.ALL_F32)
        fill(w)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _add_common(w, n_layer: int, n_embd: int, n_ff: int, n_head: int, n_head_kv, head_dim: int):
    """Keys shared by the attention models; head_dim=0 leaves it to n_embd / n_head."""
    w.add_context_length(N_CTX_TRAIN)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    if head_dim:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(RMS_EPS)


def _add_ffn(t: _Weights, i: int, n_embd: int, n_ff: int) -> None:
    t.linear(f"blk.{i}.ffn_gate.weight", n_ff, n_embd)
    t.linear(f"blk.{i}.ffn_up.weight", n_ff, n_embd)
    t.linear(f"blk.{i}.ffn_down.weight", n_embd, n_ff)


def _add_attn(t: _Weights, i: int, n_embd: int, n_head: int, n_head_kv: int, head_dim: int):
    t.linear(f"blk.{i}.attn_q.weight", n_head * head_dim, n_embd)
    t.linear(f"blk.{i}.attn_k.weight", n_head_kv * head_dim, n_embd)
    t.linear(f"blk.{i}.attn_v.weight", n_head_kv * head_dim, n_embd)
    t.linear(f"blk.{i}.attn_output.weight", n_embd, n_head * head_dim)


# --------------------------------------------------------------------------- writers


def write_tiny_llama(
    path: str | os.PathLike,
    *,
    seed: int = 0,
    n_layer: int = 2,
    n_head: int = 4,
    n_head_kv: int = 2,
    head_dim: int = 16,
    n_embd: int = 64,
    n_ff: int = 128,
    n_vocab: int = 512,
) -> Path:
    """Write a llama-architecture model (plain KV cache, GQA when n_head != n_head_kv).

    Embeddings are tied to the output. Returns the path written.
    """

    def fill(w) -> None:
        _add_common(w, n_layer, n_embd, n_ff, n_head, n_head_kv, head_dim)
        w.add_vocab_size(n_vocab)
        _add_vocab(w, n_vocab)
        t = _Weights(w, seed)
        t.normal("token_embd.weight", (n_vocab, n_embd), 0.2)
        t.norm("output_norm.weight", n_embd)
        for i in range(n_layer):
            t.norm(f"blk.{i}.attn_norm.weight", n_embd)
            _add_attn(t, i, n_embd, n_head, n_head_kv, head_dim)
            t.norm(f"blk.{i}.ffn_norm.weight", n_embd)
            _add_ffn(t, i, n_embd, n_ff)

    return _write(path, "llama", fill)


def write_tiny_gemma3(
    path: str | os.PathLike,
    *,
    seed: int = 0,
    n_layer: int = 4,
    swa_layers: Sequence[int] = (0, 2),
    n_swa: int = 32,
    n_head: int = 4,
    n_head_kv: int = 2,
    head_dim: int = 16,
    n_embd: int = 64,
    n_ff: int = 128,
    n_vocab: int = 512,
) -> Path:
    """Write a gemma3-architecture model with an iSWA cache.

    Layers in ``swa_layers`` attend to a sliding window of ``n_swa`` tokens; the others are
    global. The pattern is stored as the per-layer bool array
    ``gemma3.attention.sliding_window_pattern``. RMS-norm weights are drawn around 1: the
    Gemma converter stores 1 + w and llama.cpp multiplies by the stored value.
    """
    swa = [i in set(swa_layers) for i in range(n_layer)]

    def fill(w) -> None:
        _add_common(w, n_layer, n_embd, n_ff, n_head, n_head_kv, head_dim)
        w.add_sliding_window(n_swa)
        w.add_sliding_window_pattern(swa)
        w.add_rope_freq_base_swa(10000.0)
        _add_vocab(w, n_vocab)
        t = _Weights(w, seed)
        # gemma3 scales embeddings by sqrt(n_embd) on input: keep them small.
        t.normal("token_embd.weight", (n_vocab, n_embd), 0.2)
        t.norm("output_norm.weight", n_embd)
        for i in range(n_layer):
            t.norm(f"blk.{i}.attn_norm.weight", n_embd)
            _add_attn(t, i, n_embd, n_head, n_head_kv, head_dim)
            t.norm(f"blk.{i}.attn_q_norm.weight", head_dim)
            t.norm(f"blk.{i}.attn_k_norm.weight", head_dim)
            t.norm(f"blk.{i}.post_attention_norm.weight", n_embd)
            t.norm(f"blk.{i}.ffn_norm.weight", n_embd)
            _add_ffn(t, i, n_embd, n_ff)
            t.norm(f"blk.{i}.post_ffw_norm.weight", n_embd)

    return _write(path, "gemma3", fill)


def write_tiny_recurrent(
    path: str | os.PathLike,
    *,
    seed: int = 0,
    n_layer: int = 2,
    n_embd: int = 64,
    d_state: int = 16,
    d_conv: int = 4,
    dt_rank: int = 4,
    n_vocab: int = 512,
) -> Path:
    """Write a pure recurrent model (mamba architecture; d_inner = 2 * n_embd)."""
    d_inner = 2 * n_embd  # the only expansion factor llama.cpp's mamba supports

    def fill(w) -> None:
        w.add_context_length(N_CTX_TRAIN)
        w.add_embedding_length(n_embd)
        w.add_block_count(n_layer)
        w.add_feed_forward_length(0)
        w.add_head_count(0)
        w.add_head_count_kv(0)
        w.add_ssm_conv_kernel(d_conv)
        w.add_ssm_inner_size(d_inner)
        w.add_ssm_state_size(d_state)
        w.add_ssm_time_step_rank(dt_rank)
        w.add_layer_norm_rms_eps(RMS_EPS)
        _add_vocab(w, n_vocab)
        t = _Weights(w, seed)
        t.normal("token_embd.weight", (n_vocab, n_embd), 0.2)
        t.norm("output_norm.weight", n_embd)
        for i in range(n_layer):
            t.norm(f"blk.{i}.attn_norm.weight", n_embd)
            t.linear(f"blk.{i}.ssm_in.weight", 2 * d_inner, n_embd)
            t.normal(f"blk.{i}.ssm_conv1d.weight", (d_inner, d_conv), 0.5)
            t.normal(f"blk.{i}.ssm_conv1d.bias", (d_inner,), 0.1)
            t.linear(f"blk.{i}.ssm_x.weight", dt_rank + 2 * d_state, d_inner)
            t.linear(f"blk.{i}.ssm_dt.weight", d_inner, dt_rank)
            # Mamba's init: dt log-uniform in [1e-3, 1e-1], stored as softplus^-1(dt), so the
            # state decays slowly and early tokens still matter many steps later.
            dt = np.exp(t.rng.uniform(np.log(1e-3), np.log(1e-1), d_inner)).astype(np.float32)
            t.const(f"blk.{i}.ssm_dt.bias", dt + np.log(-np.expm1(-dt)))
            # A = -exp(A_log) as the converter stores it: negative, so the state decays.
            a = -np.tile(np.arange(1, d_state + 1, dtype=np.float32), (d_inner, 1))
            t.const(f"blk.{i}.ssm_a", a)
            t.const(f"blk.{i}.ssm_d", np.ones(d_inner, dtype=np.float32))
            t.linear(f"blk.{i}.ssm_out.weight", n_embd, d_inner)

    return _write(path, "mamba", fill)


def write_tiny_hybrid(
    path: str | os.PathLike,
    *,
    seed: int = 0,
    n_layer: int = 4,
    attn_layers: Sequence[int] = (1, 3),
    n_head: int = 4,
    n_head_kv: int = 2,
    n_embd: int = 64,
    n_ff: int = 128,
    l_cache: int = 3,
    n_vocab: int = 512,
) -> Path:
    """Write a hybrid model (lfm2 architecture): short-conv layers plus attention layers.

    lfm2 marks a layer recurrent when its ``head_count_kv`` entry is 0, so ``attn_layers``
    get ``n_head_kv`` KV heads and the others 0. head_dim = n_embd / n_head.
    """
    attn = set(attn_layers)
    head_dim = n_embd // n_head
    kv_per_layer = [n_head_kv if i in attn else 0 for i in range(n_layer)]

    def fill(w) -> None:
        _add_common(w, n_layer, n_embd, n_ff, n_head, kv_per_layer, head_dim=0)
        w.add_shortconv_l_cache(l_cache)
        _add_vocab(w, n_vocab)
        t = _Weights(w, seed)
        t.normal("token_embd.weight", (n_vocab, n_embd), 0.2)
        t.norm("token_embd_norm.weight", n_embd)  # lfm2's output norm carries this name
        for i in range(n_layer):
            t.norm(f"blk.{i}.attn_norm.weight", n_embd)
            if i in attn:
                _add_attn(t, i, n_embd, n_head, n_head_kv, head_dim)
                t.norm(f"blk.{i}.attn_q_norm.weight", head_dim)
                t.norm(f"blk.{i}.attn_k_norm.weight", head_dim)
            else:
                t.normal(f"blk.{i}.shortconv.conv.weight", (n_embd, l_cache), 0.5)
                t.linear(f"blk.{i}.shortconv.in_proj.weight", 3 * n_embd, n_embd)
                t.linear(f"blk.{i}.shortconv.out_proj.weight", n_embd, n_embd)
            t.norm(f"blk.{i}.ffn_norm.weight", n_embd)
            _add_ffn(t, i, n_embd, n_ff)

    return _write(path, "lfm2", fill)


# --------------------------------------------------------------------------- cache

_WRITERS: dict[str, Callable[..., Path]] = {
    "llama": write_tiny_llama,
    "gemma3": write_tiny_gemma3,
    "recurrent": write_tiny_recurrent,
    "hybrid": write_tiny_hybrid,
}
KINDS = tuple(_WRITERS)


def tiny_model_path(kind: str, cache_dir: str | os.PathLike, **params) -> Path:
    """Return the path of a tiny model of ``kind``, writing it on first use.

    The file name carries a hash of (kind, params, GENERATOR_VERSION), so different
    parameters never share a file and an unchanged request never rewrites one.

    Parameters
    ----------
    kind : {"llama", "gemma3", "recurrent", "hybrid"}
    cache_dir : directory for the files (created if missing)
    **params : keyword arguments of the matching ``write_tiny_*`` function
    """
    if kind not in _WRITERS:
        raise ValueError(f"unknown tiny model kind {kind!r}; expected one of {KINDS}")
    key = json.dumps([kind, GENERATOR_VERSION, sorted(params.items())], default=list)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    path = Path(cache_dir) / f"tiny-{kind}-{digest}.gguf"
    if not path.exists():
        _WRITERS[kind](path, **params)
    return path
