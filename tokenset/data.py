"""Images and labels: three sources behind one API.

    prepare(cfg) -> Path                              fetch + slice/parse + split, cached under <root>/prepared/
    load_dataset(cfg, split, as_float, flip)          torch Dataset of (image (3, S, S), label: int)
    load_arrays(cfg, split) -> (images, labels)       in-memory fast path: (N, 3, S, S) uint8, (N,) int64
    class_names(cfg) -> list[str]
    make_loader(dataset, batch_size, shuffle, seed, ...) -> DataLoader (DistributedSampler when distributed)
    to_float / to_uint8                               uint8 [0, 255] <-> float [-1, 1] (from tokenset.images)

Sources (``DataConfig.name``):

* ``crawl`` (default): the sprite sheets of the Debian package crawl-tiles-data (Dungeon Crawl Stone Soup tiles,
  CC0). ``apt-get download`` (no root needed) into ``<root>/raw/crawl-tiles-data/``, unpacked with ``dpkg-deb -x``
  (or a pure-Python reader of the .deb when dpkg-deb is absent). Each sheet in ``cfg.crawl_sheets`` is cut on the
  32 px grid; cells that are fully transparent or of one colour are dropped, alpha is composited on black, the
  tile is labelled by its sheet, and exact duplicates (after compositing) are dropped, keeping the first.
  Only ``floor`` and ``wall`` are on a 32 px grid: ``main``, ``player``, ``feat``, ``gui`` and ``icons`` are atlases
  in which crawl's tile packer trimmed every sprite to its bounding box and packed them edge to edge, so 32 px
  cells cut through sprites (in 0.28 at most 10 of the 600-2080 cells of those sheets hold whole sprites).
  ``grid_alignment`` measures this and ``prepare`` refuses such sheets; title_*, logo* and stone_soup_icon* are
  artwork, not tiles. The split is stratified per class and deterministic in ``cfg.seed``.
* ``fashion``: Debian dataset-fashion-mnist (70k 28x28 greyscale, 10 classes), parsed from its IDX files; grey is
  repeated to 3 channels; the official train/test split is our train/val (``val_fraction`` is not used).
* ``imagefolder``: ``<root>/train/<class>/*.{jpg,png,...}`` and, if present, ``<root>/val/<class>/*`` (else
  ``val_fraction`` of each class is held out). Images are loaded lazily, converted to RGB (below) and centre
  cropped as in ADM (``adm_center_crop``). ``prepare`` decodes every file once, in parallel, and caches an index
  at ``<root>/prepared/imagefolder.json`` keyed by the files' names, sizes and mtimes.

Prepared file ``<root>/prepared/<name>.npz`` (crawl, fashion; written deterministically, loads with
``allow_pickle=False``), with its manifest ``<name>.json`` (counts per class and split, what was dropped, sha256
of the npz and of the source .deb, the parameters the split used)::

    images       (N, H, W, 3) uint8   RGB at the source's native size (crawl 32x32, fashion 28x28)
    labels       (N,) int64           index into class_names
    split        (N,) uint8           0 = train, 1 = val
    origin       (N,) int64           crawl: cell index row * cols + col within its sheet; fashion: index in its file
    class_names  (K,) str

Conversions (never silent): sizes are fitted to ``cfg.image_size`` when loading: fashion is centre padded with
black when ``image_size >= 28`` (32 -> 2 px each side) and resized otherwise; crawl is resized when
``image_size != 32``; resizing is antialiased bilinear (``fit_size``). ImageFolder files: greyscale and palette
become RGB (grey repeated), alpha (RGBA, LA, palette transparency) is composited on black, 16-bit greyscale is
scaled by 1/257, CMYK/YCbCr are converted by PIL; any other mode is a bad file; non-square images are centre
cropped. EXIF orientation is not applied (as in ADM).

Errors: ``DataError`` (a RuntimeError) for anything about the data itself: apt-get missing or the package not
available (the message says how to provide the data, or to point ``data.root`` at an ImageFolder), unreadable or
truncated files (listed; with ``cfg.skip_bad_files=True`` they are skipped and a ``UserWarning`` gives the count),
directories without images, an IDX file of the wrong length.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import os
import shutil
import struct
import subprocess
import tarfile
import warnings
import zipfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from tokenset import atomic
from tokenset.config import DataConfig
from tokenset.images import to_float, to_uint8  # re-exported: data.to_float / data.to_uint8

Split = Literal["train", "val"]
SPLITS: tuple[str, str] = ("train", "val")  # the values 0 and 1 of the npz's ``split`` array
FORMAT_VERSION = 1
TILE = 32  # crawl's tile size in pixels
GRID_MIN_ALIGNMENT = 1.3  # grid_alignment() below this: the sheet is not on the tile grid
CRAWL_PACKAGE = "crawl-tiles-data"
CRAWL_TILES_DIR = "usr/share/crawl/dat/tiles"
FASHION_PACKAGE = "dataset-fashion-mnist"
FASHION_DIR = "usr/share/datasets/fashion-mnist"
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
_MAX_LISTED = 50  # bad files named in an error message; the count is always exact


class DataError(ValueError, RuntimeError):
    """The data cannot be provided or read as asked; the message says what was found and what to do.

    A ValueError (bad input: a missing, empty or unreadable data source), and still a RuntimeError as before."""


# ----------------------------------------------------------------------------------------- conversions


def fit_size(images: torch.Tensor, size: int, how: Literal["pad", "resize"]) -> torch.Tensor:
    """(N, 3, h, w) uint8 -> (N, 3, size, size) uint8.

    ``pad``: centre on a black canvas (needs h, w <= size); ``resize``: antialiased bilinear to size x size
    (needs h == w: non-square inputs are an error here, crop them first).
    """
    n, c, h, w = images.shape
    if (h, w) == (size, size):
        return images
    if how == "pad":
        if h > size or w > size:
            raise ValueError(f"cannot pad {h}x{w} images to {size}x{size}; resize instead")
        top, left = (size - h) // 2, (size - w) // 2
        out = images.new_zeros((n, c, size, size))
        out[:, :, top:top + h, left:left + w] = images
        return out
    if h != w:
        raise ValueError(f"resize expects square images, got {h}x{w}")
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)


def random_hflip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each image of (B, C, H, W) left-right with probability 1/2 (``generator`` lives on the CPU)."""
    flip = torch.rand(images.shape[0], generator=generator) < 0.5
    flip = flip.to(images.device).view(-1, *([1] * (images.dim() - 1)))
    return torch.where(flip, images.flip(-1), images)


