"""Writing results: tables as CSV + Markdown and JSON files, each written atomically, figures of image rows, and
sentences that state a result (``trend_sentence``). Used by the notebooks."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from tokenset import atomic

__all__ = ["write_table", "write_json", "image_rows", "trend_sentence"]


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


def image_rows(rows: dict[str, Any], path: str | Path, title: str = "", dpi: int = 150) -> Path:
    """A figure of labelled image rows: ``rows`` maps a row label to uint8 images (K, 3, H, W), K the same for every
    row; saved as a PNG at ``path`` (atomically)."""
    import matplotlib.pyplot as plt
    import torch
    import torchvision

    labels, images = list(rows), [torch.as_tensor(v) for v in rows.values()]
    if not images or any(x.dtype != torch.uint8 or x.ndim != 4 or x.shape != images[0].shape for x in images):
        raise ValueError(f"rows: expected uint8 (K, 3, H, W) images of one shape per row, got "
                         f"{[(tuple(x.shape), str(x.dtype)) for x in images]}")
    k, h = images[0].shape[0], images[0].shape[-2]
    grid = torchvision.utils.make_grid(torch.cat(images), nrow=k, padding=2, pad_value=255)
    fig, ax = plt.subplots(figsize=(k * 0.8 + 1.6, len(rows) * 0.85 + 0.6))
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    step = h + 2
    ax.set_yticks([2 + step * r + step / 2 for r in range(len(rows))], labels)
    ax.set_xticks([])
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    atomic.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
    plt.close(fig)
    return Path(path)


def trend_sentence(values_by_point: pd.DataFrame, line: Sequence[tuple[int, int]], key: str, var: str,
                   higher_better: bool) -> str:
    """One sentence on how column ``key`` changes along ``line`` of the capacity sweep as ``var`` grows.

    values_by_point: a table indexed by the sweep's points (M, C) (tokens, codebook size), one row per point;
    line: its points along one direction, in increasing ``var`` ('M' or 'C'), the other coordinate fixed (e.g.
    ``SweepConfig.centre_row()`` with ``var='C'``); higher_better: whether a larger ``key`` is the better score.
    The sentence gives the values, whether they rise, fall or are not monotonic, the change from the first to the
    last point (and whether the last is better), and where the best value is (the first one on a tie).
    """
    if var not in ("M", "C"):
        raise ValueError(f"var: expected 'M' or 'C' (the coordinate that grows along the line), got {var!r}")
    if not isinstance(values_by_point, pd.DataFrame) or values_by_point.index.nlevels != 2:
        raise ValueError("values_by_point: expected a DataFrame indexed by (M, C), got "
                         + (f"an index of {values_by_point.index.nlevels} level(s) {list(values_by_point.index.names)}"
                            if isinstance(values_by_point, pd.DataFrame) else type(values_by_point).__name__))
    if key not in values_by_point.columns:
        raise ValueError(f"values_by_point has no column {key!r}: expected one of {list(values_by_point.columns)}")
    points = [tuple(p) for p in line]
    if not points or any(len(p) != 2 for p in points):
        raise ValueError(f"line: expected one or more (M, C) points, got {list(line)!r}")
    missing = [p for p in points if p not in values_by_point.index]
    if missing:
        raise ValueError(f"line: points {missing} are not in values_by_point, which has {list(values_by_point.index)}")
    grows, fixed_at = (0, 1) if var == "M" else (1, 0)
    xs = [p[grows] for p in points]
    if len({p[fixed_at] for p in points}) > 1 or any(b <= a for a, b in zip(xs, xs[1:])):
        raise ValueError(f"line: expected points in increasing {var} with {'C' if var == 'M' else 'M'} fixed, "
                         f"got {points}")
    column = values_by_point[key]
    if not column.index.is_unique:
        raise ValueError("values_by_point: expected one row per (M, C), the index has repeats")
    values = [float(column.loc[p]) for p in points]
    fixed = f"C = {points[0][1]}" if var == "M" else f"M = {points[0][0]}"
    path = " -> ".join(f"{v:.2f} ({var}={x})" for v, x in zip(values, xs))
    if len(values) < 2:
        return f"{key} at {fixed}: {path} (one point, no trend)."
    steps = [b - a for a, b in zip(values, values[1:])]
    shape = "rises" if all(s > 0 for s in steps) else "falls" if all(s < 0 for s in steps) else "is not monotonic"
    total = values[-1] - values[0]
    better = (total > 0) == higher_better and total != 0
    best = xs[values.index(max(values) if higher_better else min(values))]
    return (f"{key} at {fixed} {shape} with {var}: {path}; {total:+.2f} from {var}={xs[0]} to {var}={xs[-1]} "
            f"({'better' if better else 'not better'} at the largest {var}); best at {var}={best}.")
