"""Writing results: tables as CSV + Markdown and JSON files, each written atomically. Used by the notebooks."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from tokenset import atomic

__all__ = ["write_table", "write_json", "image_rows"]


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