def composite_on_black(rgba: np.ndarray) -> np.ndarray:
    """(..., 4) uint8 RGBA -> (..., 3) uint8 RGB, i.e. round(rgb * alpha / 255)."""
    rgb = rgba[..., :3].astype(np.uint32)
    alpha = rgba[..., 3:4].astype(np.uint32)
    return ((rgb * alpha + 127) // 255).astype(np.uint8)


def adm_center_crop(image: Image.Image, size: int) -> np.ndarray:
    """ADM's centre crop (guided-diffusion ``center_crop_arr``): PIL RGB image -> (size, size, 3) uint8.

    Halve with a BOX filter while the short side is >= 2 * size, resize with BICUBIC so that the short side is
    ``size``, then crop the centre.
    """
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.BICUBIC)
    arr = np.asarray(image)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top:top + size, left:left + size]


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image -> mode RGB, as documented in the module docstring (alpha composited on black)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        return Image.fromarray(composite_on_black(np.asarray(image.convert("RGBA"))), "RGB")
    if mode.startswith("I;16") or mode == "I":
        grey = np.asarray(image, dtype=np.float64)
        grey = np.clip(np.round(grey / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[..., None], 3, axis=-1), "RGB")
    if mode in ("1", "L", "P", "CMYK", "YCbCr"):
        return image.convert("RGB")
    raise ValueError(f"unsupported image mode {mode!r}")


# ----------------------------------------------------------------------------------------- Debian packages


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=1800,
                              env={**os.environ, "LC_ALL": "C"})
    except (OSError, subprocess.TimeoutExpired) as err:
        raise DataError(f"could not run {' '.join(cmd)}: {err}") from err


def _how_to_provide(package: str, dest: Path, reason: str) -> str:
    return (
        f"cannot fetch the Debian package {package!r}: {reason}.\n"
        f"To provide the data, either\n"
        f"  * on Debian/Ubuntu: run `sudo apt-get update` once, then retry (we run `apt-get download {package}`, "
        f"which needs no root);\n"
        f"  * or copy {package}_*.deb (from `apt-get download {package}` on any Debian machine, or "
        f"https://packages.debian.org/{package}) into {dest}/ and retry;\n"
        f"  * or use your own images: set data.name: imagefolder and data.root: a folder laid out as "
        f"<root>/train/<class>/*.jpg (see tokenset/data.py)."
    )


def _lists_lack(stderr: str) -> bool:
    """Whether apt-get failed because its package lists do not know the package (empty or stale lists)."""
    signs = ("Unable to locate package", "has no installation candidate", "Can't select candidate version",
             "No packages found")
    return any(s in stderr for s in signs)


