"""No circles between the package's modules, counting every import (inside functions and ``TYPE_CHECKING`` too).

An import hidden in a function still ties the two modules together; it only postpones the failure to whoever
calls the function first. So the graph here has an edge for every import of a ``supcon`` module wherever it is
written, and the package's own modules may import each other in one direction only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "supcon"

# The imports of the package's own modules that stay inside a function, each for the reason given beside it in
# the source; any other belongs at the top of its module. (importer, imported module)
LOCAL_IMPORTS_KEPT = {
    # `import supcon` and `supcon --help` do not load torch: the package's lazy attributes, and Config.save's
    # atomic write (supcon.io imports torch; the command line builds its flags from the Config)
    ("supcon", "supcon.runs.load"),
    ("supcon.runs", "supcon.runs.load"),
    ("supcon.config", "supcon.io"),
}
# The face loads a command's library only when that command runs, so that `supcon --help` stays fast.
LOCAL_IMPORTS_KEPT_UNDER = ("supcon.cli",)


def _modules() -> dict[str, Path]:
    """``supcon.data.cache`` -> its path, a package under its own name (``supcon.data`` -> ``__init__.py``)."""
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _is_package(module: str) -> bool:
    return MODULES.get(module, Path()).name == "__init__.py"


def _base(module: str, level: int) -> str:
    """The package a relative import of ``level`` dots in ``module`` starts from."""
    package = module if _is_package(module) else module.rsplit(".", 1)[0]
    for _ in range(level - 1):
        package = package.rsplit(".", 1)[0]
    return package


def _nodes_under(tree: ast.AST, test) -> set[int]:
    """The ids of the import statements inside the nodes for which ``test`` holds."""
    return {id(n) for node in ast.walk(tree) if test(node) for n in ast.walk(node)
            if isinstance(n, (ast.Import, ast.ImportFrom))}


def _is_function(node: ast.AST) -> bool:
    return isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))


def imports(module: str, source: str | None = None) -> list[tuple[int, str, bool]]:
    """``(line, imported module, inside a function)`` for each import of a ``supcon`` module by ``module``
    (under ``if TYPE_CHECKING:`` too: an import for annotations still ties the two modules together).

    ``from supcon.x import y`` is the module ``supcon.x.y`` where that is a module, else ``supcon.x``; relative
    imports are resolved. A module's own parent packages are not counted: Python has already started them by
    the time the module runs, and an ``__init__`` importing its own submodules is how a package is made, not a
    circle (an explicit ``from supcon.data import x`` inside ``supcon.data`` still counts).
    """
    tree = ast.parse(source if source is not None else MODULES[module].read_text())
    local = _nodes_under(tree, _is_function)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            origin = _base(module, node.level) + (f".{node.module}" if node.module else "") if node.level \
                else node.module
            targets = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in MODULES else origin for a in node.names]
        else:
            continue
        for target in dict.fromkeys(targets):
            if target.split(".")[0] != "supcon" or target == module:
                continue
            found.append((node.lineno, _known(target), id(node) in local))
    return found


def _known(target: str) -> str:
    """The module an import names, or the nearest package above a name that is no module (``supcon.x.f``)."""
    while target not in MODULES and "." in target:
        target = target.rsplit(".", 1)[0]
    return target


def graph(sources: dict[str, str] | None = None) -> dict[str, dict[str, int]]:
    """module -> {imported module: first line}, over every module of the package."""
    edges: dict[str, dict[str, int]] = {}
    for module in MODULES:
        text = (sources or {}).get(module)
        edges[module] = {}
        for line, target, _ in imports(module, text):
            edges[module].setdefault(target, line)
    return edges


def cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """Each strongly connected group of more than one module, as one circle through it (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                top = stack.pop()
                group.add(top)
                if top == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return [_circle(group, edges) for group in groups]


def _circle(group: set[str], edges: dict[str, dict[str, int]]) -> list[str]:
    """The shortest circle from the group's first module back to itself, within the group."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(edges[node]):
                if nxt == start:
                    return paths[node] + [start]
                if nxt in group and nxt not in paths:
                    paths[nxt] = paths[node] + [nxt]
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no circle through {start}")


def _describe(circle: list[str], edges: dict[str, dict[str, int]]) -> str:
    steps = [f"{a} (line {edges[a][b]})" for a, b in zip(circle, circle[1:], strict=False)]
    return " -> ".join(steps + [circle[-1]])


def test_the_walk_resolves_imports():
    assert ("supcon.data.folder" in {t for _, t, _ in imports("supcon.data", "from . import folder\n")})
    assert [t for _, t, _ in imports("supcon.data.cache", "from .core import ImageDataset\n")] == ["supcon.data.core"]
    assert [t for _, t, _ in imports("supcon.stages.run", "from ..runs import RunDir\n")] == ["supcon.runs"]
    assert [t for _, t, _ in imports("supcon.data.cache", "from supcon.data import core\n")] == ["supcon.data.core"]
    assert [t for _, t, _ in imports("supcon.data.cache", "from supcon.data import load_data\n")] == ["supcon.data"]
    assert imports("supcon.io", "def f():\n    import supcon.config\n") == [(2, "supcon.config", True)]


def test_no_circle_between_modules():
    """Imports under ``if TYPE_CHECKING:`` count as well: the two modules depend on each other all the same."""
    edges = graph()
    found = [_describe(circle, edges) for circle in cycles(edges)]
    assert found == [], "circles between modules:\n" + "\n".join(found)


def test_reporting_never_imports_experiments():
    """Experiments compute and hand their numbers to reporting; reporting reaching back up is how circles start."""
    edges = graph()
    wrong = [f"{m} line {line}: {t}" for m in edges if m.startswith("supcon.reporting")
             for t, line in edges[m].items() if t.startswith("supcon.experiments")]
    assert wrong == []


def test_the_check_names_a_circle():
    source = MODULES["supcon.io"].read_text() + "\ndef f():\n    from supcon.evaluate.tsne import MIN_POINTS\n"
    edges = graph({"supcon.io": source})
    names = [" ".join(circle) for circle in cycles(edges)]
    assert any("supcon.io" in name and "supcon.evaluate.tsne" in name for name in names), names


def test_imports_of_the_package_are_at_the_top_of_a_module():
    """A function-local import of the package hides an order the reader cannot see; those kept are listed."""
    hidden = []
    for module in MODULES:
        if module.startswith(LOCAL_IMPORTS_KEPT_UNDER):
            continue
        hidden += [f"{module} line {line}: {target}" for line, target, local in imports(module)
                   if local and (module, target) not in LOCAL_IMPORTS_KEPT]
    assert hidden == [], "function-local imports of the package:\n" + "\n".join(hidden)


@pytest.mark.parametrize("kept", sorted(LOCAL_IMPORTS_KEPT))
def test_each_kept_local_import_is_still_there(kept):
    module, target = kept
    assert (module, target) in {(module, t) for _, t, local in imports(module) if local}, kept
