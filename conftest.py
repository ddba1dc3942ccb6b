"""Test-session set-up shared by the unit tests and the notebooks (nbval)."""

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent
# Written by the notebooks at their smoke defaults (tests/smoke_params.yaml); the prepared data in data/prepared
# is shared with the pipeline and kept.
SMOKE_DIRS = (ROOT / "data" / "smoke", ROOT / "results" / "smoke")


def pytest_collection_modifyitems(session, config, items):
    """When notebooks are about to run, their smoke chain starts from scratch, so checkpoints written under an
    older configuration never leak into a test run."""
    if any(str(item.fspath).endswith(".ipynb") for item in items):
        for folder in SMOKE_DIRS:
            shutil.rmtree(folder, ignore_errors=True)