def fetch_deb(package: str, dest: Path) -> Path:
    """The path of ``dest/<package>_*.deb``, downloading it with ``apt-get download`` if it is not there.

    On empty or stale apt lists we run ``apt-get update`` first when we are root, else raise a DataError that says
    what to run. apt-get missing or the package unavailable -> DataError saying how to provide the data.
    """
    dest.mkdir(parents=True, exist_ok=True)
    found = sorted(dest.glob(f"{package}_*.deb"))
    if len(found) > 1:
        raise DataError(f"several {package} packages in {dest}: {[p.name for p in found]}; keep one")
    if found:
        return found[0]
    apt = shutil.which("apt-get")
    if apt is None:
        raise DataError(_how_to_provide(package, dest, "apt-get is not on PATH (not a Debian-like system?)"))
    result = _run([apt, "download", package], cwd=dest)
    if result.returncode != 0 and _lists_lack(result.stderr):
        if not _is_root():
            raise DataError(_how_to_provide(
                package, dest, f"apt's package lists do not know it (empty or stale lists; `apt-get update` needs "
                f"root, which we are not): {result.stderr.strip()}"))
        update = _run([apt, "update"])
        if update.returncode != 0:
            raise DataError(_how_to_provide(package, dest, f"`apt-get update` failed: {update.stderr.strip()}"))
        result = _run([apt, "download", package], cwd=dest)
    if result.returncode != 0:
        raise DataError(_how_to_provide(package, dest, f"`apt-get download` failed: {result.stderr.strip()}"))
    found = sorted(dest.glob(f"{package}_*.deb"))
    if len(found) != 1:
        raise DataError(f"`apt-get download {package}` succeeded but left {len(found)} .deb files in {dest}")
    return found[0]


def extract_deb(deb: Path, tree: Path) -> Path:
    """Unpack the files of ``deb`` into ``tree`` (``dpkg-deb -x``; a Python reader of the ar/tar format without
    dpkg-deb). Skipped when ``tree/.source-sha256`` records this deb's checksum. Returns ``tree``."""
    digest = atomic.sha256_file(deb)
    stamp = tree / ".source-sha256"
    if stamp.is_file() and stamp.read_text().strip() == digest:
        return tree
    if tree.exists():
        shutil.rmtree(tree)
    tree.mkdir(parents=True)
    dpkg = shutil.which("dpkg-deb")
    if dpkg is not None:
        result = _run([dpkg, "-x", str(deb), str(tree)])
        if result.returncode != 0:
            raise DataError(f"{deb}: dpkg-deb -x failed (corrupt download? delete it and retry): "
                            f"{result.stderr.strip()}")
    else:
        _extract_deb_python(deb, tree)
    atomic.write_text(stamp, digest + "\n")
    return tree


def _extract_deb_python(deb: Path, tree: Path) -> None:
    """A .deb is an ar archive; its member data.tar[.xz|.gz|.bz2] holds the files."""
    modes = {"data.tar": "r:", "data.tar.xz": "r:xz", "data.tar.gz": "r:gz", "data.tar.bz2": "r:bz2"}
    with deb.open("rb") as fh:
        if fh.read(8) != b"!<arch>\n":
            raise DataError(f"{deb} is not a Debian package (no ar header); delete it and retry")
        while len(header := fh.read(60)) == 60:
            name = header[:16].decode("ascii", "replace").strip().rstrip("/")
            size = int(header[48:58].decode("ascii").strip())
            payload = fh.read(size)
            fh.read(size % 2)
            if name.startswith("data.tar"):
                if name not in modes:
                    raise DataError(f"{deb}: member {name} needs dpkg-deb to unpack (apt-get install dpkg)")
                try:
                    with tarfile.open(fileobj=io.BytesIO(payload), mode=modes[name]) as tar:
                        tar.extractall(tree, filter="data")
                except (tarfile.TarError, OSError, EOFError) as err:
                    raise DataError(f"{deb}: cannot unpack {name} ({err}); delete the file and retry") from err
                return
    raise DataError(f"{deb}: no data.tar member found; delete the file and retry")


def _deb_version(deb: Path) -> str:
    """The Version field of the package (from its file name, ``<name>_<version>_<arch>.deb``)."""
    parts = deb.stem.split("_")
    return parts[1].replace("%3a", ":") if len(parts) == 3 else "unknown"


# ----------------------------------------------------------------------------------------- crawl tiles


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


# ----------------------------------------------------------------------------------------- splits, IDX


