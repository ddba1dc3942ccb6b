"""Minutes per pipeline stage, read from the executed notebooks that `dvc repro` leaves in results/notebooks/.

papermill records each run's start, end and duration in the notebook's metadata; this script tabulates them (one
row per stage, in start order) with their sum, and writes results/bench/stage_minutes.{csv,md}:

    python benchmarks/stage_minutes.py [--notebooks results/notebooks] [--out results/bench/stage_minutes]

A stage that DVC did not rerun keeps the notebook (and the minutes) of the run that last produced it: the start
times say which run each row comes from.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from tokenset.report import write_table


def stage_minutes(folder: Path) -> pd.DataFrame:
    """One row per executed notebook in ``folder``: notebook, start (UTC), minutes; sorted by start."""
    rows = []
    for path in sorted(folder.glob("*.ipynb")):
        meta = json.loads(path.read_text()).get("metadata", {}).get("papermill", {})
        if meta.get("duration") is None:
            raise ValueError(f"{path}: no papermill duration in its metadata (not run by papermill, or it failed)")
        rows.append(dict(notebook=path.stem, start=meta.get("start_time", "")[:19].replace("T", " "),
                         minutes=round(float(meta["duration"]) / 60, 1)))
    if not rows:
        raise FileNotFoundError(f"{folder}: no executed notebooks; run `dvc repro` first")
    return pd.DataFrame(rows).sort_values("start", ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notebooks", default="results/notebooks")
    parser.add_argument("--out", default="results/bench/stage_minutes")
    args = parser.parse_args()
    table = stage_minutes(Path(args.notebooks))
    total = float(table["minutes"].sum())
    table = pd.concat([table, pd.DataFrame([dict(notebook="total", start="", minutes=round(total, 1))])],
                      ignore_index=True)
    write_table(table, args.out, note="Minutes per stage of the pipeline (papermill's duration of each executed "
                f"notebook in {args.notebooks}; start in UTC). Written by benchmarks/stage_minutes.py.")
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
