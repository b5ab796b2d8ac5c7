"""The only module that touches the compiled library.

One patched libllama serves llama-cpp-python and pyllamaam: llama-cpp-python's ctypes binding
loads it, and a cffi binding of exactly the functions in ``llama-kvc.h`` (plus the log hook)
opens the same file, so both see one library instance. Everything else in pyllamaam calls the
small functions below; native logs go to the ``pyllamaam.native`` logger.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from cffi import FFI

from . import kvtypes
from .errors import ModelError, NativeError

log = logging.getLogger("pyllamaam.native")

CDEF = """
struct llama_model;
struct llama_context;
struct llama_context_params;
struct ggml_tensor;

typedef void (*ggml_log_callback)(int level, const char * text, void * user_data);
typedef bool (*ggml_backend_sched_eval_callback)(struct ggml_tensor * t, bool ask, void * user_data);

void llama_log_set(ggml_log_callback log_callback, void * user_data);

int32_t llama_kvc_api_version(void);
struct llama_context * llama_kvc_init_from_model(
    struct llama_model * model, const struct llama_context_params * params, uint32_t flags);
uint32_t llama_kvc_get_flags(const struct llama_context * ctx);
int32_t llama_kvc_layout(const struct llama_context * ctx);
int32_t llama_kvc_check(const struct llama_context * ctx, char * reason, size_t reason_size);
int32_t llama_kvc_layer_flags(const struct llama_context * ctx, int32_t il);
int32_t llama_kvc_layer_shape(const struct llama_context * ctx, int32_t il,
    int32_t * n_head, int32_t * n_head_kv, int32_t * head_dim_k, int32_t * head_dim_v);
float llama_kvc_layer_kq_scale(const struct llama_context * ctx, int32_t il);
int32_t llama_kvc_probe_layer(const struct ggml_tensor * t);
int64_t llama_kvc_probe_read(const struct ggml_tensor * t, float * dst, int64_t n_dst, int64_t * ne);
int32_t llama_kvc_set_capture(struct llama_context * ctx, bool capture);
bool llama_kvc_get_capture(const struct llama_context * ctx);
int64_t llama_kvc_capture_n_tokens(const struct llama_context * ctx);
int64_t llama_kvc_capture_read(const struct llama_context * ctx, int32_t il, float * dst, int64_t n_dst, int64_t * ne);
int32_t llama_kvc_capture_clear(struct llama_context * ctx);

const char * ggml_get_name(const struct ggml_tensor * tensor);
int64_t ggml_nelements(const struct ggml_tensor * tensor);
size_t ggml_nbytes(const struct ggml_tensor * tensor);
void ggml_backend_tensor_get(const struct ggml_tensor * tensor, void * data, size_t offset, size_t size);

