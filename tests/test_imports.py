"""The package imports in one direction: no circle among pyllamaam's modules, counting every
import (module level, inside functions, and those made only for type checking)."""

from __future__ import annotations

import ast
from pathlib import Path

import pyllamaam

ROOT = Path(pyllamaam.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _edges(name: str, path: Path, known: set[str]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[: len(base) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            # "from pkg import name": the submodule pkg.name where there is one, else pkg itself
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        out |= {t for t in targets if t in known and t != name}
    return out


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_import_circle_in_the_package():
    mods = _modules()
    graph = {name: _edges(name, path, set(mods)) for name, path in mods.items()}
    cycle = _cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_pipeline_and_the_query_sources_do_not_import_the_engine():
    mods = _modules()
    for name, path in mods.items():
        if name.startswith(("pyllamaam.pipeline", "pyllamaam.queries")):
            assert "pyllamaam.engine" not in _edges(name, path, set(mods)), name


def test_the_session_is_what_the_pipeline_takes_it_for():
    # the pipeline and the query sources type a session as pyllamaam.host.Host: Session must have
    # every attribute, property and method that protocol names
    from pyllamaam.engine import Session
    from pyllamaam.host import Host

    names = set(Host.__annotations__) | {n for n in vars(Host) if not n.startswith("__")}
    names -= {"_is_protocol", "_is_runtime_protocol", "_abc_impl"}
    instance = {"model", "layers", "n_ctx", "n_threads", "flash_attn", "kv_type_k", "kv_type_v", "bias_storage",
                "auto_reports"}  # set in __init__ (auto_reports by auto_compact)
    missing = sorted(n for n in names - instance if not hasattr(Session, n))
    assert not missing, f"Session lacks {missing}"
    assert instance <= names


def test_the_pipeline_reaches_a_session_through_public_names_only():
    # the session's bookkeeping (tokens, cells, logits, capture and auto modes) stays in the
    # engine: Host names none of it, and the pipeline and the query sources touch none of it
    import re

    from pyllamaam.host import Host

    names = set(Host.__annotations__) | {n for n in vars(Host) if not n.startswith("__")}
    names -= {"_is_protocol", "_is_runtime_protocol", "_abc_impl"}
    assert not sorted(n for n in names if n.startswith("_")), "Host names private attributes"
    private = re.compile(r"\b(?:session|twin|host)\._[a-z]")
    for name, path in _modules().items():
        if name.startswith(("pyllamaam.pipeline", "pyllamaam.queries")):
            assert not private.search(path.read_text()), f"{name} reaches into the session's private state"