def _n_val(n: int, val_fraction: float) -> int:
    """Held-out count of a class of n: round(val_fraction * n), at least 1 and at most n - 1 (for n >= 2)."""
    if val_fraction <= 0 or n < 2:
        return 0
    return min(n - 1, max(1, round(val_fraction * n)))


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """labels (N,) int -> split (N,) uint8, 0 = train, 1 = val: ``_n_val`` random members of each class held out.

    Each class draws from its own generator seeded by (seed, class), so a class's split depends only on its own
    members, the seed and the fraction.
    """
    labels = np.asarray(labels)
    split = np.zeros(len(labels), np.uint8)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rng = np.random.default_rng([seed, int(c)])
        split[rng.permutation(members)[: _n_val(len(members), val_fraction)]] = 1
    return split


_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format; gzip if the name ends in .gz) -> array of its shape and type.

    Layout: 2 zero bytes, a type code, the number of dimensions d, d big-endian uint32 sizes, then the data.
    """
    path = Path(path)
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")) as fh:
            raw = fh.read()
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: cannot read IDX file ({err})") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(f"{path}: not an IDX file (magic bytes {raw[:4].hex()})")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4: 4 + 4 * ndim])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    data = raw[4 + 4 * ndim:]
    expected = math.prod(dims) * dtype.itemsize
    if len(data) != expected:
        raise DataError(f"{path}: shape {dims} needs {expected} bytes of data, found {len(data)}")
    return np.frombuffer(data, dtype).reshape(dims).astype(dtype.newbyteorder("="))


# ----------------------------------------------------------------------------------------- prepared files


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed, but byte-for-byte reproducible (fixed zip timestamps), written atomically."""
    def write(out: Any) -> None:
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for key, arr in arrays.items():
                info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                with zf.open(info, "w", force_zip64=True) as fh:
                    np.lib.format.write_array(fh, np.ascontiguousarray(arr), allow_pickle=False)

    atomic.atomic_write(path, write)


def _write_json(path: Path, doc: dict) -> None:
    atomic.write_text(path, json.dumps(doc, indent=1, sort_keys=False) + "\n")


def _paths(cfg: DataConfig) -> tuple[Path, Path]:
    prepared = Path(cfg.root) / "prepared"
    return prepared / f"{cfg.name}.npz", prepared / f"{cfg.name}.json"


def _split_params(cfg: DataConfig) -> dict[str, Any]:
    """What a prepared file depends on: config values and, for the npz files, this module's code (an edit
    re-prepares from the cached raw files in seconds; an ImageFolder index is not redone for code edits)."""
    if cfg.name == "imagefolder":
        return {"val_fraction": cfg.val_fraction, "seed": cfg.seed, "skip_bad_files": cfg.skip_bad_files}
    code = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    if cfg.name == "crawl":
        return {"sheets": list(cfg.crawl_sheets), "val_fraction": cfg.val_fraction, "seed": cfg.seed, "code": code}
    return {"split": "official train/test", "code": code}


def _manifest(cfg: DataConfig, npz: Path, arrays: dict[str, np.ndarray], source: dict, dropped: dict) -> dict:
    names = [str(n) for n in arrays["class_names"]]
    counts = {}
    for s, split_name in enumerate(SPLITS):
        sel = arrays["labels"][arrays["split"] == s]
        counts[split_name] = {n: int((sel == k).sum()) for k, n in enumerate(names)}
    counts["total"] = {n: counts["train"][n] + counts["val"][n] for n in names}
    return {
        "name": cfg.name, "format_version": FORMAT_VERSION, "params": _split_params(cfg),
        "image_shape": list(arrays["images"].shape[1:]), "class_names": names,
        "n_total": int(len(arrays["labels"])), "n_train": int((arrays["split"] == 0).sum()),
        "n_val": int((arrays["split"] == 1).sum()), "counts": counts, "dropped": dropped, "source": source,
        "npz": npz.name, "npz_sha256": atomic.sha256_file(npz),
    }


def _cache_valid(cfg: DataConfig) -> bool:
    npz, manifest = _paths(cfg)
    if not (npz.is_file() and manifest.is_file()):
        return False
    try:
        doc = json.loads(manifest.read_text())
    except json.JSONDecodeError:
        return False
    return (doc.get("format_version") == FORMAT_VERSION and doc.get("params") == _split_params(cfg)
            and doc.get("npz_sha256") == atomic.sha256_file(npz))


