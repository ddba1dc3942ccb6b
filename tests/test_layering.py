"""Layers without a circle, read from the source (ast), not by importing anything.

- The ground (config, bijection, atomic, images, set_decoders, ...) imports no other tokenset module; config.py is
  built from parts of the ground (config_schema <- config_sections <- config_studies <- config), each importing
  only the parts before it.
- tokenizer.py, followed through every tokenset import (function-level ones and the ``__init__`` of each package a
  module sits in), reaches neither the denoiser, FSDD nor the baselines.
- No import cycle among the tokenset modules. ``tokenset/__init__.py`` only re-exports the public API and is left
  out of the walk (importing any tokenset module runs it; it imports the tokenizer, not the other way round).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.test_pipeline_deps import _module_file

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tokenset"
TOP_INIT = PACKAGE / "__init__.py"
GROUND = ("config", "config_schema", "config_sections", "config_studies", "bijection", "atomic", "device", "images",
          "set_decoders", "trivial", "stats")
# config.py gathers its parts; each part may import only the parts before it in this order
CONFIG_PARTS = ("config_schema", "config_sections", "config_studies", "config")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def explicit_imports(path: Path) -> set[Path]:
    """Files of the tokenset modules that ``path`` names in an import statement (anywhere in the file)."""
    found: set[Path] = set()
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against this module's package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names = [module] + [f"{module}.{a.name}" for a in node.names]  # `from tokenset import data` is a module
        for name in names:
            if name == "tokenset" or not name.startswith("tokenset."):
                continue
            file = _module_file(name)
            if file is not None and file != path:
                found.add(file)
    return found


def _package_inits(path: Path) -> set[Path]:
    """The ``__init__.py`` of every package above ``path`` below tokenset/ (Python runs them on import)."""
    inits = set()
    folder = path.parent
    while folder != PACKAGE and PACKAGE in folder.parents:
        inits.add(folder / "__init__.py")
        folder = folder.parent
    return inits


def runtime_closure(path: Path) -> set[Path]:
    """Every tokenset module file that importing ``path`` may run, transitively (tokenset/__init__.py left out)."""
    seen: set[Path] = set()
    todo = [path]
    while todo:
        current = todo.pop()
        for dep in explicit_imports(current) | _package_inits(current):
            if dep not in seen and dep != TOP_INIT and dep != path:
                seen.add(dep)
                todo.append(dep)
    return seen


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p != TOP_INIT)


def test_the_walk_finds_modules():
    # a check of the reader itself: the tokenizer does import the quantizer and the bijection
    names = {p.relative_to(PACKAGE).as_posix() for p in runtime_closure(PACKAGE / "tokenizer.py")}
    assert {"quantizer.py", "bijection.py", "config.py", "set_decoders.py"} <= names


@pytest.mark.parametrize("name", GROUND)
def test_ground_imports_no_tokenset_module(name):
    path = PACKAGE / f"{name}.py"
    assert path.is_file(), f"expected the ground module {path}"
    parts = CONFIG_PARTS[:CONFIG_PARTS.index(name)] if name in CONFIG_PARTS else ()
    allowed = {PACKAGE / f"{part}.py" for part in parts}
    imported = sorted(p.relative_to(ROOT).as_posix() for p in explicit_imports(path) if p not in allowed)
    assert not imported, f"tokenset/{name}.py must import no other tokenset module (but {list(parts)}), " \
                         f"imports {imported}"


def test_tokenizer_reaches_neither_denoiser_fsdd_nor_baselines():
    reached = {p.relative_to(PACKAGE).as_posix() for p in runtime_closure(PACKAGE / "tokenizer.py")}
    bad = sorted(r for r in reached if r == "denoiser.py" or r.startswith(("fsdd/", "baselines/")))
    assert not bad, f"tokenizer.py imports, through {sorted(reached)}, these higher modules: {bad}"


def test_no_import_cycle():
    graph = {p: explicit_imports(p) for p in MODULES}
    state: dict[Path, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: Path, path: list[Path]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if dep == TOP_INIT:
                continue
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep] if dep in path else [node, dep]
                pytest.fail("import cycle: " + " -> ".join(p.relative_to(ROOT).as_posix() for p in cycle))
            if dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for module in MODULES:
        if module not in state:
            visit(module, [module])
    assert len(state) >= len(MODULES)
