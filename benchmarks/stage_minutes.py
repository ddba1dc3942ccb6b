"""Minutes per pipeline stage, read from the executed notebooks that `dvc repro` leaves in results/notebooks/.

papermill records each run's start, end and duration in the notebook's metadata; this script tabulates them (one
row per stage, in start order) with their sum, and writes results/bench/stage_minutes.{csv,md}:

    python benchmarks/stage_minutes.py [--notebooks results/notebooks] [--out results/bench/stage_minutes]
                                       [--reused NOTEBOOK ...]

A stage that DVC did not rerun keeps the notebook (and the minutes) of the run that last produced it: the start
times say which run each row comes from. A stage rerun on finished training checkpoints (its training reused, only
its scoring rerun) is named with --reused: its row keeps the minutes and start of the run that trained, read from
the previous table (--out's .csv), and notes the rerun's minutes, so the total stays what `make repro` costs.
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


def keep_trained(table: pd.DataFrame, previous: pd.DataFrame, reused: list[str]) -> pd.DataFrame:
    """``table`` with the rows of the ``reused`` notebooks replaced by their rows in ``previous`` (the run that
    trained); a column ``rerun_minutes`` holds the rerun's own minutes for them (empty otherwise)."""
    table = table.assign(rerun_minutes=pd.NA)
    for name in reused:
        if name not in set(table.notebook):
            raise ValueError(f"--reused {name}: no executed notebook of that name")
        before = previous[previous.notebook == name]
        if before.empty:
            raise ValueError(f"--reused {name}: the previous table has no row for it (no run that trained)")
        i = table.index[table.notebook == name][0]
        rerun = table.at[i, "minutes"]
        table.loc[i, ["start", "minutes"]] = [before.start.iloc[0], float(before.minutes.iloc[0])]
        table.at[i, "rerun_minutes"] = rerun
    return table.sort_values("start", ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notebooks", default="results/notebooks")
    parser.add_argument("--out", default="results/bench/stage_minutes")
    parser.add_argument("--reused", nargs="*", default=[],
                        help="notebooks rerun on finished checkpoints: keep the minutes of the run that trained")
    args = parser.parse_args()
    table = stage_minutes(Path(args.notebooks))
    note = ""
    if args.reused:
        table = keep_trained(table, pd.read_csv(f"{args.out}.csv", dtype={"start": str}), args.reused)
        note = (f" Rows of {', '.join(args.reused)}: the run that trained; rerun_minutes is their last rerun, which "
                "reused the finished training checkpoints.")
    total = float(table["minutes"].sum())
    table = pd.concat([table, pd.DataFrame([dict(notebook="total", start="", minutes=round(total, 1))])],
                      ignore_index=True)
    write_table(table, args.out, note="Minutes per stage of the pipeline (papermill's duration of each executed "
                f"notebook in {args.notebooks}; start in UTC). Written by benchmarks/stage_minutes.py." + note)
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