def prepare(cfg: DataConfig, force: bool = False) -> Path:
    """Fetch and prepare ``cfg``'s data set; returns the npz (crawl, fashion) or the index JSON (imagefolder).

    A no-op when the prepared file exists, its checksum matches the manifest and it was made with the same
    parameters; raw downloads in ``<root>/raw/`` are reused, so apt is needed only once.
    """
    if cfg.name == "imagefolder":
        _INDEX_MEMO.clear()
        return _prepare_imagefolder(cfg, force)
    npz, manifest = _paths(cfg)
    if not force and _cache_valid(cfg):
        return npz
    raw = Path(cfg.root) / "raw"
    package = CRAWL_PACKAGE if cfg.name == "crawl" else FASHION_PACKAGE
    deb = fetch_deb(package, raw / package)
    tree = extract_deb(deb, raw / package / "tree")
    source = {"package": package, "version": _deb_version(deb), "deb": deb.name, "deb_sha256": atomic.sha256_file(deb)}
    if cfg.name == "crawl":
        tiles = tiles_from_sheets(read_crawl_sheets(tree / CRAWL_TILES_DIR, cfg.crawl_sheets))
        if len(tiles["labels"]) == 0:
            raise DataError(f"no non-empty tiles in sheets {list(cfg.crawl_sheets)} of {deb}")
        arrays = {"images": tiles["images"], "labels": tiles["labels"],
                  "split": stratified_split(tiles["labels"], cfg.val_fraction, cfg.seed),
                  "origin": tiles["origin"], "class_names": np.asarray(tiles["class_names"])}
        dropped = tiles["dropped"]
    else:
        arrays, dropped = _fashion_arrays(tree / FASHION_DIR), {}
    npz.parent.mkdir(parents=True, exist_ok=True)
    _save_npz(npz, arrays)
    _write_json(manifest, _manifest(cfg, npz, arrays, source, dropped))
    return npz


def _fashion_arrays(folder: Path) -> dict[str, np.ndarray]:
    parts = []
    for s, prefix in enumerate(("train", "t10k")):
        images = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
        if images.ndim != 3 or images.dtype != np.uint8 or labels.shape != images.shape[:1]:
            raise DataError(f"{folder}: {prefix} images {images.shape} {images.dtype} and labels {labels.shape} "
                            f"do not match (expected (N, 28, 28) uint8 and (N,))")
        if labels.min() < 0 or labels.max() >= len(FASHION_CLASSES):
            raise DataError(f"{folder}: {prefix} labels outside [0, {len(FASHION_CLASSES)})")
        parts.append((images, labels, np.full(len(labels), s, np.uint8), np.arange(len(labels), dtype=np.int64)))
    return {
        "images": np.repeat(np.concatenate([p[0] for p in parts])[..., None], 3, axis=-1),  # (N, 28, 28, 3)
        "labels": np.concatenate([p[1] for p in parts]),
        "split": np.concatenate([p[2] for p in parts]),
        "origin": np.concatenate([p[3] for p in parts]),
        "class_names": np.asarray(FASHION_CLASSES),
    }


