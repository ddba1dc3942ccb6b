"""benchmarks/stage_minutes.py: minutes per stage from papermill's metadata."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import stage_minutes  # noqa: E402


def _notebook(path, start, seconds):
    meta = {"papermill": {"start_time": start, "duration": seconds}} if seconds is not None else {}
    path.write_text(json.dumps({"cells": [], "metadata": meta, "nbformat": 4, "nbformat_minor": 5}))


def test_minutes_in_start_order(tmp_path):
    _notebook(tmp_path / "02_b.ipynb", "2026-11-30T14:38:10.2+00:00", 2949.0)
    _notebook(tmp_path / "01_a.ipynb", "2026-11-30T14:37:50.0+00:00", 18.0)
    table = stage_minutes.stage_minutes(tmp_path)
    assert list(table.notebook) == ["01_a", "02_b"]
    assert list(table.minutes) == [0.3, 49.1]
    assert table.start[0] == "2026-11-30 14:37:50"


def test_a_notebook_without_duration_is_named(tmp_path):
    _notebook(tmp_path / "03_c.ipynb", "", None)
    with pytest.raises(ValueError, match="03_c.ipynb: no papermill duration"):
        stage_minutes.stage_minutes(tmp_path)
    with pytest.raises(FileNotFoundError, match="no executed notebooks"):
        stage_minutes.stage_minutes(tmp_path / "empty")


def test_a_reused_stage_keeps_the_minutes_of_the_run_that_trained(tmp_path):
    import pandas as pd

    _notebook(tmp_path / "01_a.ipynb", "2026-11-30T14:37:50.0+00:00", 18.0)
    _notebook(tmp_path / "09_s.ipynb", "2026-11-30T20:00:00.0+00:00", 180.0)  # rerun on finished checkpoints
    previous = pd.DataFrame(dict(notebook=["09_s"], start=["2026-11-30 18:16:34"], minutes=[26.9]))
    table = stage_minutes.keep_trained(stage_minutes.stage_minutes(tmp_path), previous, ["09_s"])
    row = table.set_index("notebook").loc["09_s"]
    assert row.minutes == 26.9 and row.start == "2026-11-30 18:16:34" and row.rerun_minutes == 3.0
    with pytest.raises(ValueError, match="--reused 10_x: no executed notebook"):
        stage_minutes.keep_trained(stage_minutes.stage_minutes(tmp_path), previous, ["10_x"])
    with pytest.raises(ValueError, match="--reused 01_a: the previous table has no row"):
        stage_minutes.keep_trained(stage_minutes.stage_minutes(tmp_path), previous, ["01_a"])
