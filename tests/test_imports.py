"""No import cycle in src/densepred: every module's imports (absolute `densepred.*` and relative ones,
at module level and inside functions) form an acyclic graph.

A cycle that happens to work today (one side imports inside a function) still couples two modules
that should not know each other, and breaks as soon as someone moves an import to the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = "densepred"
SRC = ROOT / "src"


def module_name(path: Path) -> str:
    """`src/densepred/engine/train.py` -> `densepred.engine.train`; a package's `__init__` is the package."""
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    """Every module under src/densepred by dotted name."""
    return {module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def resolve(name: str, known: set[str]) -> str | None:
    """The module an imported name belongs to: `densepred.a.b.func` -> `densepred.a.b` (the longest
    known prefix); None for names outside the package."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return None


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The package modules `module` imports anywhere in its body (functions included).

    `import a.b` and `from a.b import c` (c a name) import `a.b`; `from a import b` (b a submodule)
    imports `a.b`. The parent packages that Python initialises on the way are not counted: a package
    `__init__` that imports its own submodules is how a package is assembled, not a cycle.
    """
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                root = ".".join(base + ([node.module] if node.module else []))
            else:
                root = node.module or ""
            names = [f"{root}.{a.name}" if f"{root}.{a.name}" in known else root for a in node.names]
        else:
            continue
        for name in names:
            target = resolve(name, known)
            if target is not None and target != module:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports."""
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None when the graph is acyclic (depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_walker_sees_imports_and_finds_a_cycle():
    graph = import_graph()
    assert "densepred.config" in graph["densepred.stage_run"]
    assert "densepred.engine.train" in graph["densepred.tune"]  # a function-level import
    assert "densepred.engine.distributed" in graph["densepred.engine.train"]  # from package import module
    assert "densepred.engine" not in graph["densepred.engine.train"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_src_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle in src/: " + " -> ".join(cycle or [])
