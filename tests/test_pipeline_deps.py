"""dvc.yaml: every tokenset module a stage's notebook runs (imported directly or through other tokenset modules,
or as the ``__init__.py`` of a package it sits in) is a dependency of that stage, so editing it makes `dvc repro`
rerun the stage; and a stage depends on no other tokenset module, so editing one does not rerun stages that never
run it."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _imports(source: str) -> set[str]:
    """Names of the tokenset modules imported anywhere in ``source`` (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("tokenset")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tokenset") \
                and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # `from tokenset import data` is a module
    return found


def _module_file(name: str) -> Path | None:
    parts = name.split(".")
    for candidate in (ROOT.joinpath(*parts).with_suffix(".py"), ROOT.joinpath(*parts) / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _package_inits(path: Path) -> list[Path]:
    """``__init__.py`` of each package between tokenset/ and ``path`` (Python runs them when importing ``path``)."""
    top, inits, folder = ROOT / "tokenset", [], path.parent
    while folder != top and top in folder.parents:
        inits.append(folder / "__init__.py")
        folder = folder.parent
    return inits


def module_closure(source: str) -> set[Path]:
    """Files of the tokenset modules ``source`` imports, transitively. tokenset/__init__.py is left out: it only
    re-exports the public API, so following it would make every stage depend on every module it names."""
    seen: set[Path] = set()
    todo = [source]
    while todo:
        for name in _imports(todo.pop()):
            path = _module_file(name)
            if path is None:
                continue
            for file in [path, *_package_inits(path)]:
                if file in seen or file == ROOT / "tokenset" / "__init__.py":
                    continue
                seen.add(file)
                todo.append(file.read_text())
    return seen


def _notebook_code(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_depends_on_every_module_it_runs(stage):
    deps = [ROOT / d for d in STAGES[stage]["deps"]]
    notebooks = [d for d in deps if d.suffix == ".ipynb"]
    assert notebooks, f"stage {stage}: no notebook among its deps"
    needed = set().union(*(module_closure(_notebook_code(nb)) for nb in notebooks))
    covered = {p for p in needed if any(p == d or d in p.parents for d in deps)}
    missing = sorted(str(p.relative_to(ROOT)) for p in needed - covered)
    assert not missing, f"dvc.yaml stage {stage!r} runs these modules but does not depend on them: {missing}"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_depends_on_no_module_it_does_not_run(stage):
    deps = [ROOT / d for d in STAGES[stage]["deps"]]
    needed = set().union(*(module_closure(_notebook_code(nb)) for nb in deps if nb.suffix == ".ipynb"))
    package = ROOT / "tokenset"
    code_deps = [d for d in deps if d == package or package in d.parents]
    folders = sorted(str(d.relative_to(ROOT)) for d in code_deps if d.is_dir())
    assert not folders, f"dvc.yaml stage {stage!r}: name module files, not folders: {folders}"
    extra = sorted(str(d.relative_to(ROOT)) for d in code_deps if d not in needed)
    assert not extra, f"dvc.yaml stage {stage!r} depends on modules its notebook never runs: {extra}"


def test_closure_follows_imports():
    # tokenset.generators imports the tokenizer, which imports the quantizer: all three are found
    files = {p.name for p in module_closure("from tokenset import generators")}
    assert {"generators.py", "tokenizer.py", "quantizer.py", "checkpoint.py", "atomic.py"} <= files
    # a module inside a package runs that package's __init__.py too
    inits = {p.relative_to(ROOT).as_posix() for p in module_closure("from tokenset.baselines.masked import sample")}
    assert "tokenset/baselines/__init__.py" in inits