def _load_npz(cfg: DataConfig) -> dict[str, np.ndarray]:
    npz = prepare(cfg)
    with np.load(npz, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


# ----------------------------------------------------------------------------------------- ImageFolder


def _scan(folder: Path, classes: Sequence[str] | None) -> tuple[list[str], list[tuple[str, int, int, int]]]:
    """ImageFolder ``folder/<class>/<files>`` -> (class names, [(relative path, label, size, mtime_ns)])."""
    if not folder.is_dir():
        raise DataError(f"{folder} does not exist; an ImageFolder needs <root>/train/<class>/<images> "
                        f"(and optionally <root>/val/<class>/<images>)")
    found = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not found:
        raise DataError(f"{folder} has no class folders; expected {folder}/<class>/<images>")
    if classes is None:
        classes = found
    elif unknown := sorted(set(found) - set(classes)):
        raise DataError(f"{folder} has classes not in train/: {unknown[:_MAX_LISTED]}")
    entries, empty = [], []
    for label, name in enumerate(classes):
        if not (folder / name).is_dir():
            continue
        files = sorted((e for e in os.scandir(folder / name)
                        if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS),
                       key=lambda e: e.name)
        if not files:
            empty.append(name)
        for e in files:
            st = e.stat()
            entries.append((f"{folder.name}/{name}/{e.name}", label, st.st_size, st.st_mtime_ns))
    if empty:
        raise DataError(f"{len(empty)} class folder(s) under {folder} hold no images (extensions "
                        f"{sorted(IMAGE_EXTENSIONS)}): {empty[:_MAX_LISTED]}")
    return list(classes), entries


def _check_image(path: str) -> str | None:
    """None if ``path`` decodes fully and converts to RGB, else the reason it does not."""
    try:
        with Image.open(path) as im:
            im.load()
            to_rgb(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, struct.error) as err:
        return f"{type(err).__name__}: {err}"
    return None


def check_images(paths: Sequence[str], workers: int | None = None) -> list[tuple[str, str]]:
    """Decode every file (in ``workers`` processes for long lists) -> [(path, reason)] for those that fail."""
    workers = workers or min(16, os.cpu_count() or 1)
    if len(paths) < 512 or workers == 1:
        reasons = [_check_image(p) for p in paths]
    else:
        with ProcessPoolExecutor(workers) as pool:
            reasons = list(pool.map(_check_image, paths, chunksize=256))
    return [(p, r) for p, r in zip(paths, reasons) if r is not None]


def _report_bad(bad: Sequence[tuple[str, str]], skip: bool, where: Path) -> None:
    if not bad:
        return
    if skip:
        warnings.warn(f"skipped {len(bad)} unreadable image file(s) under {where} (data.skip_bad_files=true); "
                      f"first: {bad[0][0]} ({bad[0][1]})", UserWarning, stacklevel=3)
        return
    listing = "\n".join(f"  {p}: {r}" for p, r in bad[:_MAX_LISTED])
    more = f"\n  ... and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else ""
    raise DataError(f"{len(bad)} unreadable or truncated image file(s) under {where}:\n{listing}{more}\n"
                    f"Fix or remove them, or set data.skip_bad_files: true to skip them.")


def _prepare_imagefolder(cfg: DataConfig, force: bool) -> Path:
    root = Path(cfg.root)
    classes, train = _scan(root / "train", None)
    val = _scan(root / "val", classes)[1] if (root / "val").is_dir() else None
    listing = "\n".join(f"{r}\t{s}\t{m}" for r, _, s, m in train + (val or []))
    fingerprint = hashlib.sha256(listing.encode()).hexdigest()
    index = root / "prepared" / "imagefolder.json"
    if not force and index.is_file():
        doc = json.loads(index.read_text())
        if (doc.get("format_version") == FORMAT_VERSION and doc.get("fingerprint") == fingerprint
                and doc.get("params") == _split_params(cfg)):
            _report_bad(doc["bad"], cfg.skip_bad_files, root)
            return index
    everything = train + (val or [])
    bad = check_images([str(root / r) for r, *_ in everything])
    _report_bad(bad, cfg.skip_bad_files, root)
    bad_set = {p for p, _ in bad}
    keep = lambda rows: [(r, lab) for r, lab, *_ in rows if str(root / r) not in bad_set]  # noqa: E731
    train_rows = keep(train)
    if val is None:
        split = stratified_split(np.asarray([lab for _, lab in train_rows]), cfg.val_fraction, cfg.seed)
        val_rows = [row for row, s in zip(train_rows, split) if s == 1]
        train_rows = [row for row, s in zip(train_rows, split) if s == 0]
    else:
        val_rows = keep(val)
    if not train_rows:
        raise DataError(f"no readable training images under {root / 'train'}")
    doc = {"name": "imagefolder", "format_version": FORMAT_VERSION, "params": _split_params(cfg),
           "fingerprint": fingerprint, "val_source": "val/" if val is not None else "val_fraction of train/",
           "class_names": classes, "n_train": len(train_rows), "n_val": len(val_rows),
           "bad": [[str(Path(p).relative_to(root)), r] for p, r in bad], "train": train_rows, "val": val_rows}
    index.parent.mkdir(parents=True, exist_ok=True)
    _write_json(index, doc)
    return index


_INDEX_MEMO: dict[tuple[str, str], dict] = {}  # (root, params) -> index, so one process scans a folder once


def _imagefolder_index(cfg: DataConfig) -> dict:
    key = (str(Path(cfg.root).resolve()), json.dumps(_split_params(cfg)))
    if key not in _INDEX_MEMO:
        _INDEX_MEMO[key] = json.loads(prepare(cfg).read_text())
    return _INDEX_MEMO[key]


# ----------------------------------------------------------------------------------------- datasets


def _coin(seed: int, epoch: int, index: int) -> bool:
    """A fair coin from (seed, epoch, index) (splitmix64): flips that do not depend on worker processes."""
    mask = (1 << 64) - 1
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xD1B54A32D192ED03 + index * 0xBF58476D1CE4E5B9 + 1) & mask
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
    return bool((x ^ (x >> 31)) >> 63)


class _FlipMixin:
    flip: bool
    flip_seed: int
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        """New random flips for a new epoch (``set_epoch(loader, epoch)`` calls this)."""
        self.epoch = epoch

    def _finish(self, image: torch.Tensor, index: int, as_float: bool) -> torch.Tensor:
        if self.flip and _coin(self.flip_seed, self.epoch, index):
            image = image.flip(-1)
        return to_float(image) if as_float else image


