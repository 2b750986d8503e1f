"""The import graphs of ``lineguard`` (edge) and ``lineguard_models`` (training) have no circles.

The graph is read from the source with ``ast`` (nothing is imported). The rule:

- every ``import x`` / ``from x import y`` statement is an edge from its module to the module it
  names, wherever it stands: at module level, inside a function (a deferred import only hides a
  circle from the interpreter, the design still has it) and under ``if TYPE_CHECKING:`` (a type
  that only one side of a circle may name belongs in a lower module, or behind a Protocol);
- ``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg``;
- the parent packages an import passes through are not edges (a package ``__init__`` importing its
  own submodules is the ordinary layout, not a circle between collaborators);
- only modules inside the two packages are nodes; third-party and standard-library imports are not.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"lineguard": ROOT / "edge" / "lineguard", "lineguard_models": ROOT / "models" / "lineguard_models"}

Graph = dict[str, set[str]]


def modules(package: str, root: Path) -> dict[str, Path]:
    """Dotted module name -> source file, for every ``.py`` below ``root``."""
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The dotted names one import statement reaches (resolved when relative)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        parts = module.split(".") if is_package else module.split(".")[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join([*parts, base] if base else parts)
    return [f"{base}.{alias.name}" for alias in node.names] + [base]


def import_graph(mods: dict[str, Path]) -> Graph:
    graph: Graph = {}
    for module, path in mods.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            names = _targets(module, path.name == "__init__.py", node)
            if isinstance(node, ast.ImportFrom):  # `from pkg import name`: the submodule if it is one
                *names_, base = names
                names = [n for n in names_ if n in mods] or [base]
            for name in names:
                while name and name not in mods:  # `import a.b.c` of a non-module c: its module
                    name = name.rpartition(".")[0]
                if name and name != module:
                    edges.add(name)
        graph[module] = edges
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """One circle (as a path that returns to its start) per strongly connected component (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

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
            comp: set[str] = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_circle(graph, comp) for comp in components]


def _circle(graph: Graph, comp: set[str]) -> list[str]:
    """A concrete circle inside a strongly connected component: start -> ... -> start (BFS)."""
    start = min(comp)
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & comp):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return [start, *reversed(path[:-1]), start] if v != start else [start, start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no circle found in component {sorted(comp)}")


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_import_circles(package: str) -> None:
    found = cycles(import_graph(modules(package, PACKAGES[package])))
    assert not found, f"import circles in {package} (see the rule in this test's docstring):\n" + "\n".join(
        " -> ".join(c) for c in found
    )


def test_the_walker_finds_a_circle_through_deferred_and_type_checking_imports(tmp_path: Path) -> None:
    """The detector itself: a circle closed by a function-local import and one by TYPE_CHECKING."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg import a\n")  # parent package: not an edge
    (pkg / "a.py").write_text("from pkg.sub import b\nimport json\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import c\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import X\n")
    (pkg / "d.py").write_text("from . import a\n")  # into the circle, not part of it
    graph = import_graph(modules("pkg", pkg))
    assert graph["pkg.sub.b"] == {"pkg.c"} and graph["pkg.d"] == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]]
    (pkg / "c.py").write_text("X = 1\n")
    assert cycles(import_graph(modules("pkg", pkg))) == []
