"""Writing results: tables as CSV + Markdown and JSON files, each written atomically. Used by the notebooks."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from tokenset import atomic

__all__ = ["write_table", "write_json"]


def write_table(df: pd.DataFrame, stem: str | Path, floatfmt: str = ".4g", note: str = "") -> tuple[Path, Path]:
    """Write ``df`` to ``<stem>.csv`` and ``<stem>.md`` (a GitHub table, preceded by ``note`` if given)."""
    stem = Path(stem)
    csv, md = stem.with_suffix(".csv"), stem.with_suffix(".md")
    atomic.write_text(csv, df.to_csv(index=False))
    text = df.to_markdown(index=False, floatfmt=floatfmt)
    atomic.write_text(md, (note.strip() + "\n\n" if note else "") + text + "\n")
    return csv, md


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)  # JSON has no inf/nan
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return _plain(obj.item())
    return obj


def write_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as indented JSON (numpy/torch scalars converted, inf/nan as strings)."""
    return atomic.write_text(path, json.dumps(_plain(obj), indent=1) + "\n")
