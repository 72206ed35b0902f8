"""The layers of docs/architecture.md, checked on every import of the package (those inside functions too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "supcon"
# Lowest first; a module may import its own layer and the ones below it.
LAYERS = [
    {"losses", "models", "augment", "data", "config", "device", "io", "methods", "options"},
    {"evaluate"},
    {"engine", "runs"},
    {"stages"},
    {"experiments", "reporting"},
    {"cli"},
]
LAYER_OF = {part: i for i, layer in enumerate(LAYERS) for part in layer}
BLOCKS = ("losses", "models", "augment", "data", "evaluate")
TRAINING = ("engine", "stages", "runs", "experiments", "reporting", "cli")


def _part(module: str) -> str | None:
    """``supcon.engine.loop`` -> ``engine``; None for modules outside the package or the package itself."""
    pieces = module.split(".")
    if pieces[0] != "supcon" or len(pieces) < 2:
        return None
    return pieces[1]


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports, with the line, resolved to absolute names."""
    package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts)
    if path.name == "__init__.py":
        package = package.rsplit(".", 1)[0] if package.endswith(".__init__") else package
    package = package.removesuffix(".__init__")
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + (1 if path.name == "__init__.py" else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            found.append((node.lineno, module))
            # `from supcon import distributed`: the imported names may be modules themselves
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names if module == "supcon"]
    return found


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "__pycache__" not in p.parts)


def test_the_walk_sees_the_package():
    parts = {_part(".".join(p.relative_to(SRC.parent).with_suffix("").parts)) for p in _modules()}
    assert set(LAYER_OF) <= parts, set(LAYER_OF) - parts
    assert parts - {None, "__init__", "__main__"} <= set(LAYER_OF), "a new top-level module needs a layer"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_a_module_imports_only_from_its_layer_or_below(path):
    own = _part(".".join(path.relative_to(SRC.parent).with_suffix("").parts))
    if own not in LAYER_OF:  # supcon/__init__.py, __main__.py: the package's front door
        return
    wrong = []
    for line, module in _imports(path):
        part = _part(module)
        if part is None or part not in LAYER_OF:
            continue
        if own in BLOCKS and part in TRAINING:
            wrong.append(f"line {line}: {module} (building blocks and evaluation never import training)")
        elif part == "cli" and own != "cli":
            wrong.append(f"line {line}: {module} (the library never imports the command line)")
        elif LAYER_OF[part] > LAYER_OF[own]:
            wrong.append(f"line {line}: {module} (layer {LAYER_OF[part]} above {own}'s {LAYER_OF[own]})")
    assert wrong == [], f"{path.relative_to(SRC)} imports upwards: {'; '.join(wrong)}"


def test_the_check_catches_an_upward_import(tmp_path, monkeypatch):
    bad = SRC / "evaluate" / "knn.py"
    source = bad.read_text()
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: source + "\nfrom supcon.stages import train_run\n"
                        if self == bad else Path.read_bytes(self).decode())
    with pytest.raises(AssertionError, match="building blocks and evaluation never import training"):
        test_a_module_imports_only_from_its_layer_or_below(bad)


def test_no_module_is_over_500_lines_nor_a_function_over_80_but_the_loss_kernels():
    long = []
    for path in _modules():
        kernel = path.parent.name == "losses"
        lines = path.read_text().count("\n")
        if lines > 500 and not kernel:
            long.append(f"{path.relative_to(SRC)}: {lines} lines")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not kernel:
                size = node.end_lineno - node.lineno + 1
                if size > 80:
                    long.append(f"{path.relative_to(SRC)}: {node.name} is {size} lines")
    assert long == []