class ArrayDataset(_FlipMixin, Dataset):
    """In-memory images (N, 3, S, S) uint8 and labels (N,) int64 -> (image (3, S, S), label: int)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str],
                 as_float: bool = False, flip: bool = False, flip_seed: int = 0):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W) uint8, got {tuple(images.shape)} {images.dtype}")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"labels {tuple(labels.shape)} do not match {images.shape[0]} images")
        self.images, self.labels, self.class_names = images, labels.long(), list(class_names)
        self.as_float, self.flip, self.flip_seed = as_float, flip, flip_seed

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self._finish(self.images[i], i, self.as_float), int(self.labels[i])


class ImageFolderDataset(_FlipMixin, Dataset):
    """Lazily decoded files -> (image (3, S, S), label: int), converted by ``to_rgb`` and ``adm_center_crop``."""

    def __init__(self, paths: Sequence[str | Path], labels: Sequence[int], class_names: Sequence[str],
                 image_size: int, as_float: bool = False, flip: bool = False, flip_seed: int = 0):
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.paths, self.labels, self.class_names = [str(p) for p in paths], list(labels), list(class_names)
        self.image_size, self.as_float, self.flip, self.flip_seed = image_size, as_float, flip, flip_seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        try:
            with Image.open(self.paths[i]) as im:
                arr = adm_center_crop(to_rgb(im), self.image_size)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise DataError(f"cannot read {self.paths[i]} ({err}); it changed since `prepare` checked it? "
                            f"Run tokenset.data.prepare(cfg, force=True)") from err
        image = torch.from_numpy(np.array(arr)).permute(2, 0, 1).contiguous()
        return self._finish(image, i, self.as_float), self.labels[i]


def _check_split(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return SPLITS.index(split)


def _fit(cfg: DataConfig, images: torch.Tensor) -> torch.Tensor:
    native = images.shape[-1]
    if cfg.name == "fashion" and cfg.image_size >= native:
        return fit_size(images, cfg.image_size, "pad")
    return fit_size(images, cfg.image_size, "resize")


def load_arrays(cfg: DataConfig, split: Split, max_bytes: int = 4 << 30) -> tuple[torch.Tensor, torch.Tensor]:
    """One split in memory: images (N, 3, S, S) uint8 with S = cfg.image_size, labels (N,) int64.

    Prepares the data if needed. For an ImageFolder every file is decoded; more than ``max_bytes`` of pixels is
    refused (use ``load_dataset`` for large folders).
    """
    s = _check_split(split)
    if cfg.name == "imagefolder":
        ds = load_dataset(cfg, split)
        need = len(ds) * 3 * cfg.image_size ** 2
        if need > max_bytes:
            raise DataError(f"{len(ds)} images of {cfg.image_size} px need {need / 2**30:.1f} GiB > max_bytes; "
                            f"use load_dataset() for this ImageFolder")
        if len(ds) == 0:
            return torch.zeros((0, 3, cfg.image_size, cfg.image_size), dtype=torch.uint8), torch.zeros(0, dtype=torch.int64)
        return torch.stack([ds[i][0] for i in range(len(ds))]), torch.as_tensor(ds.labels, dtype=torch.int64)
    images, labels, _ = _npz_split(cfg, s)
    return images, labels


def _npz_split(cfg: DataConfig, s: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    arrays = _load_npz(cfg)
    sel = arrays["split"] == s
    images = torch.from_numpy(np.ascontiguousarray(arrays["images"][sel].transpose(0, 3, 1, 2)))
    names = [str(n) for n in arrays["class_names"]]
    return _fit(cfg, images), torch.from_numpy(arrays["labels"][sel]), names


def load_dataset(cfg: DataConfig, split: Split, as_float: bool = False, flip: bool = False,
                 flip_seed: int | None = None) -> ArrayDataset | ImageFolderDataset:
    """A torch Dataset of (image, label): image (3, S, S) uint8, or float32 in [-1, 1] when ``as_float``;
    label an int. ``flip``: random horizontal flips (training), drawn from (flip_seed (default cfg.seed), epoch,
    index); call ``set_epoch`` for new flips each epoch."""
    s = _check_split(split)
    flip_seed = cfg.seed if flip_seed is None else flip_seed
    if cfg.name == "imagefolder":
        index = _imagefolder_index(cfg)
        rows = index[SPLITS[s]]
        root = Path(cfg.root)
        return ImageFolderDataset([root / r for r, _ in rows], [lab for _, lab in rows], index["class_names"],
                                  cfg.image_size, as_float, flip, flip_seed)
    images, labels, names = _npz_split(cfg, s)
    return ArrayDataset(images, labels, names, as_float, flip, flip_seed)


def class_names(cfg: DataConfig) -> list[str]:
    """Names of the classes, index = label (prepares crawl and ImageFolder data if needed)."""
    if cfg.name == "fashion":
        return list(FASHION_CLASSES)
    if cfg.name == "imagefolder":
        return list(_imagefolder_index(cfg)["class_names"])
    return [str(n) for n in _load_npz(cfg)["class_names"]]


def split_labels(cfg: DataConfig, split: Split) -> np.ndarray:
    """The labels (N,) int64 of a split, without loading images (cheap for every source)."""
    s = _check_split(split)
    if cfg.name == "imagefolder":
        return np.asarray([lab for _, lab in _imagefolder_index(cfg)[SPLITS[s]]], np.int64)
    arrays = _load_npz(cfg)
    return arrays["labels"][arrays["split"] == s]


def samples_per_class(cfg: DataConfig, split: Split, per_class: int, seed: int,
                      max_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` random images of each of the first ``max_classes`` classes, class after class (a grid with
    ``per_class`` columns has one class per row): images (K * per_class, 3, S, S) uint8, labels (K * per_class,)
    int64. A class with fewer images is padded with black images labelled -1."""
    ds = load_dataset(cfg, split)
    labels = np.asarray(ds.labels)
    if len(labels) == 0:
        raise DataError(f"split {split!r} of {cfg.name} is empty")
    rng = np.random.default_rng(seed)
    blank = torch.zeros((3, cfg.image_size, cfg.image_size), dtype=torch.uint8)
    images, out_labels = [], []
    for c in range(len(ds.class_names) if max_classes is None else min(max_classes, len(ds.class_names))):
        members = np.flatnonzero(labels == c)
        picks = rng.choice(members, size=min(per_class, len(members)), replace=False).tolist()
        images += [ds[i][0] for i in picks] + [blank] * (per_class - len(picks))
        out_labels += [c] * len(picks) + [-1] * (per_class - len(picks))
    return torch.stack(images), torch.as_tensor(out_labels, dtype=torch.int64)


