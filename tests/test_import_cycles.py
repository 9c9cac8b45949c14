"""No import circles inside the package.

A circle makes a module's meaning depend on which of its members happened to be imported first, and forces the
lazy function-level imports that hide it (training/config.py took SINKS from training/metrics.py, which took
ConfigError back from config.py inside a function). The graph is read with `ast` from the source, so the test
needs no import side effects and no dependency.

Every import counts, at module level and inside functions alike: a lazy import that closes a circle is still a
circle, only one that fails later. An edge goes to the module the statement names: `from megaeeve.a import b`
points at `megaeeve.a.b` when that is a module, and at `megaeeve.a` (its `__init__`) otherwise. The implicit
import of a parent package (`megaeeve.a` before `megaeeve.a.b`) is not an edge: a package's `__init__` that
re-exports its submodules would otherwise close a circle with each of them.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "megaeeve"


def module_name(path: Path, root: Path) -> str:
    """`megaeeve/data/indexed.py` -> `megaeeve.data.indexed`; a package's `__init__.py` -> the package."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package modules it imports (anywhere in its source)."""
    paths = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {name: set() for name in paths}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in paths else source
                           for alias in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in paths and t != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle as a path that starts and ends at the same module, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if start in state:
            continue
        path = [start]
        stack = [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 20 and "megaeeve.errors" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_a_lazy_import_that_closes_a_circle_is_found(tmp_path):
    pkg = tmp_path / "megaeeve"
    (pkg / "training").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "training" / "__init__.py").write_text("")
    (pkg / "training" / "config.py").write_text("from megaeeve.training.metrics import SINKS\n")
    (pkg / "training" / "metrics.py").write_text(
        "SINKS = ()\ndef f():\n    from .config import ConfigError\n")
    assert find_cycle(import_graph(pkg)) == [
        "megaeeve.training.config", "megaeeve.training.metrics", "megaeeve.training.config"]


def test_relative_imports_and_submodules_resolve(tmp_path):
    pkg = tmp_path / "megaeeve"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("from . import indexed\n")
    (pkg / "data" / "indexed.py").write_text("from ..errors import X\nimport megaeeve.data\n")
    graph = import_graph(pkg)
    assert graph["megaeeve.data"] == {"megaeeve.data.indexed"}
    assert graph["megaeeve.data.indexed"] == {"megaeeve.errors", "megaeeve.data"}
    assert find_cycle(graph) == ["megaeeve.data", "megaeeve.data.indexed", "megaeeve.data"]
