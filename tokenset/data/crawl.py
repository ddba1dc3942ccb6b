"""The crawl tiles: the sprite sheets of the Debian package crawl-tiles-data (Dungeon Crawl Stone Soup, CC0), cut
on the 32 px grid (see the ``tokenset.data`` docstring for what is dropped and why atlases are refused).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tokenset.config import DataConfig
from tokenset.data.prepared import DataError, stratified_split
from tokenset.data.transforms import composite_on_black

__all__ = ["TILE", "GRID_MIN_ALIGNMENT", "CRAWL_PACKAGE", "CRAWL_TILES_DIR", "grid_alignment", "slice_sheet",
           "tiles_from_sheets", "read_crawl_sheets", "crawl_arrays"]

TILE = 32  # crawl's tile size in pixels


GRID_MIN_ALIGNMENT = 1.3  # grid_alignment() below this: the sheet is not on the tile grid


CRAWL_PACKAGE = "crawl-tiles-data"


CRAWL_TILES_DIR = "usr/share/crawl/dat/tiles"


def grid_alignment(rgba: np.ndarray, tile: int = TILE) -> float:
    """How clearly a sprite sheet (H, W, 4) uint8 is cut into ``tile`` px cells: the mean colour jump across the
    grid lines divided by the mean jump across the lines half a tile away, the smaller of the two axes. Grid
    sheets score well above 1 (crawl's floor 1.7, wall 2.3); packed atlases about 1 (main 0.9, player 1.0).
    Fewer than two cells along an axis -> 0 (cannot tell)."""
    rows, cols = rgba.shape[0] // tile, rgba.shape[1] // tile
    if rows < 2 or cols < 2:
        return 0.0
    rgb = composite_on_black(rgba[: rows * tile, : cols * tile]).astype(np.float32)
    ratios = []
    for axis in (0, 1):
        n = rgb.shape[axis]
        on = np.arange(tile, n, tile)
        off = np.arange(tile // 2, n, tile)
        jump = lambda idx: np.abs(np.take(rgb, idx, axis) - np.take(rgb, idx - 1, axis)).mean()  # noqa: E731
        ratios.append((jump(on) + 1e-3) / (jump(off) + 1e-3))
    return float(min(ratios))


def slice_sheet(rgba: np.ndarray, tile: int = TILE) -> tuple[np.ndarray, np.ndarray]:
    """Cut (H, W, 4) on the ``tile`` grid -> cells (rows * cols, tile, tile, 4) and their cell indices
    (row * cols + col), row-major; a partial last row or column is left out."""
    rows, cols = rgba.shape[0] // tile, rgba.shape[1] // tile
    cells = rgba[: rows * tile, : cols * tile].reshape(rows, tile, cols, tile, rgba.shape[2])
    return cells.transpose(0, 2, 1, 3, 4).reshape(rows * cols, tile, tile, rgba.shape[2]), np.arange(rows * cols)


def tiles_from_sheets(sheets: Sequence[tuple[str, np.ndarray]], tile: int = TILE) -> dict[str, Any]:
    """Sprite sheets [(class name, (H, W, 4) uint8)] -> the tile data set, before the split.

    Each sheet is cut on the grid; cells fully transparent (``transparent``) or of a single colour after
    compositing on black (``constant``) are dropped; duplicates of an earlier kept tile, in any sheet, are dropped
    (``duplicate``). Returns images (N, tile, tile, 3) uint8, labels (N,) int64, origin (N,) int64, class_names,
    and ``dropped``: {class: {"cells", "transparent", "constant", "duplicate", "kept"}}.
    """
    images, labels, origins, dropped = [], [], [], {}
    seen: set[bytes] = set()
    for label, (name, rgba) in enumerate(sheets):
        if rgba.ndim != 3 or rgba.shape[2] != 4 or rgba.dtype != np.uint8:
            raise ValueError(f"sheet {name!r}: expected (H, W, 4) uint8 RGBA, got {rgba.shape} {rgba.dtype}")
        cells, index = slice_sheet(rgba, tile)
        transparent = (cells[..., 3] == 0).all(axis=(1, 2))
        rgb = composite_on_black(cells)
        flat = rgb.reshape(len(rgb), -1)
        constant = ~transparent & (rgb == rgb[:, :1, :1, :]).all(axis=(1, 2, 3))
        counts = {"cells": len(cells), "transparent": int(transparent.sum()), "constant": int(constant.sum()),
                  "duplicate": 0}
        for i in np.flatnonzero(~transparent & ~constant):
            key = flat[i].tobytes()
            if key in seen:
                counts["duplicate"] += 1
                continue
            seen.add(key)
            images.append(rgb[i])
            labels.append(label)
            origins.append(index[i])
        counts["kept"] = counts["cells"] - counts["transparent"] - counts["constant"] - counts["duplicate"]
        dropped[name] = counts
    return {
        "images": np.stack(images) if images else np.zeros((0, tile, tile, 3), np.uint8),
        "labels": np.asarray(labels, np.int64),
        "origin": np.asarray(origins, np.int64),
        "class_names": [name for name, _ in sheets],
        "dropped": dropped,
    }


def read_crawl_sheets(tiles_dir: Path, names: Sequence[str], tile: int = TILE) -> list[tuple[str, np.ndarray]]:
    """Load the named sheets from ``tiles_dir`` as RGBA, refusing any that is not on the ``tile`` grid."""
    out = []
    for name in names:
        path = tiles_dir / f"{name}.png"
        if not path.is_file():
            available = sorted(p.stem for p in tiles_dir.glob("*.png") if not p.stem.startswith("title_"))
            raise DataError(f"no sprite sheet {path}; sheets in this package: {available}")
        with Image.open(path) as im:
            rgba = np.asarray(im.convert("RGBA"))
        score = grid_alignment(rgba, tile)
        if not score >= GRID_MIN_ALIGNMENT:
            raise DataError(
                f"sheet {name!r} ({path}) is not on a {tile} px grid (alignment {score:.2f} < "
                f"{GRID_MIN_ALIGNMENT}): its sprites are trimmed and packed edge to edge, so grid cells would cut "
                f"them. Remove it from data.crawl_sheets (grid sheets in crawl 0.28: floor, wall).")
        out.append((name, rgba))
    return out


def crawl_arrays(cfg: DataConfig, tree: Path, deb_name: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The npz arrays (images, labels, split, origin, class_names) and drop counts of ``cfg.crawl_sheets`` read
    from an unpacked crawl-tiles-data ``tree``; the split is stratified per class (``cfg.val_fraction``, seed)."""
    tiles = tiles_from_sheets(read_crawl_sheets(tree / CRAWL_TILES_DIR, cfg.crawl_sheets))
    if len(tiles["labels"]) == 0:
        raise DataError(f"no non-empty tiles in sheets {list(cfg.crawl_sheets)} of {deb_name}")
    arrays = {"images": tiles["images"], "labels": tiles["labels"],
              "split": stratified_split(tiles["labels"], cfg.val_fraction, cfg.seed),
              "origin": tiles["origin"], "class_names": np.asarray(tiles["class_names"])}
    return arrays, tiles["dropped"]