def summary(cfg: DataConfig) -> dict[str, Any]:
    """Counts per class and split, plus the manifest's drop statistics and checksums: a metrics dict."""
    names = class_names(cfg)
    out: dict[str, Any] = {"dataset": cfg.name, "image_size": cfg.image_size, "num_classes": len(names)}
    for split in SPLITS:
        labels = split_labels(cfg, split)  # type: ignore[arg-type]
        out[f"n_{split}"] = int(len(labels))
        out[f"{split}_per_class"] = {n: int((labels == k).sum()) for k, n in enumerate(names)}
    if cfg.name != "imagefolder":
        doc = json.loads(_paths(cfg)[1].read_text())
        out.update(dropped=doc["dropped"], source=doc["source"], npz_sha256=doc["npz_sha256"])
    return out


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0,
                drop_last: bool = False, distributed: bool = False, pin_memory: bool = False) -> DataLoader:
    """A DataLoader whose order is set by ``seed``; with ``distributed``, a DistributedSampler (needs an
    initialised process group) shards the data. Call ``set_epoch(loader, epoch)`` at the start of each epoch."""
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise DataError("cannot make a loader over an empty dataset")
    if drop_last and batch_size > n:
        raise ValueError(f"batch_size={batch_size} > {n} examples with drop_last=True gives no batches")
    sampler = None
    generator = torch.Generator().manual_seed(seed)
    if distributed:
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise RuntimeError("distributed=True needs torch.distributed.init_process_group() first")
        sampler = torch.utils.data.DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
        shuffle = False
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, num_workers=num_workers,
                      drop_last=drop_last, generator=generator, pin_memory=pin_memory)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Reshuffle a distributed loader and redraw the dataset's random flips for ``epoch``."""
    if isinstance(loader.sampler, torch.utils.data.DistributedSampler):
        loader.sampler.set_epoch(epoch)
    if isinstance(loader.dataset, _FlipMixin):
        loader.dataset.set_epoch(epoch)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m tokenset.data [--params params.yaml] [--force]``: prepare the data and print its summary."""
    import argparse
    import time

    from tokenset.config import load_params

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--force", action="store_true", help="re-prepare even if the cache is valid")
    args = parser.parse_args(argv)
    cfg = load_params(args.params, "data")
    start = time.perf_counter()
    path = prepare(cfg, force=args.force)
    print(json.dumps({"prepared": str(path), "seconds": round(time.perf_counter() - start, 2), **summary(cfg)},
                     indent=1))


if __name__ == "__main__":
    main()