typedef struct ggml_backend_device * ggml_backend_dev_t;
typedef struct ggml_backend_reg * ggml_backend_reg_t;
enum ggml_backend_dev_type {
    GGML_BACKEND_DEVICE_TYPE_CPU, GGML_BACKEND_DEVICE_TYPE_GPU, GGML_BACKEND_DEVICE_TYPE_IGPU,
    GGML_BACKEND_DEVICE_TYPE_ACCEL, GGML_BACKEND_DEVICE_TYPE_META,
};
size_t ggml_backend_dev_count(void);
ggml_backend_dev_t ggml_backend_dev_get(size_t index);
const char * ggml_backend_dev_name(ggml_backend_dev_t device);
const char * ggml_backend_dev_description(ggml_backend_dev_t device);
void ggml_backend_dev_memory(ggml_backend_dev_t device, size_t * free, size_t * total);
enum ggml_backend_dev_type ggml_backend_dev_type(ggml_backend_dev_t device);
ggml_backend_reg_t ggml_backend_dev_backend_reg(ggml_backend_dev_t device);
const char * ggml_backend_reg_name(ggml_backend_reg_t reg);
"""

API_VERSION = 2

FLAG_BIAS = 1
FLAG_QUERY_PROBE = 2

# llama_kvc_check's codes this package reads (include/llama-kvc.h has them all)
GATE_OK, GATE_NO_BIAS, GATE_GRAPH = 0, 3, 10

LAYOUTS = {0: "none", 1: "kv", 2: "iswa", 3: "hybrid", 4: "recurrent", 5: "other"}

LAYER_BIAS_CACHE, LAYER_SWA, LAYER_RECURRENT, LAYER_BIASED = 1, 2, 4, 8

# ggml_type ids of the KV cache types llama.cpp accepts (-ctk/-ctv), by name
KV_TYPES = dict(kvtypes.BY_NAME)

_LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}

ffi = FFI()
ffi.cdef(CDEF)


def preload_libstdcxx() -> bool:
    """Put the system's libstdc++ in the process's global symbol scope, before libllama loads.

    A build whose libraries carry a static copy of libstdc++ and export it (libllama.so and
    libggml-cuda.so without a DT_NEEDED on libstdc++.so.6, as on a CUDA machine's build) crashed
    while loading a model's vocabulary whenever numpy had been imported first: numpy's C++ code
    loads the system libstdc++, whose facet ids (GNU unique symbols, one per process) then served
    libllama while std::locale itself came from the static copy in libggml-cuda.so. The two
    copies number facets differently, so std::regex's ``use_facet<collate<char>>`` got a codecvt
    facet and called into it (``LD_DEBUG=bindings`` in docs/results/gpu shows the split). With
    the system copy global, every std:: symbol of a library loaded later binds to that one copy.
    A build that links libstdc++ dynamically binds to it anyway, so this changes nothing there.
    ``PYLLAMAAM_PRELOAD_STDCXX=0`` turns it off. False when no libstdc++.so.6 can be opened.
    """
    if os.environ.get("PYLLAMAAM_PRELOAD_STDCXX", "") == "0":
        return False
    try:
        ctypes.CDLL("libstdc++.so.6", mode=ctypes.RTLD_GLOBAL)
    except OSError as err:  # a system without it: nothing to put first
        log.debug("libstdc++.so.6 not preloaded: %s", err)
        return False
    return True


class _Lib:
    """The loaded library: ``C`` is llama-cpp-python's ctypes module, ``ext`` our cffi handle."""

    def __init__(self) -> None:
        preload_libstdcxx()
        from llama_cpp import llama_cpp as C

        self.C = C
        self.path = Path(C._lib._name)
        self.ext = ffi.dlopen(str(self.path))
        try:
            version = self.ext.llama_kvc_api_version()
        except AttributeError as err:
            raise NativeError(
                "llama_kvc_api_version",
                -1,
                f"{self.path} is not the patched libllama; run `make build`",
            ) from err
        if version != API_VERSION:
            raise NativeError("llama_kvc_api_version", version, f"expected {API_VERSION}")
        self.recent_errors: collections.deque[str] = collections.deque(maxlen=20)
        self._line: list[str] = []
        self._level = logging.INFO
        self._log_lock = threading.Lock()
        self._log_cb = ffi.callback("void(int, const char *, void *)", self._on_log)
        self.ext.llama_log_set(self._log_cb, ffi.NULL)
        C.llama_backend_init()

    def _on_log(self, level: int, text: Any, _ud: Any) -> None:
        with self._log_lock:  # contexts may log from several threads; a line is built in pieces
            if level != 5:  # GGML_LOG_LEVEL_CONT continues the previous message
                self._level = _LEVELS.get(level, logging.INFO)
            self._line.append(ffi.string(text).decode("utf-8", "replace"))
            msg = "".join(self._line)
            if not msg.endswith("\n"):
                return
            self._line.clear()
            msg = msg.rstrip()
            if self._level >= logging.WARNING:
                self.recent_errors.append(msg)
            level_ = self._level
        log.log(level_, "%s", msg)


_lib: _Lib | None = None
_lock = threading.Lock()


def lib() -> _Lib:
    global _lib
    with _lock:
        if _lib is None:
            _lib = _Lib()
        return _lib


def _last_errors() -> str:
    errs = list(lib().recent_errors)[-3:]
    return "; ".join(errs)


# --- model ---------------------------------------------------------------------------------


def model_load(path: Path, n_gpu_layers: int = 0, use_mmap: bool = True) -> int:
    L = lib()
    L.recent_errors.clear()
    params = L.C.llama_model_default_params()
    params.n_gpu_layers = n_gpu_layers
    params.use_mmap = use_mmap
    ptr = L.C.llama_model_load_from_file(str(path).encode(), params)
    if not ptr:
        raise ModelError(f"llama.cpp could not load {path}: {_last_errors() or 'unknown error'}")
    return int(ptr)


def model_free(model: int) -> None:
    lib().C.llama_model_free(ctypes.c_void_p(model))


def model_info(model: int) -> dict[str, Any]:
    C = lib().C
    m = ctypes.c_void_p(model)
    vocab = C.llama_model_get_vocab(m)

    def meta(key: str) -> str | None:
        buf = ctypes.create_string_buffer(512)
        n = C.llama_model_meta_val_str(m, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    desc = ctypes.create_string_buffer(256)
    C.llama_model_desc(m, desc, len(desc))
    return {
        "arch": meta("general.architecture") or "?",
        "name": meta("general.name"),
        "desc": desc.value.decode("utf-8", "replace"),
        "n_layer": C.llama_model_n_layer(m),
        "n_embd": C.llama_model_n_embd(m),
        "n_ctx_train": C.llama_model_n_ctx_train(m),
        "n_vocab": C.llama_vocab_n_tokens(vocab),
        "n_params": C.llama_model_n_params(m),
        "size": C.llama_model_size(m),
        "bos": C.llama_vocab_bos(vocab),
        "eos": C.llama_vocab_eos(vocab),
        "add_bos": bool(C.llama_vocab_get_add_bos(vocab)),
        "is_recurrent": bool(C.llama_model_is_recurrent(m)),
        "is_hybrid": bool(C.llama_model_is_hybrid(m)),
        "n_swa": C.llama_model_n_swa(m),
        "chat_template": (C.llama_model_chat_template(m, None) or b"").decode("utf-8", "replace"),
    }


def tokenize(model: int, text: str, add_special: bool, parse_special: bool = False) -> list[int]:
    C = lib().C
    vocab = C.llama_model_get_vocab(ctypes.c_void_p(model))
    raw = text.encode("utf-8")
    n_max = len(raw) + 8
    for _ in range(2):
        toks = (C.llama_token * n_max)()
        n = C.llama_tokenize(vocab, raw, len(raw), toks, n_max, add_special, parse_special)
        if n >= 0:
            return list(toks[:n])
        n_max = -n
    raise NativeError("llama_tokenize", n)


def detokenize(model: int, tokens: list[int]) -> str:
    C = lib().C
    vocab = C.llama_model_get_vocab(ctypes.c_void_p(model))
    out = bytearray()
    buf = ctypes.create_string_buffer(256)
    for t in tokens:
        n = C.llama_token_to_piece(vocab, int(t), buf, len(buf), 0, False)
        if n < 0:
            raise NativeError("llama_token_to_piece", n)
        out += buf.raw[:n]
    return out.decode("utf-8", "replace")


def is_eog(model: int, token: int) -> bool:
    C = lib().C
    return bool(C.llama_vocab_is_eog(C.llama_model_get_vocab(ctypes.c_void_p(model)), int(token)))


# --- context ---------------------------------------------------------------------------------

# bool(ggml_tensor *, ask, user_data): one trampoline for all contexts, keyed by user_data. Sessions
# install none (a watched node splits the graph); queries come from the native capture instead.
_probes: dict[int, Callable[[Any, bool], bool]] = {}


@ffi.callback("bool(struct ggml_tensor *, bool, void *)")
def _on_eval(t: Any, ask: bool, ud: Any) -> bool:
    fn = _probes.get(int(ffi.cast("uintptr_t", ud)))
    if fn is None:
        return not ask
    try:
        return fn(t, ask)
    except Exception:  # an exception must not unwind through C
        log.exception("query probe failed")
        return not ask


def probe_read(t: Any) -> tuple[int, np.ndarray] | None:
    """Inside a probe callback: (layer, q as float32 [n_tokens, n_head, head_dim]) or None."""
    ext = lib().ext
    il = ext.llama_kvc_probe_layer(t)
    if il < 0:
        return None
    ne = ffi.new("int64_t[4]")
    n = ext.llama_kvc_probe_read(t, ffi.NULL, 0, ne)
    out = np.empty(n, dtype=np.float32)
    ext.llama_kvc_probe_read(t, ffi.cast("float *", out.ctypes.data), n, ffi.NULL)
    d, h, n_tok = int(ne[0]), int(ne[1]), int(ne[2])
    return il, out.reshape(n_tok, h, d)


def probe_is_query(t: Any) -> bool:
    return lib().ext.llama_kvc_probe_layer(t) >= 0


def node_name(t: Any) -> str:
    return ffi.string(lib().ext.ggml_get_name(t)).decode()


def node_read_f32(t: Any) -> np.ndarray | None:
    """Inside an eval callback: an F32 graph node as a flat array (None if it is not 4 bytes/elt)."""
    ext = lib().ext
    n = int(ext.ggml_nelements(t))
    if int(ext.ggml_nbytes(t)) != 4 * n:
        return None
    out = np.empty(n, dtype=np.float32)
    ext.ggml_backend_tensor_get(t, ffi.cast("void *", out.ctypes.data), 0, 4 * n)
    return out


def n_ctx(ctx: int) -> int:
    return int(lib().C.llama_n_ctx(ctypes.c_void_p(ctx)))


def context_new(
    model: int,
    *,
    n_ctx: int,
    n_batch: int,
    n_threads: int,
    flash_attn: bool,
    kv_type_k: str,
    kv_type_v: str,
    flags: int,
    probe: Callable[[Any, bool], bool] | None = None,
    probe_key: int = 0,
) -> int:
    L = lib()
    C = L.C
    L.recent_errors.clear()
    p = C.llama_context_default_params()
    p.n_ctx = n_ctx
    p.n_batch = n_batch
    p.n_ubatch = n_batch
    p.n_seq_max = 1
    p.n_threads = n_threads
    p.n_threads_batch = n_threads
    p.type_k = KV_TYPES[kv_type_k]
    p.type_v = KV_TYPES[kv_type_v]
    p.flash_attn_type = 1 if flash_attn else 0
    p.no_perf = True
    p.swa_full = False  # sliding-window layers keep their window only
    if probe is not None:
        _probes[probe_key] = probe
        p.cb_eval = C.ggml_backend_sched_eval_callback(int(ffi.cast("uintptr_t", _on_eval)))
        p.cb_eval_user_data = ctypes.c_void_p(probe_key)
    ctx = L.ext.llama_kvc_init_from_model(
        ffi.cast("struct llama_model *", model),
        ffi.cast("struct llama_context_params *", ctypes.addressof(p)),
        flags,
    )
    if ctx == ffi.NULL:
        _probes.pop(probe_key, None)
        raise NativeError("llama_kvc_init_from_model", 0, _last_errors() or "context creation failed")
    return int(ffi.cast("uintptr_t", ctx))


def context_free(ctx: int, probe_key: int = 0) -> None:
    lib().C.llama_free(ctypes.c_void_p(ctx))
    _probes.pop(probe_key, None)


def _cctx(ctx: int) -> Any:
    return ffi.cast("struct llama_context *", ctx)


def layout(ctx: int) -> str:
    return LAYOUTS.get(lib().ext.llama_kvc_layout(_cctx(ctx)), "other")


def gate(ctx: int) -> tuple[int, str]:
    buf = ffi.new("char[512]")
    code = lib().ext.llama_kvc_check(_cctx(ctx), buf, 512)
    return int(code), ffi.string(buf).decode("utf-8", "replace")


def layer_info(ctx: int, il: int) -> dict[str, Any]:
    ext = lib().ext
    shape = ffi.new("int32_t[4]")
    if ext.llama_kvc_layer_shape(_cctx(ctx), il, shape, shape + 1, shape + 2, shape + 3) != 0:
        raise NativeError("llama_kvc_layer_shape", -1, f"layer {il} out of range")
    return {
        "flags": int(ext.llama_kvc_layer_flags(_cctx(ctx), il)),
        "n_head": int(shape[0]),
        "n_head_kv": int(shape[1]),
        "head_dim_k": int(shape[2]),
        "head_dim_v": int(shape[3]),
        "kq_scale": float(ext.llama_kvc_layer_kq_scale(_cctx(ctx), il)),
    }


def decode(
    ctx: int,
    tokens: np.ndarray,
    pos0: int,
    n_batch: int,
    logits_all: bool,
    queries: dict[int, list[np.ndarray]] | None = None,
) -> np.ndarray | None:
    """Decode ``tokens`` at positions pos0.. in sequence 0; logits of every token or of the last.

    With ``queries`` (a dict, on a context with capture on: :func:`capture_set`), each layer's q of
    every ``n_batch`` chunk is appended to ``queries[layer]`` (float32 [n, n_head, head_dim]).
    """
    C = lib().C
    c = ctypes.c_void_p(ctx)
    n = len(tokens)
    out = []
    batch = C.llama_batch_init(n_batch, 0, 1)
    try:
        for s in range(0, n, n_batch):
            m = min(n_batch, n - s)
            np.ctypeslib.as_array(batch.token, shape=(m,))[:] = tokens[s : s + m]
            np.ctypeslib.as_array(batch.pos, shape=(m,))[:] = np.arange(pos0 + s, pos0 + s + m)
            np.ctypeslib.as_array(batch.n_seq_id, shape=(m,))[:] = 1
            want = np.zeros(m, dtype=np.int8)
            if logits_all:
                want[:] = 1
            elif s + m == n:
                want[-1] = 1
            np.ctypeslib.as_array(batch.logits, shape=(m,))[:] = want
            for i in range(m):
                batch.seq_id[i][0] = 0
            batch.n_tokens = m
            rc = C.llama_decode(c, batch)
            if rc != 0:
                raise NativeError("llama_decode", rc, _last_errors())
            if queries is not None:
                for il, q in capture_read(ctx, m).items():
                    queries.setdefault(il, []).append(q)
            if want.any():
                n_vocab = C.llama_vocab_n_tokens(C.llama_model_get_vocab(C.llama_get_model(c)))
                for i in np.flatnonzero(want):
                    ptr = C.llama_get_logits_ith(c, int(i))
                    out.append(np.ctypeslib.as_array(ptr, shape=(n_vocab,)).copy())
    finally:
        C.llama_batch_free(batch)
    return np.stack(out) if out else None


def capture_set(ctx: int, on: bool) -> None:
    """Query capture on or off (the graphs are reserved again at the next decode when it changes)."""
    ext = lib().ext
    if bool(ext.llama_kvc_get_capture(_cctx(ctx))) == on:
        return
    if ext.llama_kvc_set_capture(_cctx(ctx), on) != 0:
        raise NativeError("llama_kvc_set_capture", -1, _last_errors())


def capture_read(ctx: int, n_tokens: int) -> dict[int, np.ndarray]:
    """The q of the last decode call: {layer: float32 [n_tokens, n_head, head_dim]} (layers with none left out)."""
    ext = lib().ext
    c = _cctx(ctx)
    got = int(ext.llama_kvc_capture_n_tokens(c))
    if got != n_tokens:
        raise NativeError("llama_kvc_capture_n_tokens", got, f"expected {n_tokens} tokens; {_last_errors()}")
    out: dict[int, np.ndarray] = {}
    ne = ffi.new("int64_t[4]")
    n_layer = int(lib().C.llama_model_n_layer(lib().C.llama_get_model(ctypes.c_void_p(ctx))))
    for il in range(n_layer):
        n = int(ext.llama_kvc_capture_read(c, il, ffi.NULL, 0, ne))
        if n < 0:
            raise NativeError("llama_kvc_capture_read", n, _last_errors())
        if n == 0:
            continue
        q = np.empty((int(ne[2]), int(ne[1]), int(ne[0])), dtype=np.float32)
        ext.llama_kvc_capture_read(c, il, ffi.cast("float *", q.ctypes.data), n, ffi.NULL)
        out[il] = q
    return out


def capture_clear(ctx: int) -> None:
    lib().ext.llama_kvc_capture_clear(_cctx(ctx))


def seq_pos_max(ctx: int) -> int:
    C = lib().C
    return int(C.llama_memory_seq_pos_max(C.llama_get_memory(ctypes.c_void_p(ctx)), 0))


def seq_rm(ctx: int, p0: int, p1: int) -> bool:
    C = lib().C
    return bool(C.llama_memory_seq_rm(C.llama_get_memory(ctypes.c_void_p(ctx)), 0, p0, p1))


def memory_clear(ctx: int) -> None:
    C = lib().C
    C.llama_memory_clear(C.llama_get_memory(ctypes.c_void_p(ctx)), True)


def state_get(ctx: int) -> bytes:
    C = lib().C
    c = ctypes.c_void_p(ctx)
    size = C.llama_state_seq_get_size(c, 0)
    buf = (ctypes.c_uint8 * max(size, 1))()
    n = C.llama_state_seq_get_data(c, buf, size, 0)
    if n != size:
        raise NativeError("llama_state_seq_get_data", int(n), f"expected {size} bytes")
    return ctypes.string_at(buf, n)


def state_set(ctx: int, blob: bytes) -> None:
    """Restore sequence 0 from ``blob``; raises NativeError (the sequence is then empty)."""
    C = lib().C
    L = lib()
    L.recent_errors.clear()
    buf = (ctypes.c_uint8 * max(len(blob), 1)).from_buffer_copy(blob or b"\0")
    n = C.llama_state_seq_set_data(ctypes.c_void_p(ctx), buf, len(blob), 0)
    if n == 0 and len(blob) > 0:
        raise NativeError("llama_state_seq_set_data", 0, _last_errors() or "restore failed")


def library_path() -> Path:
    return lib().path


def system_info() -> str:
    return lib().C.llama_print_system_info().decode("utf-8", "replace")


# --- devices ---------------------------------------------------------------------------------

# enum ggml_backend_dev_type (ggml-backend.h)
DEVICE_TYPES = {0: "CPU", 1: "GPU", 2: "IGPU", 3: "ACCEL", 4: "META"}


def devices() -> list[dict[str, Any]]:
    """The ggml backend devices of this build, in registry order (a CPU device is always there).

    Each: ``name`` (e.g. ``CPU``, ``CUDA0``), ``description``, ``type`` (one of
    :data:`DEVICE_TYPES`), ``backend`` (the registry's name, e.g. ``CUDA``), ``memory_free`` and
    ``memory_total`` in bytes (for the CPU: the host's).
    """
    ext = lib().ext
    out = []
    mem = ffi.new("size_t[2]")
    for i in range(int(ext.ggml_backend_dev_count())):
        dev = ext.ggml_backend_dev_get(i)
        ext.ggml_backend_dev_memory(dev, mem, mem + 1)
        out.append({
            "name": ffi.string(ext.ggml_backend_dev_name(dev)).decode("utf-8", "replace"),
            "description": ffi.string(ext.ggml_backend_dev_description(dev)).decode("utf-8", "replace"),
            "type": DEVICE_TYPES.get(int(ext.ggml_backend_dev_type(dev)), "?"),
            "backend": ffi.string(ext.ggml_backend_reg_name(ext.ggml_backend_dev_backend_reg(dev))).decode(),
            "memory_free": int(mem[0]),
            "memory_total": int(mem[1]),
        })
    return out


def gpu_layers(n_layer: int, n_gpu_layers: int) -> list[bool]:
    """Which of ``n_layer`` layers llama.cpp puts on a GPU for ``n_gpu_layers`` (the last ones;
    llama-model.cpp's ``i_gpu_start``), with their KV cache and attention (``offload_kqv``).
    All False without a GPU device."""
    if not any(d["type"] in ("GPU", "IGPU") for d in devices()):
        return [False] * n_layer
    n = n_layer + 1 if n_gpu_layers < 0 else n_gpu_layers
    start = max(n_layer + 1 - n, 0)
    return [il >= start for il in range(n_layer)]
