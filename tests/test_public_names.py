"""Names stay where their users import them from when modules are split (#17): every ``from tokenset... import x``
of the notebooks (pipeline and tutorials) resolves, so does every ``module.attr`` they read of an imported tokenset
module, and every name in ``__all__`` of the modules that re-export the parts they were split into."""

from __future__ import annotations

import ast
import importlib
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").rglob("*.ipynb"))
# modules split into parts (#17) that re-export them: their __all__ must resolve
FACADES = ("tokenset.config", "tokenset.train", "tokenset.official", "tokenset.metrics")


def _code(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


def _dotted(node: ast.AST) -> list[str] | None:
    """["a", "b", "c"] for the expression ``a.b.c`` (names and attributes only), else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return [node.id, *reversed(parts)] if isinstance(node, ast.Name) else None


def _names_used(source: str) -> set[str]:
    """Dotted paths of every name the source imports from tokenset or reads off an imported tokenset name
    (``metrics.fid_kid``, ``tokenset.config.project_root``); names the source also assigns to are left out."""
    tree = ast.parse(source)
    assigned = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    used, aliases = set(), {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tokenset") and not node.level:
            for alias in node.names:
                used.add(f"{node.module}.{alias.name}")
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("tokenset"):  # `import tokenset.x` binds tokenset; `... as y` binds y
                    bound = alias.name if alias.asname else alias.name.partition(".")[0]
                    aliases[alias.asname or bound] = bound
    for node in ast.walk(tree):
        parts = _dotted(node) if isinstance(node, ast.Attribute) else None
        if parts and parts[0] in aliases and parts[0] not in assigned:
            used.add(".".join([aliases[parts[0]], *parts[1:]]))
    return used


def _resolves(path: str) -> bool:
    """Whether the dotted ``path`` names something: the longest importable module prefix, then attributes."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_notebook_names_resolve(notebook):
    missing = sorted(path for path in _names_used(_code(notebook)) if not _resolves(path))
    assert not missing, f"{notebook.name} uses names that no longer resolve: {missing}"


@pytest.mark.parametrize("module", FACADES)
def test_facade_exports_resolve(module):
    mod = importlib.import_module(module)
    missing = [name for name in mod.__all__ if not hasattr(mod, name)]
    assert not missing, f"{module}.__all__ names {missing}, which it does not define or import"
