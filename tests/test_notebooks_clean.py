"""Every notebook under notebooks/ (pipeline stages NN_*.ipynb and tutorials/) is committed clean: no outputs, no
execution counts (executed copies are pipeline outputs in results/notebooks/), and a cell tagged 'parameters' so
papermill can inject parameters. Reads the JSON only; runs no kernel."""

from pathlib import Path

import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(p for p in NOTEBOOK_DIR.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def _name(path: Path) -> str:
    return path.relative_to(NOTEBOOK_DIR).as_posix()


def test_notebooks_are_found():
    names = [_name(p) for p in NOTEBOOKS]
    assert any(n[:2].isdigit() for n in names), f"no pipeline notebooks NN_*.ipynb in {NOTEBOOK_DIR}: {names}"
    assert any(n.startswith("tutorials/") for n in names), f"no tutorials in {NOTEBOOK_DIR / 'tutorials'}: {names}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_name)
def test_notebook_has_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    dirty = [f"cell {i}: {len(c.get('outputs', []))} outputs, execution_count {c.get('execution_count')}"
             for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, f"{_name(path)} is not stripped (run `make strip`): " + "; ".join(dirty)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_name)
def test_notebook_has_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert tagged, f"{_name(path)} has no cell tagged 'parameters' (papermill injects parameters after it)"
    assert all(nb.cells[i].cell_type == "code" for i in tagged), \
        f"{_name(path)}: the 'parameters' tag is on a non-code cell (cells {tagged})"
