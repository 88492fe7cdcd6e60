"""The package's import graph has no cycle, counting imports inside functions too: a module
that needs a function-level import to dodge a cycle is holding two ideas."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"imerbench": ROOT / "imerbench", "imerbench.methods": ROOT / "methods"}


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for the harness and the built-in methods."""
    out = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join((package, *parts))] = path
    return out


def imported(node: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The project modules an import statement names (submodules where it names them)."""
    names: set[str] = set()
    if isinstance(node, ast.Import):
        names = {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom):
        if node.level:  # relative: from the module's package, up `level - 1` more
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            source = ".".join([*base, *([node.module] if node.module else [])])
        else:
            source = node.module or ""
        submodules = {f"{source}.{alias.name}" for alias in node.names} & known
        names = submodules | ({source} if len(submodules) < len(node.names) else set())
    return {name for name in names if name in known}


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    graph = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in ast.walk(tree):
            edges |= imported(node, module, is_package, known)
        graph[module] = edges - {module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import() -> None:
    source = "def f():\n    from imerbench.b import g\n"
    edges = set()
    for node in ast.walk(ast.parse(source)):
        edges |= imported(node, "imerbench.a", False, {"imerbench.a", "imerbench.b"})
    assert edges == {"imerbench.b"}
    graph = {"imerbench.a": edges, "imerbench.b": {"imerbench.a"}, "imerbench.c": set()}
    assert cycles(graph) == [["imerbench.a", "imerbench.b"]]


def test_no_import_cycle_in_the_harness_or_the_methods() -> None:
    graph = import_graph()
    assert "imerbench.runner" in graph and "imerbench.methods.comp" in graph
    assert cycles(graph) == []
